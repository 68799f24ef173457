import Foundation
import Testing

@testable import ACMCore

/// An ACM with random weights, loaded through a real safetensors file under the prefix `acm`.
func makeACM(
    _ config: ACMConfig, inputDim: Int, outputDim: Int, seed: UInt64, gateScale: Float = 1, dir: TemporaryDirectory,
    precision: Precision = .f32
) throws -> (ACMLayer, [String: Tensor]) {
    var rng = SplitMix64(seed: seed)
    let n = config.numLearners, h = config.learnerDim
    var tensors: [String: Tensor] = [
        "acm.w1": randomTensor([inputDim, n * h], scale: 0.3, rng: &rng),
        "acm.w2": randomTensor([n * h, outputDim], scale: 0.3, rng: &rng),
    ]
    if config.hiddenBias { tensors["acm.b1"] = randomTensor([n * h], scale: 0.3, rng: &rng) }
    if config.outputBias { tensors["acm.b2"] = randomTensor([(n + 1) * outputDim], scale: 0.3, rng: &rng) }
    for j in 0..<config.gate.depth {
        let inputs = j == 0 ? inputDim : config.gate.hiddenDim
        let outputs = j == config.gate.depth - 1 ? config.numChoices : config.gate.hiddenDim
        tensors["acm.gating_network.net.\(j).weight"] = randomTensor([outputs, inputs], scale: gateScale, rng: &rng)
        tensors["acm.gating_network.net.\(j).bias"] = randomTensor([outputs], scale: gateScale, rng: &rng)
    }
    let path = dir.path + "/acm-\(seed).safetensors"
    try SafeTensorsFile.write(tensors, to: path)
    let file = try SafeTensorsFile(path: path)
    let layer = try ACMLayer(config: config, inputDim: inputDim, outputDim: outputDim, weights: Weights(file: file, prefix: "acm", precision: precision))
    try file.checkAllUsed()
    return (layer, tensors)
}

/// The ACM's definition, token by token, in Double: Σ_{n<k} act(x·W1_n + b1_n)·W2_n + Σ_{j≤k} b2_j.
func naiveACM(
    _ config: ACMConfig, _ w: [String: Tensor], x: UnsafePointer<Float>, row: Int, k: Int, dIn: Int, dOut: Int
) -> [Double] {
    let n = config.numLearners, h = config.learnerDim
    let w1 = w["acm.w1"]!, w2 = w["acm.w2"]!
    var out = [Double](repeating: 0, count: dOut)
    for learner in 0..<k {
        for u in 0..<h {
            let col = learner * h + u
            var z = w["acm.b1"].map { Double($0.data[col]) } ?? 0
            for i in 0..<dIn { z += Double(x[row * dIn + i]) * Double(w1.data[i * n * h + col]) }
            let a = config.activation == .gelu ? exactGELU(z) : z
            for c in 0..<dOut { out[c] += a * Double(w2.data[col * dOut + c]) }
        }
    }
    if let b2 = w["acm.b2"] {
        for j in 0...k { for c in 0..<dOut { out[c] += Double(b2.data[j * dOut + c]) } }
    }
    return out
}

/// The cap rule by repeated removal: while over the cap, drop the top learner of a token that has the
/// most learners, the one whose top learner has the lowest survival probability (the later token on
/// ties). An independent route to docs/compute-budget.md's "keep the highest-ranked units".
func naiveChoices(
    policy: LearnerPolicy, logits: [[Float]], minChoice: Int, numLearners: Int
) -> [Int] {
    let tokens = logits.count
    switch policy {
    case .full: return Array(repeating: numLearners, count: tokens)
    case let .uniform(k): return Array(repeating: min(max(k, minChoice), numLearners), count: tokens)
    case .auto, .cap: break
    }
    guard case let .cap(beta) = policy else { return naiveCapped(logits: logits, minChoice: minChoice, cap: nil) }
    let cap = max(minChoice * tokens, Int((beta.value * Double(numLearners * tokens) + 1e-9).rounded(.down)))
    return naiveCapped(logits: logits, minChoice: minChoice, cap: cap)
}

