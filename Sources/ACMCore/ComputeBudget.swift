/// A request's compute budget β ∈ (0, 1]: the share of its ACM layers' learner FLOPs it may spend
/// (docs/compute-budget.md). Every budget a user gives (an HTTP request's `compute_budget`, a model's
/// `default_budget`, the command line's `--budget`) becomes one of these, and this initializer is the only
/// place a budget is checked.
public struct ComputeBudget: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    public let value: Double

    /// Throws `InvalidComputeBudget` unless 0 < value ≤ 1 (so NaN too).
    public init(_ value: Double) throws(InvalidComputeBudget) {
        guard value > 0 && value <= 1 else { throw InvalidComputeBudget(value: value) }
        self.value = value
    }

    public init(from decoder: any Decoder) throws {
        let value = try decoder.singleValueContainer().decode(Double.self)
        do {
            try self.init(value)
        } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: error.description))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(value)
    }

    public static func < (a: ComputeBudget, b: ComputeBudget) -> Bool { a.value < b.value }

    public var description: String { "\(value)" }
}

/// A budget outside (0, 1].
public struct InvalidComputeBudget: Error, CustomStringConvertible {
    public let value: Double
    public var description: String { "a compute budget must be in (0, 1], got \(value)" }
}

extension ComputeBudget: ExpressibleByFloatLiteral {
    /// A budget written in code (`.cap(0.5)`); a literal out of range is a programming error.
    public init(floatLiteral value: Double) {
        do {
            try self.init(value)
        } catch {
            preconditionFailure(error.description)
        }
    }
}
