import Foundation

/// Why a model, a weights file or an input could not be used. Every case names what is wrong, so the
/// message alone lets a user fix their file.
public enum ModelError: Error, CustomStringConvertible, Equatable {
    case io(path: String, reason: String)
    case format(path: String, reason: String)
    case config(String)
    case missingTensor(String)
    case unusedTensors([String])
    case shape(tensor: String, expected: [Int], found: [Int])
    case dtype(tensor: String, dtype: String)
    case input(String)

    public var description: String {
        switch self {
        case let .io(path, reason): return "cannot read \(path): \(reason)"
        case let .format(path, reason): return "\(path): \(reason)"
        case let .config(reason): return "bad model config: \(reason)"
        case let .missingTensor(name): return "missing tensor '\(name)'"
        case let .unusedTensors(names):
            let shown = names.prefix(5).map { "'\($0)'" }.joined(separator: ", ")
            return "\(names.count) tensor(s) not used by the model: \(shown)\(names.count > 5 ? ", …" : "")"
        case let .shape(name, expected, found):
            return "tensor '\(name)' has shape \(found), expected \(expected)"
        case let .dtype(name, dtype):
            return "tensor '\(name)' has dtype \(dtype); only F32, F16 and BF16 are supported"
        case let .input(reason): return "bad input: \(reason)"
        }
    }
}