/// `naiveChoices`' removal rule with the cap given in learners (nil: the gate's argmax alone).
func naiveCapped(logits: [[Float]], minChoice: Int, cap: Int?) -> [Int] {
    let tokens = logits.count, numLearners = minChoice + (logits.first?.count ?? 1) - 1
    var ks = logits.map { row in minChoice + row.indices.first { row[$0] == row.max()! }! }
    guard let cap else { return ks }
    // The survivals in the kernels' arithmetic (docs/compute-budget.md): exp as `expInPlace` (within 2 ulp of
    // libm's, KernelTests.expIsAccurate), p = e·(1/Σe) in double precision, S summed from the last choice down.
    // Rows whose survivals are equal in exact arithmetic but not in rounding (e.g. [-0.5, 0.5, 0] and
    // [-1.5, -1, -0.5] at level 2 of N = 3) are then ordered as the kernels order them: this checks the rule,
    // not the last ulp.
    let probabilities = logits.map { row -> [Double] in
        let m = Double(row.max()!)
        let shifted = row.map { Double($0) - m }
        var e = [Double](repeating: 0, count: row.count)
        expInPlace(shifted, out: &e, count: row.count)
        let inverse = 1 / e.reduce(0, +)
        return e.map { $0 * inverse }
    }
    func survival(_ t: Int, _ j: Int) -> Double {
        stride(from: numLearners, through: j, by: -1).reduce(0) { $0 + probabilities[t][$1 - minChoice] }
    }
    while ks.reduce(0, +) > cap {
        var victim = -1
        let top = ks.max()!
        for t in 0..<tokens where ks[t] == top {
            if victim < 0 || survival(t, ks[t]) <= survival(victim, ks[victim]) { victim = t }
        }
        ks[victim] -= 1
    }
    return ks
}

@Suite struct LearnerChoiceTests {
    func choose(_ policy: LearnerPolicy, _ logits: [[Float]], minChoice: Int, numLearners: Int) -> [Int] {
        var flat = logits.flatMap { $0 }
        var ks = [Int32](repeating: -1, count: logits.count)
        let scratch = BoundaryScratch()
        chooseLearners(
            policy: policy, logits: &flat, tokens: logits.count, minChoice: minChoice, numLearners: numLearners,
            ks: &ks, scratch: scratch)
        return ks.map(Int.init)
    }

    /// Should pick the argmax, and the smaller k when logits tie exactly.
    @Test func autoTiesGoToSmallerK() {
        let logits: [[Float]] = [[1, 1, 0], [0, 2, 2], [0, 0, 3], [5, 1, 1]]
        #expect(choose(.auto, logits, minChoice: 0, numLearners: 2) == [0, 1, 2, 0])
        #expect(choose(.auto, logits, minChoice: 1, numLearners: 3) == [1, 2, 3, 1])
    }

    /// Should give every token its j-th learner before any its (j+1)-th, then keep the units the gate
    /// is surest of, and break survival ties by token order.
    @Test func capFillsLevelsThenHighestSurvival() {
        // Four tokens choose k = 2 of N = 2.
        // S(1) = 1 − p(0): tokens 0, 2 ≈ 0.91, token 1 ≈ 1, token 3 ≈ 0.5; S(2) = p(2): token 1 ≈ 1,
        // tokens 0, 2 ≈ 0.665, token 3 ≈ 0.5.
        let logits: [[Float]] = [[0, 1, 2], [-5, -5, 6], [0, 1, 2], [0, -9, 0.001]]
        #expect(choose(.auto, logits, minChoice: 0, numLearners: 2) == [2, 2, 2, 2])
        // C = 3 of the four level-1 units: token 3's is the least sure.
        #expect(choose(.cap(0.375), logits, minChoice: 0, numLearners: 2) == [1, 1, 1, 0])
        // C = 5: all of level 1, then token 1's second learner (S ≈ 1).
        #expect(choose(.cap(0.625), logits, minChoice: 0, numLearners: 2) == [1, 2, 1, 1])
        // C = 6: tokens 0 and 2 tie on S(2); the earlier one wins.
        #expect(choose(.cap(0.75), logits, minChoice: 0, numLearners: 2) == [2, 2, 1, 1])
    }

