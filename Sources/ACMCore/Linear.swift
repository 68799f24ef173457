import CACMBF16
import CACMKernels

/// A dense layer in `nn.Linear`'s layout: `weight` [out, in] (key `weight`), `bias` [out] (key `bias`).
public struct Linear: Sendable {
    public let inputs: Int
    public let outputs: Int
    public let weight: Tensor
    public let bias: Tensor?
    /// `weight`ᵀ [in, out], made once at load so that the forward GEMM needs no transpose (the fast
    /// kernels of `gemm` take none), in the layer's precision.
    public let weightT: GEMMWeight
    /// `weight` as the file stores it when that is F16 (Whisper's checkpoints) and the layer was built with
    /// `keepHalf`, for the few-rows path: a decoder step reads every weight for one row per utterance, so its
    /// bytes are the cost, and widening halves is exact.
    public let half: HalfMatrix?

    /// `keepHalf`: also keep an F16 weight as stored (`half`), for a layer that runs few rows at a time.
    public init(inputs: Int, outputs: Int, weights: Weights, bias: Bool = true, keepHalf: Bool = false) throws {
        self.inputs = inputs
        self.outputs = outputs
        weight = try weights.tensor("weight", shape: [outputs, inputs])
        half = keepHalf ? try weights.halfMatrix("weight", shape: [outputs, inputs]) : nil
        self.bias = bias ? try weights.tensor("bias", shape: [outputs]) : nil
        weightT = GEMMWeight(weight.transposed(), precision: weights.precision)
    }

    /// A layer from tensors already in memory (e.g. one slice of a packed projection).
    public init(weight: Tensor, bias: Tensor?, precision: Precision) {
        precondition(weight.shape.count == 2)
        outputs = weight.shape[0]
        inputs = weight.shape[1]
        self.weight = weight
        self.bias = bias
        weightT = GEMMWeight(weight.transposed(), precision: precision)
        half = nil
    }

    /// What the layer's GEMMs run in.
    public var precision: Precision { weightT.precision }

    /// Layers that read the same input, stacked in order into one (their outputs side by side, in the first's
    /// precision): one GEMM wide enough to fill the vector units instead of one narrow GEMM each. Nil for fewer
    /// than two layers or different input widths.
    public static func stacked(_ parts: [Linear]) -> Linear? {
        guard parts.count > 1, let dIn = parts.first?.inputs, parts.allSatisfy({ $0.inputs == dIn }) else { return nil }
        let rows = parts.reduce(0) { $0 + $1.outputs }
        let weight = Tensor(shape: [rows, dIn]), bias = Tensor(shape: [rows])
        var row = 0
        for part in parts {
            (weight.data + row * dIn).update(from: part.weight.data, count: part.outputs * dIn)
            if let b = part.bias { (bias.data + row).update(from: b.data, count: part.outputs) }
            row += part.outputs
        }
        return Linear(weight: weight, bias: bias, precision: parts[0].precision)
    }

    /// Whether `forward` shares `rows` rows out among the workers by the weight's columns rather than by rows: where
    /// the rows are few against a weight too large for a core's cache, so that each core reads its part of the
    /// weight rather than all of it (the ViT-B's 197 rows of an image).
    func splitsColumns(rows: Int) -> Bool {
        Parallel.workers > 1 && rows < columnSplitRows && inputs * outputs >= columnSplitWeight
            && weightT.panelCount >= Parallel.workers
    }

    /// In bf16 (a layer of even `outputs`), x·Wᵀ + b rounded to bfloat16 into `out` (row stride `ldOut`, even), each
    /// tile rounded as it is made and no float output kept: for products that read only the rounded values
    /// (`multiHeadAttention(rounded:...)`). Rows and workers are shared out as `forward` shares them.
    /// x float, or (`rounded`) already bfloat16 (`inputs` even).
    public func forwardRounded(
        _ x: UnsafePointer<Float>? = nil, rounded: UnsafePointer<UInt16>? = nil, rows: Int,
        out: UnsafeMutablePointer<UInt16>, ldOut: Int? = nil
    ) {
        let ldo = ldOut ?? outputs
        precondition(precision == .bf16 && outputs % 2 == 0 && ldo % 2 == 0 && (x != nil) != (rounded != nil))
        if splitsColumns(rows: rows) {
            Parallel.forEachChunk(weightT.panelCount, minimumPerChunk: 1) { _, panels in
                let cs = weightT.columns(ofPanels: panels)
                weightT.multiplyActivated(
                    m: rows, a: x, rounded: rounded, lda: inputs, columns: cs, bias: bias.map { $0.data + cs.lowerBound },
                    activation: .identity, hidden: out + cs.lowerBound, ldHidden: ldo)
            }
            return
        }
        Parallel.forEachChunk(rows) { _, r in
            weightT.multiplyActivated(
                m: r.count, a: x.map { $0 + r.lowerBound * inputs }, rounded: rounded.map { $0 + r.lowerBound * inputs },
                lda: inputs, bias: bias?.data, activation: .identity, hidden: out + r.lowerBound * ldo, ldHidden: ldo)
        }
    }

