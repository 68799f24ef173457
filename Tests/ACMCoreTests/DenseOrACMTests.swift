import Foundation
import Testing

@testable import ACMCore

@Suite struct DenseOrACMTests {
    /// Should run a dense projection and MLP as they run themselves, few rows split by columns when
    /// asked, and count no learners.
    @Test(arguments: [FewRows.oneWorker, .splitColumns], [3, 40])
    func denseRunsTheLayer(fewRows: FewRows, rows: Int) {
        var rng = SplitMix64(seed: 13)
        let d = 21, hidden = 130
        let x = randomTensor([rows, d], rng: &rng)
        let fc1 = Linear(weight: randomTensor([hidden, d], scale: 0.3, rng: &rng), bias: randomTensor([hidden], rng: &rng), precision: .f32)
        let fc2 = Linear(weight: randomTensor([d, hidden], scale: 0.3, rng: &rng), bias: randomTensor([d], rng: &rng), precision: .f32)
        let mlp = DenseMLP(fc1: fc1, fc2: fc2)
        let sequences = [0..<rows / 2, rows / 2..<rows]
        let learners = LearnerCounts(acms: [], items: 2)
        for (layer, width) in [(DenseOrACM.linear(fc1), hidden), (.mlp(mlp), d)] {
            #expect(layer.acmIndex == nil)
            let out = Tensor(shape: [rows, width]), want = Tensor(shape: [rows, width])
            layer.forward(
                x.data, sequences: sequences, policies: [.auto, .cap(0.5)], out: out.data, workspace: ACMWorkspace(),
                learners: learners, fewRows: fewRows)
            if case .linear = layer {
                fc1.forward(x.data, rows: rows, out: want.data, fewRows: fewRows)
            } else {
                mlp.forward(x.data, rows: rows, out: want.data, scratch: WorkerScratch(), fewRows: fewRows)
            }
            #expect(out.array == want.array)
        }
        #expect(learners.computeFraction == [1, 1])
    }

    /// Should output the ACM's definition for each token's k, and count the learners: the histogram,
    /// every token's k in order, and each item's learner FLOPs over two calls, sequence i for item
    /// `items[i]`.
    @Test func acmCountsItsLearners() throws {
        let config = ACMConfig(numLearners: 4, learnerDim: 3, activation: .gelu, minChoice: 1, outputBias: true)
        let dir = TemporaryDirectory()
        let d = 10
        let (layer, w) = try makeACM(config, inputDim: d, outputDim: d, seed: 23, gateScale: 2, dir: dir)
        let other = try makeACM(config, inputDim: d, outputDim: d, seed: 24, dir: dir).0
        let acm = DenseOrACM.acm(index: 1, layer)
        #expect(acm.acmIndex == 1)
        var rng = SplitMix64(seed: 9)
        let learners = LearnerCounts(acms: [other, layer], items: 3, recordChoices: true)
        let ws = ACMWorkspace()
        var ran: [Int32] = []
        // two calls: a batch of the three items' sequences, then a step of items 2 and 0
        for (sequences, policies, items) in [
            ([0..<9, 9..<10, 10..<25], [LearnerPolicy.auto, .cap(0.5), .uniform(2)], [0, 1, 2]),
            ([0..<1, 1..<3], [.full, .auto], [2, 0]),
        ] {
            let tokens = sequences.last!.upperBound
            let x = randomTensor([tokens, d], scale: 2, rng: &rng)
            let out = Tensor(shape: [tokens, d])
            acm.forward(
                x.data, sequences: sequences, policies: policies, out: out.data, workspace: ws, learners: learners,
                items: items)
            var ks = [Int32](repeating: 0, count: tokens)
            let direct = Tensor(shape: [tokens, d])
            layer.forward(x.data, sequences: sequences, policies: policies, out: direct.data, choices: &ks, workspace: ACMWorkspace())
            #expect(direct.array == out.array)
            for t in 0..<tokens {
                let want = naiveACM(config, w, x: x.data, row: t, k: Int(ks[t]), dIn: d, dOut: d)
                for c in 0..<d { #expect(abs(Double(out.data[t * d + c]) - want[c]) < 1e-5) }
            }
            ran += ks
        }
        #expect(learners.choices! == [[], ran])
        #expect(learners.histogram[0] == [0, 0, 0, 0, 0])
        #expect(learners.histogram[1] == (0...4).map { k in ran.filter { $0 == k }.count })
        // item 0: tokens 0..<9, then 1..<3 of the step; item 1: token 9; item 2: tokens 10..<25, then 0
        let perItem = [Array(ran[0..<9]) + ran[26..<28], [ran[9]], Array(ran[10..<25]) + [ran[25]]]
        for (item, ks) in perItem.enumerated() {
            let sum = Double(ks.reduce(0) { $0 + Int($1) })
            #expect(learners.executedFLOPs[item] == layer.learnerFLOPs * sum)
            #expect(learners.possibleFLOPs[item] == layer.learnerFLOPs * Double(4 * ks.count))
            #expect(abs(learners.computeFraction[item] - sum / Double(4 * ks.count)) < 1e-12)
        }
    }
}