    /// Should give exactly the k best rows a learner (survival high to low, earlier row on ties), as a
    /// sort would, for every k, with many ties or few, and leave the others alone; at sizes on both sides of
    /// the vector partition's eight lanes and of where it hands over to the scalar one.
    @Test func giveBestMatchesSort() {
        var rng = SplitMix64(seed: 17)
        for n in [1, 2, 3, 7, 9, 16, 17, 24, 50, 200] {
            for round in 0..<20 {
                let survival = (0..<n).map { _ in
                    round % 2 == 0 ? Double(Int.random(in: 0...5, using: &rng)) / 5 : Double.random(in: 0...1, using: &rng)
                }
                // the rows' tokens: increasing, with gaps (the tokens that do not reach the level)
                var tokens: [Int32] = []
                for _ in 0..<n { tokens.append((tokens.last ?? -1) + Int32.random(in: 1...3, using: &rng)) }
                let ranked = (0..<n).sorted { survival[$0] != survival[$1] ? survival[$0] > survival[$1] : $0 < $1 }
                for k in 1...n {
                    let before = (0..<Int(tokens.last!) + 1).map { _ in Int32.random(in: 0...4, using: &rng) }
                    var ks = before
                    var scratch = [Double](repeating: .nan, count: giveBestScratch(n))
                    giveBest(survival: survival, token: tokens, count: n, k, scratch: &scratch, ks: &ks)
                    var expected = before
                    for r in ranked.prefix(k) { expected[Int(tokens[r])] += 1 }
                    #expect(ks == expected, "n \(n) k \(k)")
                }
            }
        }
    }

    /// Should spread a cap in proportion to the shares, clip at 1 and at the k_min floors, and spend the
    /// whole budget when it can.
    @Test func splitBudgetFollowsShares() {
        func close(_ a: [Double], _ b: [Double]) -> Bool { zip(a, b).allSatisfy { abs($0 - $1) < 1e-12 } }
        // Two equal-cost ACMs, shares 1 and 0.5: s + s/2 = 2β.
        #expect(close(splitBudget(0.3, shares: [1, 0.5], floors: [0, 0], costs: [1, 1]), [0.4, 0.2]))
        // β = 0.9: the first is clipped at 1, so 1 + s/2 = 1.8.
        #expect(close(splitBudget(0.9, shares: [1, 0.5], floors: [0, 0], costs: [1, 1]), [1, 0.8]))
        #expect(close(splitBudget(1, shares: [1, 0.5], floors: [0, 0], costs: [1, 1]), [1, 1]))
        // No shares: every ACM gets β itself.
        #expect(close(splitBudget(0.35, shares: [nil, nil, nil], floors: [0, 0.25, 0], costs: [8, 1, 3]), [0.35, 0.35, 0.35]))
        // A floor that binds (k_min = 1 of 4) is paid for by the others: 0.25·1 + β_0·3 = 0.2·4.
        #expect(close(splitBudget(0.2, shares: [nil, nil], floors: [0, 0.25], costs: [3, 1]), [0.55 / 3, 0.25]))
        // A share of 0 gets only its floor.
        #expect(close(splitBudget(0.5, shares: [0, 1], floors: [0.25, 0], costs: [1, 1]), [0.25, 0.75]))
        var rng = SplitMix64(seed: 11)
        for _ in 0..<200 {
            let n = Int.random(in: 1...12, using: &rng)
            let shares: [Double?] = (0..<n).map { _ in Double.random(in: 0...1, using: &rng) }
            let floors = (0..<n).map { _ in [0, 0.25, 1.0 / 3][Int.random(in: 0...2, using: &rng)] }
            let costs = (0..<n).map { _ in Double(Int.random(in: 1...64, using: &rng) * 64) }
            let beta = Double.random(in: 0.01...1, using: &rng)
            let split = splitBudget(beta, shares: shares, floors: floors, costs: costs)
            let total = costs.reduce(0, +)
            let used = zip(split, costs).map(*).reduce(0, +) / total
            let least = zip(floors, costs).map(*).reduce(0, +) / total
            let most = zip(zip(shares, floors), costs).map { $0.0! > 0 || $0.1 == 1 ? $1 : $0.1 * $1 }.reduce(0, +) / total
            #expect(zip(split, floors).allSatisfy { $0 >= $1 && $0 <= 1 })
            // the whole budget, or as near as the floors and the shares allow
            #expect(abs(used - min(max(beta, least), most)) < 1e-9)
        }
    }

