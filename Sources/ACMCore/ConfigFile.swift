import Foundation

/// The largest value a config's sizes may take (dimensions; layer, head, learner, position and vocabulary
/// counts): 2²⁴, far beyond any model's, and small enough that the shapes the models compute from two of
/// them cannot overflow an Int.
public let maxConfigSize = 1 << 24

/// What every model directory's `config.json` starts with: `format`, `format_version`, `architecture`.
public protocol ModelConfigHeader: Decodable {
    var format: String { get }
    var formatVersion: Int { get }
    var architecture: String { get }
}

/// Reads a model directory's `config.json` as `T` and checks its header; every failure names the file and
/// the field. `architecture` nil accepts any.
public func loadModelConfig<T: ModelConfigHeader>(_ type: T.Type, path: String, architecture: String? = nil) throws -> T {
    guard let data = FileManager.default.contents(atPath: path) else {
        throw ModelError.io(path: path, reason: "no such file or not readable")
    }
    return try decodeModelConfig(type, from: data, path: path, architecture: architecture)
}

/// `loadModelConfig` on the file's bytes, `data`; `path` is for messages. Internal: the fuzz target
/// (Tests/fuzz) calls it on bytes.
func decodeModelConfig<T: ModelConfigHeader>(_ type: T.Type, from data: Data, path: String, architecture: String?) throws -> T {
    func keyPath(_ keys: [any CodingKey]) -> String {
        keys.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".")
    }
    let config: T
    do {
        config = try JSONDecoder().decode(T.self, from: data)
    } catch let DecodingError.dataCorrupted(context) where context.codingPath.isEmpty {
        throw ModelError.format(path: path, reason: "not valid JSON (\(context.debugDescription))")
    } catch let DecodingError.dataCorrupted(context) {
        throw ModelError.format(
            path: path, reason: "field '\(keyPath(context.codingPath))' is invalid: \(context.debugDescription)")
    } catch let DecodingError.keyNotFound(key, context) {
        throw ModelError.format(path: path, reason: "missing field '\(keyPath(context.codingPath + [key]))'")
    } catch let DecodingError.typeMismatch(_, context) {
        throw ModelError.format(path: path, reason: "field '\(keyPath(context.codingPath))' has the wrong type")
    } catch let DecodingError.valueNotFound(_, context) {
        throw ModelError.format(path: path, reason: "field '\(keyPath(context.codingPath))' is null")
    }
    guard config.format == "acm-serve" else {
        throw ModelError.format(path: path, reason: "format is '\(config.format)', expected 'acm-serve'")
    }
    guard config.formatVersion == 1 else {
        throw ModelError.format(path: path, reason: "format_version \(config.formatVersion) is not supported (1 is)")
    }
    if let architecture, config.architecture != architecture {
        throw ModelError.format(path: path, reason: "architecture is '\(config.architecture)', expected '\(architecture)'")
    }
    return config
}

extension KeyedDecodingContainer {
    /// Sets `value` from `key` when the key is present, and leaves it alone otherwise: a Codable type
    /// whose fields have defaults decodes with `self.init()` and one `update` per field, so that each
    /// default is written once, where the field is declared.
    public func update<T: Decodable>(_ value: inout T, _ key: Key) throws {
        if let decoded = try decodeIfPresent(T.self, forKey: key) { value = decoded }
    }
}
