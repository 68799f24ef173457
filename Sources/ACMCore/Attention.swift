import CACMBF16
import CACMKernels

/// Multi-head scaled dot-product attention, run per sequence: the ViT's and Whisper's encoder
/// self-attention, and Whisper's decoder self-attention (causal, over its KV cache) and cross-attention.
///
/// `q`, `k`, `v` and `out` are [rows, heads·headDim] with the given row strides. The queries of
/// sequence i are rows `sequences[i]` of `q`; its keys and values are rows `keys[i]` of `k` and `v`
/// (default: the same rows as its queries, self-attention within the sequence). With `causal`, the
/// queries are the last of their keys (a decoder's new tokens after its cached ones): query j of a
/// sequence with c more keys than queries sees keys 0...c + j. The (sequence, head) pairs are shared out
/// among the workers; `scores` holds each worker's score matrix.
///
/// With `precision` bf16 (where `BF16.available`), the two products of a head with more than `fewQueries`
/// queries run in bf16: q and the probabilities rounded to bfloat16 as they are read, k and v packed per head;
/// the scores, the softmax and the output stay float.
public func multiHeadAttention(
    q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, ld: Int,
    out: UnsafeMutablePointer<Float>, ldOut: Int,
    sequences: [Range<Int>], keys: [Range<Int>]? = nil, causal: Bool = false,
    heads: Int, headDim: Int, scores: WorkerScratch, precision: Precision = .f32
) {
    attend(
        .float(q: q, k: k, v: v, ld: ld), out: out, ldOut: ldOut, sequences: sequences, keys: keys, causal: causal,
        heads: heads, headDim: headDim, scores: scores, bf16: precision.effective == .bf16)
}

/// Self-attention in bf16 on q, k and v already rounded to bfloat16 (a dense q/k/v projection's output, rounded as
/// its tiles were made: `Linear.forwardRounded`), with row stride `ld` (even; `headDim` even): the same arithmetic
/// as `multiHeadAttention` in bf16 on the float q, k and v they round, without the float copies or their rounding.
/// Every sequence must have more than `fewQueries` and at most `maxRoundedSoftmaxKeys` rows
/// (`attentionTakesRounded`).
public func multiHeadAttention(
    rounded q: UnsafePointer<UInt16>, k: UnsafePointer<UInt16>, v: UnsafePointer<UInt16>, ld: Int,
    out: UnsafeMutablePointer<Float>, ldOut: Int, sequences: [Range<Int>], heads: Int, headDim: Int,
    scores: WorkerScratch
) {
    precondition(BF16.available && ld % 2 == 0 && headDim % 2 == 0)
    precondition(sequences.allSatisfy(attentionTakesRounded))
    attend(
        .rounded(q: q, k: k, v: v, ld: ld), out: out, ldOut: ldOut, sequences: sequences, keys: nil, causal: false,
        heads: heads, headDim: headDim, scores: scores, bf16: true)
}

/// Whether `multiHeadAttention(rounded:...)` takes a sequence of these rows: the GEMM path, and probabilities
/// rounded by the softmax.
public func attentionTakesRounded(_ rows: Range<Int>) -> Bool {
    rows.count > fewQueries && rows.count <= maxRoundedSoftmaxKeys
}

private enum AttentionInput {
    case float(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, ld: Int)
    case rounded(q: UnsafePointer<UInt16>, k: UnsafePointer<UInt16>, v: UnsafePointer<UInt16>, ld: Int)
}