    /// Should give an ACM whose share of a cap is its k_min floor `.uniform(k_min)`, which skips the gate, and
    /// that should choose what the cap at the floor chooses: k_min for every token, whatever the gate says.
    @Test func capShareAtTheFloorRunsUniform() throws {
        let dir = TemporaryDirectory()
        // a projection (k_min = 1 of 4) with half the MLP's share, which a cap of 0.3 leaves at its floor (the
        // MLP, 4 times its cost, then gets 0.3125)
        let projection = try makeACM(
            ACMConfig(numLearners: 4, learnerDim: 4, activation: .identity, minChoice: 1, budgetShare: 0.5),
            inputDim: 8, outputDim: 8, seed: 1, dir: dir).0
        let mlp = try makeACM(
            ACMConfig(numLearners: 4, learnerDim: 16, activation: .gelu, minChoice: 0, budgetShare: 1),
            inputDim: 8, outputDim: 8, seed: 2, dir: dir).0
        let split = BudgetSplit(paths: ["a.proj", "b.mlp"], acms: [projection, mlp])
        #expect(split.shares(0.3)[0] == 0.25)
        let policies = split.layerPolicies([.cap(0.3), .auto, .cap(1.0), .uniform(2)])
        #expect(policies[0] == [LearnerPolicy.uniform(1), .auto, .cap(1.0), .uniform(2)])
        #expect(Array(policies[1][1...]) == [LearnerPolicy.auto, .cap(1.0), .uniform(2)])
        guard case let .cap(mlpShare) = policies[1][0] else {
            Issue.record("the MLP's share of cap 0.3 should stay a cap: \(policies[1][0])")
            return
        }
        #expect(abs(mlpShare.value - 0.3125) < 1e-9)
        // the cap at the floor and uniform k_min agree token for token, for any gate logits
        var rng = SplitMix64(seed: 5)
        for _ in 0..<200 {
            let numLearners = Int.random(in: 2...6, using: &rng), minChoice = Int.random(in: 1...2, using: &rng)
            let tokens = Int.random(in: 1...120, using: &rng), choices = numLearners + 1 - minChoice
            var logits = (0..<tokens * choices).map { _ in Float.random(in: -3...3, using: &rng) }
            let beta = try ComputeBudget(Double(minChoice) / Double(numLearners))
            var capped = [Int32](repeating: -1, count: tokens), uniform = capped
            chooseLearners(
                policy: .cap(beta), logits: &logits, tokens: tokens, minChoice: minChoice, numLearners: numLearners,
                ks: &capped, scratch: BoundaryScratch())
            chooseLearners(
                policy: .uniform(minChoice), logits: &logits, tokens: tokens, minChoice: minChoice,
                numLearners: numLearners, ks: &uniform, scratch: BoundaryScratch())
            #expect(capped == uniform, "N \(numLearners) k_min \(minChoice) T \(tokens)")
            #expect(uniform.allSatisfy { $0 == Int32(minChoice) })
        }
    }

    /// Should give the same policies from its cache of splits as a fresh split does, for more caps than the
    /// cache holds, asked for in a batch and one at a time.
    @Test func layerPoliciesFromTheCacheMatchAFreshSplit() throws {
        let dir = TemporaryDirectory()
        let acms = try (0..<3).map { i in
            try makeACM(
                ACMConfig(numLearners: 4, learnerDim: 4 << i, activation: .gelu, minChoice: i % 2,
                          budgetShare: [0.3, 1, 0.6][i]),
                inputDim: 8, outputDim: 8, seed: UInt64(10 + i), dir: dir).0
        }
        let paths = ["b.mlp", "a.q_proj", "c.mlp"]
        let cached = BudgetSplit(paths: paths, acms: acms)
        var rng = SplitMix64(seed: 3)
        let caps = try (0..<300).map { _ in try ComputeBudget(Double(Int.random(in: 1...1000, using: &rng)) / 1000) }
        for round in 0..<2 {
            for (i, beta) in caps.enumerated() {
                let policies: [LearnerPolicy] = [.cap(beta), .auto, .cap(caps[(i + 1) % caps.count])]
                let fresh = BudgetSplit(paths: paths, acms: acms).layerPolicies(policies)
                #expect(cached.layerPolicies(policies) == fresh, "round \(round), cap \(beta)")
            }
        }
    }

