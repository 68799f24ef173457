/// A dense layer in `nn.Linear`'s layout: `weight` [out, in] (key `weight`), `bias` [out] (key `bias`).
public struct Linear: Sendable {
    public let inputs: Int
    public let outputs: Int
    public let weight: Tensor
    public let bias: Tensor?

    public init(inputs: Int, outputs: Int, weights: Weights, bias: Bool = true) throws {
        self.inputs = inputs
        self.outputs = outputs
        weight = try weights.tensor("weight", shape: [outputs, inputs])
        self.bias = bias ? try weights.tensor("bias", shape: [outputs]) : nil
    }

    /// A layer from tensors already in memory (e.g. one slice of a packed projection).
    public init(weight: Tensor, bias: Tensor?) {
        precondition(weight.shape.count == 2)
        outputs = weight.shape[0]
        inputs = weight.shape[1]
        self.weight = weight
        self.bias = bias
    }

    /// out = x·Wᵀ + b for `rows` rows; `ldx` and `ldOut` are row strides.
    public func forward(
        _ x: UnsafePointer<Float>, rows: Int, ldx: Int? = nil,
        out: UnsafeMutablePointer<Float>, ldOut: Int? = nil
    ) {
        let ldo = ldOut ?? outputs
        // [rows, in] × [in, out]
        gemm(
            m: rows, n: outputs, k: inputs,
            a: x, lda: ldx ?? inputs, b: weight.data, ldb: inputs, transB: true,
            c: out, ldc: ldo)
        if let bias { addBias(out, rows: rows, columns: outputs, ld: ldo, bias: bias.data) }
    }
}
