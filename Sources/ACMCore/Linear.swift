/// A dense layer in `nn.Linear`'s layout: `weight` [out, in] (key `weight`), `bias` [out] (key `bias`).
public struct Linear: Sendable {
    public let inputs: Int
    public let outputs: Int
    public let weight: Tensor
    public let bias: Tensor?
    /// `weight`ᵀ [in, out], made once at load so that the forward GEMM needs no transpose (the fast
    /// kernels of `gemm` take none).
    public let weightT: Tensor

    public init(inputs: Int, outputs: Int, weights: Weights, bias: Bool = true) throws {
        self.inputs = inputs
        self.outputs = outputs
        weight = try weights.tensor("weight", shape: [outputs, inputs])
        self.bias = bias ? try weights.tensor("bias", shape: [outputs]) : nil
        weightT = weight.transposed()
    }

    /// A layer from tensors already in memory (e.g. one slice of a packed projection).
    public init(weight: Tensor, bias: Tensor?) {
        precondition(weight.shape.count == 2)
        outputs = weight.shape[0]
        inputs = weight.shape[1]
        self.weight = weight
        self.bias = bias
        weightT = weight.transposed()
    }

    /// out = x·Wᵀ + b for `rows` rows; `ldx` and `ldOut` are row strides.
    public func forward(
        _ x: UnsafePointer<Float>, rows: Int, ldx: Int? = nil,
        out: UnsafeMutablePointer<Float>, ldOut: Int? = nil
    ) {
        let ldo = ldOut ?? outputs, ldi = ldx ?? inputs
        Parallel.forEachChunk(rows) { _, r in
            // [rows, in] × [in, out]
            gemm(
                m: r.count, n: outputs, k: inputs,
                a: x + r.lowerBound * ldi, lda: ldi, b: weightT.data, ldb: outputs,
                c: out + r.lowerBound * ldo, ldc: ldo)
            if let bias { addBias(out + r.lowerBound * ldo, rows: r.count, columns: outputs, ld: ldo, bias: bias.data) }
        }
    }
}

/// torchvision's `MLPBlock`, dense: `mlp.0` (d → D), exact GELU, `mlp.3` (D → d).
public struct DenseMLP: Sendable {
    public let fc1: Linear
    public let fc2: Linear

    public init(fc1: Linear, fc2: Linear) {
        precondition(fc1.outputs == fc2.inputs)
        self.fc1 = fc1
        self.fc2 = fc2
    }

    /// out = fc2(gelu(fc1(x))) for `rows` rows; each worker runs all three steps on its own rows.
    public func forward(
        _ x: UnsafePointer<Float>, rows: Int, out: UnsafeMutablePointer<Float>, scratch: WorkerScratch
    ) {
        let d = fc1.inputs, hiddenWidth = fc1.outputs, dOut = fc2.outputs
        scratch.prepare()
        Parallel.forEachChunk(rows) { worker, r in
            let hidden = scratch[worker].reserve(r.count * hiddenWidth)
            // [rows, d] × [d, D]
            gemm(
                m: r.count, n: hiddenWidth, k: d, a: x + r.lowerBound * d, lda: d,
                b: fc1.weightT.data, ldb: hiddenWidth, c: hidden, ldc: hiddenWidth)
            Activation.gelu.apply(hidden, rows: r.count, columns: hiddenWidth, bias: fc1.bias?.data)
            // [rows, D] × [D, d]
            gemm(
                m: r.count, n: dOut, k: hiddenWidth, a: hidden, lda: hiddenWidth,
                b: fc2.weightT.data, ldb: dOut, c: out + r.lowerBound * dOut, ldc: dOut)
            if let b = fc2.bias { addBias(out + r.lowerBound * dOut, rows: r.count, columns: dOut, ld: dOut, bias: b.data) }
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
}