    /// Should serve a sequence's first tokens before the rest under a cap: the first get the cap less the
    /// rest's k_min floor, by the cap's rule among themselves, the rest what they leave; one ranking of the
    /// whole sequence when none or all come first; and the other policies as they are.
    @Test func servedFirstUnderACap() throws {
        func choose(_ policy: LearnerPolicy, _ logits: [[Float]], minChoice: Int, numLearners: Int, first: Int) -> [Int] {
            var flat = logits.flatMap { $0 }
            var ks = [Int32](repeating: -1, count: logits.count)
            chooseLearners(
                policy: policy, logits: &flat, tokens: logits.count, minChoice: minChoice, numLearners: numLearners,
                servedFirst: first, ks: &ks, scratch: BoundaryScratch())
            return ks.map(Int.init)
        }
        // Three tokens ask for N = 2; the last is the surest, so a plain cap of 4 keeps its second learner.
        let logits: [[Float]] = [[0, 1, 1.5], [0, 1, 1.5], [-9, -9, 9]]
        let four = LearnerPolicy.cap(try ComputeBudget(4.0 / 6))
        #expect(choose(four, logits, minChoice: 0, numLearners: 2, first: 0) == [1, 1, 2])
        #expect(choose(four, logits, minChoice: 0, numLearners: 2, first: 2) == [2, 2, 0])
        #expect(choose(four, logits.map { Array($0[1...]) }, minChoice: 1, numLearners: 2, first: 2) == [2, 1, 1])
        #expect(choose(.auto, logits, minChoice: 0, numLearners: 2, first: 2) == [2, 2, 2])
        #expect(choose(.uniform(1), logits, minChoice: 0, numLearners: 2, first: 2) == [1, 1, 1])
        var rng = SplitMix64(seed: 23)
        for trial in 0..<300 {
            let numLearners = Int.random(in: 1...5, using: &rng)
            let minChoice = Int.random(in: 0...1, using: &rng)
            let tokens = trial % 3 == 0 ? Int.random(in: 65...200, using: &rng) : Int.random(in: 1...40, using: &rng)
            let first = Int.random(in: 0...tokens, using: &rng)
            let logits = (0..<tokens).map { _ in
                (0..<(numLearners + 1 - minChoice)).map { _ in Float(Int.random(in: -4...4, using: &rng)) / 2 }
            }
            let beta: ComputeBudget = [0.1, 0.25, 0.3, 0.5, 0.75, 1.0][trial % 6]
            let got = choose(.cap(beta), logits, minChoice: minChoice, numLearners: numLearners, first: first)
            let cap = max(minChoice * tokens, Int((beta.value * Double(numLearners * tokens) + 1e-9).rounded(.down)))
            var expected: [Int]
            if first == 0 || first == tokens {
                expected = naiveCapped(logits: logits, minChoice: minChoice, cap: cap)
            } else {
                expected = naiveCapped(
                    logits: Array(logits[..<first]), minChoice: minChoice, cap: cap - minChoice * (tokens - first))
                expected += naiveCapped(
                    logits: Array(logits[first...]), minChoice: minChoice, cap: cap - expected.reduce(0, +))
            }
            #expect(got == expected, "trial \(trial)")
            #expect(got.reduce(0, +) <= cap)
        }
    }

    /// Should never go below k_min, even when β·N·T is smaller than k_min·T.
    @Test func capRespectsMinChoice() {
        let logits = [[Float]](repeating: [0, 0, 0, 9], count: 4)
        #expect(choose(.cap(0.1), logits, minChoice: 1, numLearners: 4) == [1, 1, 1, 1])
        #expect(choose(.uniform(0), logits, minChoice: 1, numLearners: 4) == [1, 1, 1, 1])
        #expect(choose(.uniform(7), logits, minChoice: 1, numLearners: 4) == [4, 4, 4, 4])
        #expect(choose(.full, logits, minChoice: 1, numLearners: 4) == [4, 4, 4, 4])
    }

