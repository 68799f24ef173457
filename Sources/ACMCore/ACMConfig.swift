// An ACM's settings as a model's config.json gives them (docs/model-format.md).

/// The gate: `depth` linear layers with `activation` between them (none after the last).
public struct GateConfig: Codable, Sendable, Equatable {
    public var depth: Int
    public var hiddenDim: Int
    public var activation: Activation

    public init(depth: Int = 3, hiddenDim: Int = 16, activation: Activation = .identity) {
        self.depth = depth
        self.hiddenDim = hiddenDim
        self.activation = activation
    }

    enum CodingKeys: String, CodingKey {
        case depth
        case hiddenDim = "hidden_dim"
        case activation
    }
}

/// One ACM's settings, as in `config.json` (docs/model-format.md).
public struct ACMConfig: Codable, Sendable, Equatable {
    public var numLearners: Int
    public var learnerDim: Int
    public var activation: Activation
    public var minChoice: Int
    public var hiddenBias: Bool
    public var outputBias: Bool
    public var gate: GateConfig
    /// The share of its learners the gate runs in auto mode, on average (nil: 1): a cap spreads its
    /// budget over the ACMs in these proportions.
    public var budgetShare: Double?

    public init(
        numLearners: Int, learnerDim: Int, activation: Activation, minChoice: Int,
        hiddenBias: Bool = true, outputBias: Bool = false, gate: GateConfig = GateConfig(),
        budgetShare: Double? = nil
    ) {
        self.numLearners = numLearners
        self.learnerDim = learnerDim
        self.activation = activation
        self.minChoice = minChoice
        self.hiddenBias = hiddenBias
        self.outputBias = outputBias
        self.gate = gate
        self.budgetShare = budgetShare
    }

    enum CodingKeys: String, CodingKey {
        case budgetShare = "budget_share"
        case numLearners = "num_learners"
        case learnerDim = "learner_dim"
        case activation
        case minChoice = "min_choice"
        case hiddenBias = "hidden_bias"
        case outputBias = "output_bias"
        case gate
    }

    /// The number of gate outputs: one per choice k_min..N.
    public var numChoices: Int { numLearners + 1 - minChoice }

    func validate(path: String) throws {
        let sizes = 1...maxConfigSize
        guard sizes.contains(numLearners), sizes.contains(learnerDim) else {
            throw ModelError.config("\(path): num_learners and learner_dim must be in \(sizes)")
        }
        guard (0...numLearners).contains(minChoice) else {
            throw ModelError.config("\(path): min_choice \(minChoice) is outside 0...\(numLearners)")
        }
        guard sizes.contains(gate.depth), sizes.contains(gate.hiddenDim) else {
            throw ModelError.config("\(path): gate depth and hidden_dim must be in \(sizes)")
        }
        guard activation == .gelu || activation == .identity else {
            throw ModelError.config("\(path): learner activation must be gelu or identity")
        }
        if let share = budgetShare, !(0...1).contains(share) {
            throw ModelError.config("\(path): budget_share \(share) is outside 0...1")
        }
    }
}
