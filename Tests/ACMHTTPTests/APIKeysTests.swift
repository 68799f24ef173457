import Foundation
import Testing

@testable import ACMHTTP

@Suite struct APIKeysTests {
    /// A keys file with `text`, removed after `body`.
    private func withKeysFile<T>(_ text: String, _ body: (String) throws -> T) throws -> T {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("keys-\(UInt32.random(in: 0...UInt32.max))").path
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        return try body(path)
    }

    private let key = "0123456789abcdef-key"

    /// Should accept `Bearer KEY` for each key in the file (comments and blank lines skipped), in any scheme case.
    @Test func acceptsEveryKeyOfTheFile() throws {
        try withKeysFile("# keys\n\n\(key)\n  second-key-0123456789  \r\n") { path in
            let keys = try APIKeys(path: path)
            #expect(keys.count == 2)
            #expect(keys.authorizes("Bearer \(key)") && keys.authorizes("bearer second-key-0123456789"))
            #expect(keys.authorizes("BEARER   \(key)"))
        }
    }

    /// Should refuse a missing header, another scheme, an empty token, and a key that differs in any way.
    @Test func refusesAnythingElse() throws {
        try withKeysFile(key) { path in
            let keys = try APIKeys(path: path)
            for header in [nil, "", "Bearer", "Bearer ", "Basic \(key)", key, "Bearer \(key)x", "Bearer x\(key)",
                "Bearer \(key.dropLast())", "Bearer \(key.uppercased())", "Bearer # keys"] {
                #expect(!keys.authorizes(header), "\(header ?? "nil")")
            }
        }
    }

    /// Should compare like equality: equal arrays only, whatever their lengths (a key is never empty).
    @Test func constantTimeEqualIsEquality() {
        let cases: [([UInt8], [UInt8])] = [
            ([1, 2, 3], [1, 2, 3]), ([1, 2, 3], [1, 2, 4]), ([1, 2], [1, 2, 3]), ([1, 2, 3, 1], [1, 2, 3]),
            ([], [1]), ([1, 2, 1, 2], [1, 2]),
        ]
        for (a, b) in cases { #expect(APIKeys.constantTimeEqual(a, b) == (a == b ? 1 : 0), "\(a) \(b)") }
    }

    /// Should refuse a file with no key, a short key or a key with a space, naming the line and never the key.
    @Test func refusesBadFiles() throws {
        for (text, problem) in [("# only a comment\n", "holds no API key"), ("ok-key-0123456789abc\nshort\n", "line 2"),
            ("a key with spaces in it\n", "line 1")] {
            try withKeysFile(text) { path in
                let error = #expect(throws: APIKeysError.self) { _ = try APIKeys(path: path) }
                #expect(error?.description.contains(problem) == true, "\(error.map { "\($0)" } ?? "")")
                #expect(error?.description.contains("short") != true && error?.description.contains("spaces in") != true)
            }
        }
        #expect(throws: APIKeysError.self) { _ = try APIKeys(path: "/no/such/keys/file") }
    }

    /// Should take the file's new keys on reload, and keep the old ones when the new file is not valid.
    @Test func reloadKeepsKeysOnError() throws {
        try withKeysFile(key) { path in
            let keys = try APIKeys(path: path)
            try Data("new-key-0123456789abcdef\n".utf8).write(to: URL(fileURLWithPath: path))
            #expect(try keys.reload() == 1)
            #expect(keys.authorizes("Bearer new-key-0123456789abcdef") && !keys.authorizes("Bearer \(key)"))
            try Data("\n".utf8).write(to: URL(fileURLWithPath: path))
            #expect(throws: APIKeysError.self) { try keys.reload() }
            #expect(keys.authorizes("Bearer new-key-0123456789abcdef"))
        }
    }
}