    /// Should agree with the naive removal rule on random logits (1 to 200 tokens, so that the boundary
    /// level is ranked both by counting and by quickselect), hit the cap exactly when it binds, and never
    /// give a token more than the gate asked for.
    @Test func capMatchesNaiveOnRandomLogits() {
        var rng = SplitMix64(seed: 5)
        for trial in 0..<300 {
            let numLearners = Int.random(in: 1...5, using: &rng)
            let minChoice = Int.random(in: 0...1, using: &rng)
            let tokens = trial % 3 == 0 ? Int.random(in: 65...200, using: &rng) : Int.random(in: 1...40, using: &rng)
            let choices = numLearners + 1 - minChoice
            let logits = (0..<tokens).map { _ in (0..<choices).map { _ in Float.random(in: -3...3, using: &rng) } }
            let beta: ComputeBudget = [0.1, 0.25, 0.3, 0.5, 0.75, 1.0][trial % 6]
            let got = choose(.cap(beta), logits, minChoice: minChoice, numLearners: numLearners)
            let auto = choose(.auto, logits, minChoice: minChoice, numLearners: numLearners)
            #expect(got == naiveChoices(policy: .cap(beta), logits: logits, minChoice: minChoice, numLearners: numLearners))
            let cap = max(minChoice * tokens, Int((beta.value * Double(numLearners * tokens) + 1e-9).rounded(.down)))
            #expect(got.reduce(0, +) == min(cap, auto.reduce(0, +)))
            #expect(zip(got, auto).allSatisfy { $0 <= $1 && $0 >= minChoice })
        }
    }
}

@Suite struct ACMLayerTests {
    static let configs: [ACMConfig] = [
        ACMConfig(numLearners: 4, learnerDim: 6, activation: .gelu, minChoice: 0),
        ACMConfig(
            numLearners: 3, learnerDim: 5, activation: .identity, minChoice: 1, hiddenBias: false, outputBias: true,
            gate: GateConfig(depth: 2, hiddenDim: 8, activation: .gelu)),
        ACMConfig(
            numLearners: 2, learnerDim: 7, activation: .gelu, minChoice: 0, hiddenBias: true, outputBias: true,
            gate: GateConfig(depth: 1, hiddenDim: 16, activation: .identity)),
        // k_min > 0 with a foldable gate: the gate and the first learners run as one GEMM
        ACMConfig(
            numLearners: 4, learnerDim: 3, activation: .identity, minChoice: 1, hiddenBias: false, outputBias: true),
        ACMConfig(numLearners: 5, learnerDim: 4, activation: .gelu, minChoice: 2, hiddenBias: true, outputBias: true),
        // w1 wider than a float panel (N·h = 80 > 64): learner 3's columns straddle two panels, and the fused gate
        // reads learner 0's columns back out of the panels
        ACMConfig(numLearners: 4, learnerDim: 20, activation: .gelu, minChoice: 1, hiddenBias: true, outputBias: true),
    ]

    /// Should equal the per-token definition for any mix of learner counts k_min...N, k = 0 included, and where
    /// no token chose as few as k_min.
    @Test(arguments: configs.indices, [29, 77])
    func groupedMatchesDefinition(index: Int, tokens: Int) throws {
        let config = Self.configs[index]
        let dir = TemporaryDirectory()
        let dIn = 11, dOut = 9
        let (layer, w) = try makeACM(config, inputDim: dIn, outputDim: dOut, seed: UInt64(10 + index), dir: dir)
        var rng = SplitMix64(seed: 99)
        let x = randomTensor([tokens, dIn], rng: &rng)
        for pattern in 0..<5 {
            let ks: [Int32] = (0..<tokens).map { t in
                let kMin = config.minChoice, n = config.numLearners
                switch pattern {
                case 0: return Int32.random(in: Int32(kMin)...Int32(n), using: &rng)
                case 1: return Int32(n)  // already in order: the no-gather path
                case 2: return Int32(kMin + t % (n + 1 - kMin))
                // none at k_min: the learners every token chose run in place, the rest gathered
                case 3: return Int32.random(in: Int32(kMin + 1)...Int32(n), using: &rng)
                default: return Int32(kMin)
                }
            }
            // overwritten, and added to a residual stream
            let out = Tensor(shape: [tokens, dOut]), residual = randomTensor([tokens, dOut], rng: &rng)
            let summed = Tensor(shape: [tokens, dOut])
            summed.data.update(from: residual.data, count: tokens * dOut)
            ks.withUnsafeBufferPointer { k in
                layer.runLearners(x.data, tokens: tokens, choices: k.baseAddress!, out: out.data, workspace: ACMWorkspace())
                layer.runLearners(
                    x.data, tokens: tokens, choices: k.baseAddress!, out: summed.data, accumulate: true,
                    workspace: ACMWorkspace())
            }
            for t in 0..<tokens {
                let want = naiveACM(config, w, x: x.data, row: t, k: Int(ks[t]), dIn: dIn, dOut: dOut)
                for c in 0..<dOut {
                    let i = t * dOut + c
                    #expect(abs(Double(out.data[i]) - want[c]) < 1e-5)
                    #expect(abs(Double(summed.data[i]) - (Double(residual.data[i]) + want[c])) < 1e-5, "token \(t), pattern \(pattern)")
                }
            }
        }
    }

