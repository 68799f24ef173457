import ACMCore

/// Whisper's `embed_tokens` [vocab, d]: each token's embedding in, and (tied) the projection of the last
/// hidden state to the vocabulary's logits out. Kept in half precision when the file stores it so (the
/// CTranslate2 and Hugging Face checkpoints do): a decoder step reads all of it for a handful of rows,
/// so its bytes are the step's cost.
enum TokenEmbedding {
    case float(Tensor)
    case half(HalfMatrix)

    init(_ weights: Weights, _ name: String, shape: [Int]) throws {
        if let half = try weights.halfMatrix(name, shape: shape) {
            self = .half(half)
        } else {
            self = .float(try weights.tensor(name, shape: shape))
        }
    }

    /// Token `token`'s embedding into `out` (d floats).
    func row(_ token: Int, into out: UnsafeMutablePointer<Float>) {
        switch self {
        case let .float(t): out.update(from: t.data + token * t.columns, count: t.columns)
        case let .half(h): h.row(token, into: out)
        }
    }

    /// out[i, v] = x[i] · embedding v: the logits of `rows` hidden states.
    func timesTransposed(_ x: UnsafePointer<Float>, rows: Int, out: UnsafeMutablePointer<Float>) {
        switch self {
        case let .float(t):
            ACMCore.timesTransposed(
                x, rows: rows, w: t.data, outputs: t.rows, inputs: t.columns, out: out, minimumColumnsPerWorker: 1024)
        case let .half(h):
            h.timesTransposed(x, count: rows, out: out)
        }
    }
}
