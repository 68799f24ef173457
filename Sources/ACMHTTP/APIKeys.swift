import Foundation

/// The API keys a server accepts (`auth.api_keys_file`): one per line; blank lines and lines starting with `#`
/// are skipped. `reload` re-reads the file (on SIGHUP) and keeps the old keys if the new file is not valid.
/// Keys are compared in constant time and never logged.
public final class APIKeys: @unchecked Sendable {
    public let path: String
    private let lock = NSLock()
    private var keys: [[UInt8]]

    /// Shorter keys are refused: a key is a secret, not a user name.
    public static let minimumLength = 16

    /// Reads the file; throws if it cannot be read, holds no key, or a key is malformed.
    public init(path: String) throws {
        self.path = path
        keys = try Self.read(path)
    }

    /// Keys in the file now.
    public var count: Int { lock.withLock { keys.count } }

    /// Re-reads the file; returns how many keys it holds. On an error the keys in force stay as they were.
    @discardableResult
    public func reload() throws -> Int {
        let fresh = try Self.read(path)
        lock.withLock { keys = fresh }
        return fresh.count
    }

    /// Whether an `Authorization` header value is `Bearer KEY` with a key in the file.
    public func authorizes(_ authorization: String?) -> Bool {
        guard let presented = Self.bearerToken(authorization) else { return false }
        let keys = lock.withLock { self.keys }
        // Every key is compared, whatever the outcome, so the time taken says nothing about which key came close.
        var match: UInt8 = 0
        for key in keys { match |= Self.constantTimeEqual(presented, key) }
        return match == 1
    }

    /// The token of `Bearer TOKEN` (the scheme in any case, RFC 7235), or nil.
    static func bearerToken(_ authorization: String?) -> [UInt8]? {
        guard let authorization else { return nil }
        let parts = authorization.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
        let token = parts[1].trimmingCharacters(in: .whitespaces)
        return token.isEmpty ? nil : Array(token.utf8)
    }

    /// 1 when equal, else 0, in a time that depends on `presented`'s length only, never on `key`'s bytes.
    static func constantTimeEqual(_ presented: [UInt8], _ key: [UInt8]) -> UInt8 {
        guard !key.isEmpty else { return 0 }
        var difference = UInt(bitPattern: presented.count ^ key.count)
        for i in presented.indices { difference |= UInt(presented[i] ^ key[i % key.count]) }
        return difference == 0 ? 1 : 0
    }

    private static func read(_ path: String) throws -> [[UInt8]] {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw APIKeysError(description: "cannot read the API keys file \(path)")
        }
        var keys: [[UInt8]] = []
        for (number, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.isEmpty || line.hasPrefix("#") { continue }
            // Line numbers only: an error message never quotes a key.
            guard line.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else {
                throw APIKeysError(description: "\(path), line \(number + 1): a key is printable ASCII without spaces")
            }
            guard line.utf8.count >= minimumLength else {
                throw APIKeysError(description: "\(path), line \(number + 1): a key must be at least \(minimumLength) characters")
            }
            keys.append(Array(line.utf8))
        }
        guard !keys.isEmpty else { throw APIKeysError(description: "\(path) holds no API key") }
        return keys
    }
}

public struct APIKeysError: Error, CustomStringConvertible {
    public let description: String
}