    /// Should choose as the naive rule does from the gate's own logits, and output the definition.
    @Test(arguments: [0, 3, 4, 5])
    func forwardChoosesAndComputes(index: Int) throws {
        let config = Self.configs[index]
        let dir = TemporaryDirectory()
        let dIn = 10, dOut = 10
        let (layer, w) = try makeACM(config, inputDim: dIn, outputDim: dOut, seed: 21, gateScale: 2, dir: dir)
        let sequences = [0..<9, 9..<10, 10..<25, 25..<31]
        let policies: [LearnerPolicy] = [.auto, .cap(0.5), .cap(0.25), .uniform(2)]
        let tokens = 31
        var rng = SplitMix64(seed: 7)
        let x = randomTensor([tokens, dIn], scale: 2, rng: &rng)
        let ws = ACMWorkspace()  // owns the logits' memory
        let allLogits = matrix(layer.gateLogits(x.data, tokens: tokens, workspace: ws), rows: tokens, columns: config.numChoices)
        let out = Tensor(shape: [tokens, dOut])
        var ks = [Int32](repeating: 0, count: tokens)
        layer.forward(x.data, sequences: sequences, policies: policies, out: out.data, choices: &ks, workspace: ACMWorkspace())
        for (seq, policy) in zip(sequences, policies) {
            let want = naiveChoices(
                policy: policy, logits: Array(allLogits[seq]), minChoice: config.minChoice, numLearners: config.numLearners)
            #expect(ks[seq].map(Int.init) == want, "\(policy)")
        }
        #expect(Set(ks).count >= 3, "the random gate should spread its choices")
        for t in 0..<tokens {
            let want = naiveACM(config, w, x: x.data, row: t, k: Int(ks[t]), dIn: dIn, dOut: dOut)
            for c in 0..<dOut { #expect(abs(Double(out.data[t * dOut + c]) - want[c]) < 1e-5) }
        }
    }

    /// Should fold a gate with no activation into one layer whose logits equal the layer-by-layer ones
    /// (computed in Double) within float rounding; a gate with an activation stays as it is.
    @Test func foldedGateMatchesLayers() throws {
        let dir = TemporaryDirectory()
        let dIn = 13, tokens = 17
        for (index, config) in Self.configs.enumerated() {
            let (layer, w) = try makeACM(config, inputDim: dIn, outputDim: 5, seed: UInt64(40 + index), gateScale: 1.5, dir: dir)
            let folds = config.gate.activation == .identity && config.gate.depth > 1
            #expect(layer.gate.count == (folds ? 1 : config.gate.depth))
            var rng = SplitMix64(seed: 3)
            let x = randomTensor([tokens, dIn], rng: &rng)
            let ws = ACMWorkspace()  // owns the logits' memory
            let logits = matrix(layer.gateLogits(x.data, tokens: tokens, workspace: ws), rows: tokens, columns: config.numChoices)
            withExtendedLifetime(ws) {}
            for t in 0..<tokens {
                var v = (0..<dIn).map { Double(x.data[t * dIn + $0]) }
                for j in 0..<config.gate.depth {
                    let weight = w["acm.gating_network.net.\(j).weight"]!, bias = w["acm.gating_network.net.\(j).bias"]!
                    let outputs = weight.shape[0], inputs = weight.shape[1]
                    v = (0..<outputs).map { o in
                        (0..<inputs).reduce(Double(bias.data[o])) { $0 + Double(weight.data[o * inputs + $1]) * v[$1] }
                    }
                    if j < config.gate.depth - 1 && config.gate.activation == .gelu { v = v.map(exactGELU) }
                }
                for c in 0..<config.numChoices {
                    #expect(abs(Double(logits[t][c]) - v[c]) <= 1e-4 * max(1, abs(v[c])), "config \(index)")
                }
            }
        }
    }

    /// Should give a sequence the same choices and outputs alone as inside a batch of others.
    @Test func batchInvariant() throws {
        let config = Self.configs[0]
        let dir = TemporaryDirectory()
        let d = 12, length = 23
        let (layer, _) = try makeACM(config, inputDim: d, outputDim: d, seed: 31, gateScale: 2, dir: dir)
        var rng = SplitMix64(seed: 8)
        let batch = randomTensor([8 * length, d], rng: &rng)
        let policies: [LearnerPolicy] = [.cap(0.5), .auto, .cap(0.25), .full, .uniform(1), .cap(0.9), .auto, .cap(0.1)]
        let sequences = (0..<8).map { $0 * length..<($0 + 1) * length }
        let out = Tensor(shape: [8 * length, d])
        var ks = [Int32](repeating: 0, count: 8 * length)
        layer.forward(batch.data, sequences: sequences, policies: policies, out: out.data, choices: &ks, workspace: ACMWorkspace())
        for (i, seq) in sequences.enumerated() {
            let alone = Tensor(shape: [length, d])
            var aloneK = [Int32](repeating: 0, count: length)
            layer.forward(
                batch.data + seq.lowerBound * d, sequences: [0..<length], policies: [policies[i]], out: alone.data,
                choices: &aloneK, workspace: ACMWorkspace())
            #expect(aloneK == Array(ks[seq]))
            #expect(maxAbsDiff(alone.data, out.data + seq.lowerBound * d, count: length * d) <= 1e-5)
        }
    }

    /// Should reject a config that the format does not allow, naming the module.
    @Test func rejectsBadConfig() throws {
        let dir = TemporaryDirectory()
        var config = Self.configs[0]
        config.minChoice = 5
        let error = #expect(throws: ModelError.self) {
            _ = try makeACM(config, inputDim: 4, outputDim: 4, seed: 1, dir: dir)
        }
        // the weights' prefix ("acm") is the module path the message names
        #expect(error.map { "\($0)" }?.contains("acm: min_choice 5 is outside 0...") == true, "\(String(describing: error))")
    }
}