    /// out = x·Wᵀ + b for `rows` rows, or out += x·Wᵀ + b when `accumulate`; `ldx` and `ldOut` are row strides.
    public func forward(
        _ x: UnsafePointer<Float>, rows: Int, ldx: Int? = nil,
        out: UnsafeMutablePointer<Float>, ldOut: Int? = nil, accumulate: Bool = false, fewRows: FewRows = .oneWorker
    ) {
        forward(x, rows: rows, ldx: ldx, out: out, ldOut: ldOut, accumulate: accumulate, fewRows: fewRows, gelu: false)
    }

    /// `forward`, then GELU on the output (`gelu`; not with `accumulate`), on each tile as it is made where it can.
    func forward(
        _ x: UnsafePointer<Float>, rows: Int, ldx: Int? = nil, out: UnsafeMutablePointer<Float>, ldOut: Int? = nil,
        accumulate: Bool = false, fewRows: FewRows = .oneWorker, gelu: Bool
    ) {
        precondition(!gelu || (!accumulate && fewRows == .oneWorker))
        let ldo = ldOut ?? outputs, ldi = ldx ?? inputs
        if accumulate && fewRows == .splitColumns && rows < Parallel.workers * Parallel.minimumRowsPerWorker {
            // the few-rows paths write their output: add it from a buffer
            let sum = Tensor(shape: [rows, outputs])
            forward(x, rows: rows, ldx: ldi, out: sum.data, fewRows: fewRows)
            for r in 0..<rows { acm_add(out + r * ldo, sum.data + r * outputs, outputs) }
            return
        }
        if fewRows == .splitColumns && rows < Parallel.workers * Parallel.minimumRowsPerWorker, let half {
            half.timesTransposed(x, count: rows, ldx: ldi, out: out, ldOut: ldo, minimumRowsPerWorker: 64)
            if let bias { addBias(out, rows: rows, columns: outputs, ld: ldo, bias: bias.data) }
            return
        }
        if fewRows == .splitColumns && rows < Parallel.workers * Parallel.minimumRowsPerWorker {
            timesTransposed(
                x, rows: rows, ldx: ldi, w: weight.data, outputs: outputs, inputs: inputs, bias: bias?.data,
                out: out, ldOut: ldo)
            return
        }
        if splitsColumns(rows: rows) {
            // every row against each worker's panels of the weight
            Parallel.forEachChunk(weightT.panelCount, minimumPerChunk: 1) { _, panels in
                let cs = weightT.columns(ofPanels: panels)
                weightT.multiply(
                    m: rows, a: x, lda: ldi, columns: cs, beta: accumulate ? 1 : 0, c: out + cs.lowerBound, ldc: ldo,
                    bias: bias.map { $0.data + cs.lowerBound }, gelu: gelu)
            }
            return
        }
        Parallel.forEachChunk(rows) { _, r in
            // [rows, in] × [in, out]
            weightT.multiply(
                m: r.count, a: x + r.lowerBound * ldi, lda: ldi, beta: accumulate ? 1 : 0, c: out + r.lowerBound * ldo,
                ldc: ldo, bias: bias?.data, gelu: gelu)
        }
    }
}

/// How a dense layer runs rows too few to give every worker `Parallel.minimumRowsPerWorker` of them.
public enum FewRows: Sendable {
    /// On one worker, as the rows of a larger batch run.
    case oneWorker
    /// With the output columns shared out among the workers, and up to `streamedRows` rows as dot
    /// products (`timesTransposed`): for a decoder step, one row per sequence, where one worker would leave the
    /// others idle.
    case splitColumns
}

