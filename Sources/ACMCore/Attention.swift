/// Multi-head scaled dot-product attention, run per sequence: the ViT's and Whisper's encoder
/// self-attention, and Whisper's decoder self-attention (causal, over its KV cache) and cross-attention.
///
/// `q`, `k`, `v` and `out` are [rows, heads·headDim] with the given row strides. The queries of
/// sequence i are rows `sequences[i]` of `q`; its keys and values are rows `keys[i]` of `k` and `v`
/// (default: the same rows as its queries, self-attention within the sequence). With `causal`, the
/// queries are the last of their keys (a decoder's new tokens after its cached ones): query j of a
/// sequence with c more keys than queries sees keys 0...c + j. The (sequence, head) pairs are shared out
/// among the workers; `scores` holds each worker's score matrix.
public func multiHeadAttention(
    q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, ld: Int,
    out: UnsafeMutablePointer<Float>, ldOut: Int,
    sequences: [Range<Int>], keys: [Range<Int>]? = nil, causal: Bool = false,
    heads: Int, headDim: Int, scores: WorkerScratch
) {
    precondition(keys == nil || keys!.count == sequences.count)
    let scale = 1 / Float(headDim).squareRoot()
    scores.prepare()
    Parallel.forEachChunk(sequences.count * heads, minimumPerChunk: 1) { worker, pairs in
        for pair in pairs {
            let i = pair / heads, col = (pair % heads) * headDim
            let queries = sequences[i], keyRows = keys?[i] ?? queries
            let count = queries.count, keyCount = keyRows.count
            precondition(!causal || keyCount >= count)
            let qh = q + queries.lowerBound * ld + col
            let kh = k + keyRows.lowerBound * ld + col, vh = v + keyRows.lowerBound * ld + col
            let transposeKeys = count > fewQueries
            let s = scores[worker].reserve(count * keyCount + (transposeKeys ? headDim * keyCount : 0))
            // scores = q·kᵀ: [count, dh] × [dh, keys]; the 1/√dh goes into the softmax
            if transposeKeys {
                // kᵀ [dh, keys] once, so that both GEMMs run untransposed (LIBXSMM's kernels)
                let kT = s + count * keyCount
                transpose(kh, rows: keyCount, columns: headDim, lda: ld, out: kT, ldOut: keyCount)
                gemm(m: count, n: keyCount, k: headDim, a: qh, lda: ld, b: kT, ldb: keyCount, c: s, ldc: keyCount)
            } else {
                // a decoder step's few queries: copying the keys would cost about as much as the product
                gemm(
                    m: count, n: keyCount, k: headDim, a: qh, lda: ld, b: kh, ldb: ld, transB: true,
                    c: s, ldc: keyCount)
            }
            if causal {
                for j in 0..<count {
                    let row = s + j * keyCount, visible = keyCount - count + j + 1
                    softmaxRows(row, rows: 1, n: visible, ld: keyCount, scale: scale)
                    (row + visible).update(repeating: 0, count: keyCount - visible)
                }
            } else {
                softmaxRows(s, rows: count, n: keyCount, ld: keyCount, scale: scale)
            }
            // out = softmax(scores)·v: [count, keys] × [keys, dh]
            gemm(
                m: count, n: headDim, k: keyCount, a: s, lda: keyCount, b: vh, ldb: ld,
                c: out + queries.lowerBound * ldOut + col, ldc: ldOut)
        }
    }
}

/// Queries up to which `multiHeadAttention` reads a head's keys transposed in place (OpenBLAS) instead of
/// copying them out transposed for LIBXSMM: the copy pays for itself only over more queries.
let fewQueries = 8