private func attend(
    _ input: AttentionInput, out: UnsafeMutablePointer<Float>, ldOut: Int, sequences: [Range<Int>], keys: [Range<Int>]?,
    causal: Bool, heads: Int, headDim: Int, scores: WorkerScratch, bf16: Bool
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
            // the head's columns: float (qh, kh, vh), or already bfloat16 (`rounded`: only the bf16 GEMM path with
            // rounded probabilities, which `attentionTakesRounded` ensures)
            let q0 = queries.lowerBound, k0 = keyRows.lowerBound
            var qh, kh, vh: UnsafePointer<Float>!, ld = 0
            var rounded: (q: UnsafePointer<UInt16>, k: UnsafePointer<UInt16>, v: UnsafePointer<UInt16>, ld: Int)?
            switch input {
            case let .float(q, k, v, ldf):
                ld = ldf
                (qh, kh, vh) = (q + q0 * ld + col, k + k0 * ld + col, v + k0 * ld + col)
            case let .rounded(q, k, v, ld16):
                rounded = (q + q0 * ld16 + col, k + k0 * ld16 + col, v + k0 * ld16 + col, ld16)
            }
            let transposeKeys = count > fewQueries
            // Long sequences run in blocks of queries, so that a block's scores stay in the core's cache from
            // the product through the softmax to the product with v (Whisper's encoder: 1,500 keys, 9 MB of
            // scores a head at once, but 375 KB a block of 64).
            let block = min(count, max(fewQueries, scoreBlockFloats / max(keyCount, 1)))
            // after the scores: kᵀ in float, or k and v packed in bf16 (two UInt16 to a float)
            // and in bf16 the probabilities rounded, rows of an even number of keys (an odd count's last pair padded)
            let evenKeys = (keyCount + 1) & ~1
            let packedKCount = bf16PackedCount(k: headDim, n: keyCount), packedVCount = bf16PackedCount(k: keyCount, n: headDim)
            let packedCount = packedKCount + packedVCount + block * evenKeys
            let s = scores[worker].reserve(block * keyCount + (transposeKeys ? (bf16 ? (packedCount + 1) / 2 : headDim * keyCount) : 0))
            let kT = s + block * keyCount
            // the bf16 buffers only where they were reserved: in bf16, for the GEMM path
            let packed = transposeKeys && bf16 ? UnsafeMutableRawPointer(kT).bindMemory(to: UInt16.self, capacity: packedCount) : nil
            let packedK = packed, packedV = packed.map { $0 + packedKCount }
            let probabilities = packedV.map { $0 + packedVCount }
            let roundedProbabilities = packed != nil && !causal && keyCount <= maxRoundedSoftmaxKeys
            if let packedK, let packedV, let rounded {
                acm_pack_bf16_pairs_transposed_rounded(rounded.k, headDim, keyCount, rounded.ld, packedK)
                acm_pack_bf16_pairs_rounded(rounded.v, keyCount, headDim, rounded.ld, packedV)
            } else if let packedK, let packedV {
                // k packed as kᵀ [dh, keys], v as [keys, dh], once per head
                acm_pack_bf16_pairs_transposed(kh, headDim, keyCount, ld, packedK)
                acm_pack_bf16_pairs(vh, keyCount, headDim, ld, packedV)
            } else if transposeKeys {
                // kᵀ [dh, keys] once, so that both GEMMs run untransposed (LIBXSMM's kernels)
                transpose(kh, rows: keyCount, columns: headDim, lda: ld, out: kT, ldOut: keyCount)
            }
            for first in stride(from: 0, to: count, by: block) {
                let rows = min(block, count - first)
                // scores = q·kᵀ: [rows, dh] × [dh, keys]; the 1/√dh goes into the softmax
                if let packedK, let rounded {
                    let qb = rounded.q + first * rounded.ld
                    acm_gemm_bf16_rounded(rows, keyCount, headDim, qb, rounded.ld, packedK, keyCount, 0, s, keyCount)
                } else if let packedK {
                    acm_gemm_bf16(rows, keyCount, headDim, qh + first * ld, ld, packedK, keyCount, 0, s, keyCount)
                } else if transposeKeys {
                    gemm(
                        m: rows, n: keyCount, k: headDim, a: qh + first * ld, lda: ld, b: kT, ldb: keyCount, c: s,
                        ldc: keyCount)
                } else {
                    // a decoder step's few queries: dot products against the keys where they lie (a GEMM would
                    // copy them all, which costs more than the arithmetic)
                    dotRows(
                        qh + first * ld, rows: rows, ldx: ld, w: kh, ldw: ld, outputs: keyCount, k: headDim, out: s,
                        ldOut: keyCount)
                }
                if causal {
                    for j in 0..<rows {
                        let row = s + j * keyCount, visible = keyCount - count + first + j + 1
                        softmaxRows(row, rows: 1, n: visible, ld: keyCount, scale: scale)
                        (row + visible).update(repeating: 0, count: keyCount - visible)
                    }
                } else if roundedProbabilities, let probabilities {
                    // the probabilities straight into bfloat16, the next product's input
                    acm_softmax_rows_bf16(s, rows, keyCount, keyCount, scale, probabilities, evenKeys)
                } else {
                    softmaxRows(s, rows: rows, n: keyCount, ld: keyCount, scale: scale)
                }
                // out = softmax(scores)·v: [rows, keys] × [keys, dh]
                let o = out + (queries.lowerBound + first) * ldOut + col
                if roundedProbabilities, let probabilities, let packedV {
                    acm_gemm_bf16_rounded(rows, headDim, evenKeys, probabilities, evenKeys, packedV, headDim, 0, o, ldOut)
                } else if let packedV {
                    acm_gemm_bf16(rows, headDim, keyCount, s, keyCount, packedV, headDim, 0, o, ldOut)
                } else if transposeKeys {
                    gemm(m: rows, n: headDim, k: keyCount, a: s, lda: keyCount, b: vh, ldb: ld, c: o, ldc: ldOut)
                } else {
                    weightedRows(s, rows: rows, ldp: keyCount, v: vh, ldv: ld, n: keyCount, k: headDim, out: o, ldOut: ldOut)
                }
            }
        }
    }
}

/// Keys up to which `multiHeadAttention` in bf16 writes its probabilities rounded (`acm_softmax_rows_bf16`'s
/// longest row).
let maxRoundedSoftmaxKeys = 8192

/// Queries up to which `multiHeadAttention` computes a head's scores and sums as dot products over its keys and
/// values where they lie, instead of copying the keys out transposed for two GEMMs: the copy (and a GEMM's
/// packing) pays for itself only over more queries.
let fewQueries = 8

/// Floats of scores a block of queries may hold (96,000: 375 KB, within a core's L2 cache with the keys,
/// values and outputs it reads beside them).
let scoreBlockFloats = 96_000