/// out[r, j] = Σ_c x[r, c]·w[j, c] (+ bias[j]) for `rows` rows: x [rows, inputs] times wᵀ, w
/// [outputs, inputs] in `nn.Linear`'s layout, with the output columns shared out among the workers
/// (`minimumColumnsPerWorker` each at least). Up to `streamedRows` rows go through `dot`, streaming w from
/// memory once: OpenBLAS packs all of w on every call, which for a decoder step's one row per utterance
/// costs more than the arithmetic (3× for Whisper's 51864 × 384 logits). Each output is then also the
/// same dot product whatever the number of rows, so a step's logits do not depend on which other
/// utterances are live.
public func timesTransposed(
    _ x: UnsafePointer<Float>, rows: Int, ldx: Int? = nil, w: UnsafePointer<Float>, outputs: Int, inputs k: Int,
    bias: UnsafePointer<Float>? = nil, out: UnsafeMutablePointer<Float>, ldOut: Int? = nil,
    minimumColumnsPerWorker: Int = 64
) {
    let ldx = ldx ?? k, ldOut = ldOut ?? outputs
    Parallel.forEachChunk(outputs, minimumPerChunk: minimumColumnsPerWorker) { _, columns in
        if rows > streamedRows {
            // [rows, in] × [in, columns]
            gemm(
                m: rows, n: columns.count, k: k, a: x, lda: ldx, b: w + columns.lowerBound * k, ldb: k,
                transB: true, c: out + columns.lowerBound, ldc: ldOut)
        } else {
            for j in columns {
                let wj = w + j * k
                for r in 0..<rows { out[r * ldOut + j] = dot(x + r * ldx, wj, k) }
            }
        }
        if let bias {
            addBias(
                out + columns.lowerBound, rows: rows, columns: columns.count, ld: ldOut,
                bias: bias + columns.lowerBound)
        }
    }
}

/// Below this many rows, a weight of at least `columnSplitWeight` values is shared out by columns (`Linear.splitsColumns`).
/// The dense ViT-B at batch 1 (197 rows): 94–96 ms split by rows, 89–92 by columns (f32; bf16 the same either way).
let columnSplitRows = 256
let columnSplitWeight = 256 * 1024

/// Rows up to which `timesTransposed` streams the weight instead of calling GEMM.
let streamedRows = 8

/// A dense MLP: `fc1` (d → D), exact GELU, `fc2` (D → d); torchvision's `MLPBlock` (`mlp.0`, `mlp.3`) and
/// Whisper's `fc1`, `fc2`.
public struct DenseMLP: Sendable {
    public let fc1: Linear
    public let fc2: Linear

    public init(fc1: Linear, fc2: Linear) {
        precondition(fc1.outputs == fc2.inputs)
        self.fc1 = fc1
        self.fc2 = fc2
    }

    /// d → `hidden` → d, its layers under `weights` at the checkpoint's keys `fc1` and `fc2` (`keepHalf`: see
    /// `Linear`).
    public init(dim d: Int, hidden: Int, weights: Weights, fc1: String, fc2: String, keepHalf: Bool = false) throws {
        self.init(
            fc1: try Linear(inputs: d, outputs: hidden, weights: weights.scoped(fc1), keepHalf: keepHalf),
            fc2: try Linear(inputs: hidden, outputs: d, weights: weights.scoped(fc2), keepHalf: keepHalf))
    }

    /// Whether `forward(rounded:...)` takes `rows` rows: both layers in bf16 (even widths), and rows that
    /// `forward` shares out by rows.
    public func takesRounded(rows: Int) -> Bool {
        runsBF16Rows && fc1.inputs % 2 == 0 && !(fc1.splitsColumns(rows: rows) && fc2.splitsColumns(rows: rows))
    }

    /// Whether rows shared out by rows run `bf16Rows`: both layers in bf16, the hidden layer of even width.
    private var runsBF16Rows: Bool { fc1.precision == .bf16 && fc2.precision == .bf16 && fc1.outputs % 2 == 0 }

    /// `forward` on x already rounded to bfloat16 (`takesRounded`): the same products on the same rounded rows.
    public func forward(
        rounded x: UnsafePointer<UInt16>, rows: Int, out: UnsafeMutablePointer<Float>, accumulate: Bool = false,
        scratch: WorkerScratch
    ) {
        precondition(takesRounded(rows: rows))
        scratch.prepare()
        bf16Rows(nil, rounded: x, rows: rows, out: out, accumulate: accumulate, scratch: scratch)
    }

