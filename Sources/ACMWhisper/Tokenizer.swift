import ACMCore
import Foundation

/// GPT-2's byte-level BPE, decode direction only: token id → token string → bytes → UTF-8 text, from
/// a Hugging Face `tokenizer.json` (`model.vocab` and `added_tokens`).
public struct WhisperTokenizer: Sendable {
    /// The bytes of each token id; nil for ids the file does not name.
    let pieces: [[UInt8]?]
    /// Ids from here up are special (`<|endoftext|>` and Whisper's task and timestamp tokens).
    public let firstSpecial: Int

    /// Reads `tokenizer.json`; `firstSpecial` is the end-of-text id.
    public init(path: String, firstSpecial: Int) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ModelError.io(path: path, reason: "no such file or not readable")
        }
        guard let root = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let model = root["model"] as? [String: Any],
            let vocab = model["vocab"] as? [String: Any]
        else { throw ModelError.format(path: path, reason: "no 'model.vocab' object") }
        let byteOf = Self.unicodeToByte
        var pieces: [Int: [UInt8]] = [:]
        for (token, value) in vocab {
            guard let id = (value as? NSNumber)?.intValue, id >= 0 else {
                throw ModelError.format(path: path, reason: "vocab entry '\(token)' has no integer id")
            }
            // Each character stands for one byte; anything else (never in GPT-2's vocabulary) is kept
            // as its UTF-8.
            pieces[id] = token.unicodeScalars.flatMap { byteOf[$0].map { [$0] } ?? Array(String($0).utf8) }
        }
        for case let added as [String: Any] in root["added_tokens"] as? [Any] ?? [] {
            guard let id = (added["id"] as? NSNumber)?.intValue, id >= 0, let content = added["content"] as? String else {
                throw ModelError.format(path: path, reason: "an 'added_tokens' entry has no id or content")
            }
            pieces[id] = Array(content.utf8)
        }
        let count = (pieces.keys.max() ?? -1) + 1
        var table = [[UInt8]?](repeating: nil, count: count)
        for (id, bytes) in pieces { table[id] = bytes }
        self.pieces = table
        self.firstSpecial = firstSpecial
    }

    /// The token's bytes, or nil for an id the tokenizer does not know.
    public func bytes(of id: Int) -> [UInt8]? { pieces.indices.contains(id) ? pieces[id] : nil }

    /// The text of `ids`: special ids (≥ `firstSpecial`) and unknown ids are skipped, and byte
    /// sequences that are not UTF-8 become U+FFFD, as Python's `bytes.decode(errors="replace")` does.
    public func decode(_ ids: [Int]) -> String {
        var text: [UInt8] = []
        for id in ids where id >= 0 && id < firstSpecial {
            if let piece = bytes(of: id) { text += piece }
        }
        return String(decoding: text, as: UTF8.self)
    }

    /// GPT-2's `bytes_to_unicode`, inverted: the printable Latin-1 bytes stand for themselves, the other
    /// 68 bytes for U+0100 onwards in byte order.
    static let unicodeToByte: [Unicode.Scalar: UInt8] = {
        let printable = Array(33...126) + Array(161...172) + Array(174...255)
        var map: [Unicode.Scalar: UInt8] = [:]
        for b in printable { map[Unicode.Scalar(UInt8(b))] = UInt8(b) }
        var next = 256
        for b in 0...255 where !printable.contains(b) {
            // `next` < 256 + 68, always a valid scalar
            map[Unicode.Scalar(UInt32(next))!] = UInt8(b)
            next += 1
        }
        return map
    }()
}