@Suite struct ComputeBudgetTests {
    /// Should take exactly (0, 1], refuse 0, negatives, over 1, NaN and infinity, and say why.
    @Test func acceptsOnlyTheUnitInterval() throws {
        for ok in [1e-9, 0.25, 0.5, 1.0] { #expect(try ComputeBudget(ok).value == ok) }
        for bad in [0.0, -0.5, 1.0000001, 2, .nan, .infinity, -.infinity] {
            #expect(throws: InvalidComputeBudget.self) { try ComputeBudget(bad) }
        }
        let over = 1.5  // a variable: `ComputeBudget(1.5)` would be the literal's initializer, which traps
        let refused = #expect(throws: InvalidComputeBudget.self) { try ComputeBudget(over) }
        #expect(refused?.description == "a compute budget must be in (0, 1], got 1.5")
    }

    /// Should decode from a JSON number through the same check, naming the value when it refuses it.
    @Test func decodesThroughTheSameCheck() throws {
        struct Holder: Codable { var budget: ComputeBudget? }
        let decoded = try JSONDecoder().decode(Holder.self, from: Data(#"{"budget": 0.5}"#.utf8))
        #expect(decoded.budget?.value == 0.5)
        #expect(try JSONDecoder().decode(Holder.self, from: Data("{}".utf8)).budget == nil)
        do {
            _ = try JSONDecoder().decode(Holder.self, from: Data(#"{"budget": 0}"#.utf8))
            Issue.record("a budget of 0 decoded")
        } catch {
            #expect("\(error)".contains("must be in (0, 1], got 0.0"))
        }
    }
}