    /// The bf16 path, each worker on its own rows: [rows, d] × [d, D], GELU(· + bias) and its rounding done on each
    /// tile as it is made; then [rows, D] × [D, d] on the rounded hidden layer. x float, or already rounded.
    private func bf16Rows(
        _ x: UnsafePointer<Float>?, rounded: UnsafePointer<UInt16>?, rows: Int, out: UnsafeMutablePointer<Float>,
        accumulate: Bool, scratch: WorkerScratch
    ) {
        let d = fc1.inputs, hiddenWidth = fc1.outputs, dOut = fc2.outputs
        Parallel.forEachChunk(rows) { worker, r in
            let (_, hidden) = bf16Space(scratch[worker], floats: 0, count: r.count * hiddenWidth)
            fc1.weightT.multiplyActivated(
                m: r.count, a: x.map { $0 + r.lowerBound * d }, rounded: rounded.map { $0 + r.lowerBound * d }, lda: d,
                bias: fc1.bias?.data, activation: .gelu, hidden: hidden, ldHidden: hiddenWidth)
            fc2.weightT.multiply(
                m: r.count, rounded: hidden, lda: hiddenWidth, beta: accumulate ? 1 : 0, c: out + r.lowerBound * dOut,
                ldc: dOut, bias: fc2.bias?.data)
        }
    }

    /// out = fc2(gelu(fc1(x))) for `rows` rows, or out += that when `accumulate`; each worker runs all three
    /// steps on its own rows, or, for few rows split by columns, each step is shared out by columns in turn.
    public func forward(
        _ x: UnsafePointer<Float>, rows: Int, out: UnsafeMutablePointer<Float>, accumulate: Bool = false,
        scratch: WorkerScratch, fewRows: FewRows = .oneWorker
    ) {
        let d = fc1.inputs, hiddenWidth = fc1.outputs, dOut = fc2.outputs
        scratch.prepare()
        if fewRows == .splitColumns && rows < Parallel.workers * Parallel.minimumRowsPerWorker {
            let hidden = scratch[0].reserve(rows * hiddenWidth)
            fc1.forward(x, rows: rows, out: hidden, fewRows: .splitColumns)
            Activation.gelu.apply(hidden, count: rows * hiddenWidth)
            fc2.forward(hidden, rows: rows, out: out, accumulate: accumulate, fewRows: .splitColumns)
            return
        }
        if fc1.splitsColumns(rows: rows) && fc2.splitsColumns(rows: rows) {
            // each step shared out by the weights' columns in turn
            let hidden = scratch[0].reserve(rows * hiddenWidth)
            fc1.forward(x, rows: rows, out: hidden, gelu: true)
            fc2.forward(hidden, rows: rows, out: out, accumulate: accumulate)
            return
        }
        if runsBF16Rows {
            bf16Rows(x, rounded: nil, rows: rows, out: out, accumulate: accumulate, scratch: scratch)
            return
        }
        Parallel.forEachChunk(rows) { worker, r in
            let hidden = scratch[worker].reserve(r.count * hiddenWidth)
            // [rows, d] × [d, D], then GELU(· + bias) on each tile as it is made
            fc1.weightT.multiply(
                m: r.count, a: x + r.lowerBound * d, lda: d, c: hidden, ldc: hiddenWidth, bias: fc1.bias?.data, gelu: true)
            // [rows, D] × [D, d] + bias
            fc2.weightT.multiply(
                m: r.count, a: hidden, lda: hiddenWidth, beta: accumulate ? 1 : 0, c: out + r.lowerBound * dOut, ldc: dOut,
                bias: fc2.bias?.data)
        }
    }
}

/// A LayerNorm over the last dimension (`nn.LayerNorm`): weight [d], bias [d].
public struct LayerNorm: Sendable {
    public let weight: Tensor
    public let bias: Tensor
    public let eps: Float

    public init(dim: Int, eps: Float, weights: Weights) throws {
        weight = try weights.tensor("weight", shape: [dim])
        bias = try weights.tensor("bias", shape: [dim])
        self.eps = eps
    }

    /// x [rows, d] → out [rows, d]; out may be x.
    public func forward(_ x: UnsafePointer<Float>, rows: Int, out: UnsafeMutablePointer<Float>) {
        layerNorm(x, rows: rows, columns: weight.count, gamma: weight.data, beta: bias.data, eps: eps, out: out)
    }

    /// x [rows, d] → out [rows, d] rounded to bfloat16 (the float output's rounding), with no float output.
    public func forward(_ x: UnsafePointer<Float>, rows: Int, rounded out: UnsafeMutablePointer<UInt16>) {
        let d = weight.count
        Parallel.forEachChunk(rows, minimumPerChunk: 64) { _, chunk in
            acm_layer_norm_rows_bf16(
                x + chunk.lowerBound * d, chunk.count, d, weight.data, bias.data, eps, out + chunk.lowerBound * d)
        }
    }
}
