import CACMKernels
import Foundation

// Elementwise and row kernels for a transformer forward pass. Each works on raw row-major buffers so the
// caller decides where the data lives; each is checked against a naive loop in ACMCoreTests. The hot ones
// (softmax, LayerNorm, GELU, bias and residual adds) run in CACMKernels, compiled for AVX-512 and AVX2 and
// chosen at run time.

// The elementwise functions left in Swift (exp for tanh, ReLU) are plain scalar code with no branches, library calls or trapping
// conversions, so that LLVM vectorises the loops that call them. (Swift's SIMD types were measured 10×
// slower here: their generic operations are not all specialised.)

/// exp(x) by range reduction to 2ⁿ·eʳ, |r| ≤ ln2/2, and Cephes' expf polynomial: about 2 float ulps.
/// Rounding and 2ⁿ use the 1.5·2²³ trick: adding it leaves round(y) in the low mantissa bits.
@inline(__always) func expApprox(_ a: Float) -> Float {
    var x = a > 88.3 ? 88.3 : a
    x = x < -87.3 ? -87.3 : x
    let magic: Float = 12_582_912  // 1.5·2²³
    let shifted = x * 1.44269504088896341 + magic
    let n = shifted - magic  // round(x·log₂e)
    var r = x - n * 0.693359375
    r = r + n * 2.12194440e-4
    let z = r * r
    var y: Float = 1.9875691500e-4
    y = y * r + 1.3981999507e-3
    y = y * r + 8.3334519073e-3
    y = y * r + 4.1665795894e-2
    y = y * r + 1.6666665459e-1
    y = y * r + 5.0000001201e-1
    y = y * z + r + 1
    // the low bits of `shifted` hold n (two's complement); n + 127 is the biased exponent of 2ⁿ
    let twoToN = Float(bitPattern: ((shifted.bitPattern &- magic.bitPattern) &+ 127) &<< 23)
    return y * twoToN
}

/// Σ a[i]·b[i] over n floats; eight partial sums so the loop vectorises.
@inline(__always) func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var s = (Float(0), Float(0), Float(0), Float(0), Float(0), Float(0), Float(0), Float(0))
    var i = 0
    while i + 8 <= n {
        s.0 += a[i] * b[i]
        s.1 += a[i + 1] * b[i + 1]
        s.2 += a[i + 2] * b[i + 2]
        s.3 += a[i + 3] * b[i + 3]
        s.4 += a[i + 4] * b[i + 4]
        s.5 += a[i + 5] * b[i + 5]
        s.6 += a[i + 6] * b[i + 6]
        s.7 += a[i + 7] * b[i + 7]
        i += 8
    }
    var result = ((s.0 + s.1) + (s.2 + s.3)) + ((s.4 + s.5) + (s.6 + s.7))
    while i < n {
        result += a[i] * b[i]
        i += 1
    }
    return result
}

/// Exact (erf) GELU in place: x·½·(1 + erf(x/√2)).
public func geluInPlace(_ x: UnsafeMutablePointer<Float>, count: Int) {
    Activation.gelu.apply(x, count: count)
}

public enum Activation: String, Codable, Sendable {
    case identity, gelu, relu, tanh

    /// Applies the activation in place to `count` floats.
    public func apply(_ x: UnsafeMutablePointer<Float>, count: Int) {
        apply(x, rows: 1, columns: count, bias: nil)
    }

    /// x = act(x + bias) in place for `rows` rows of `columns`, `ld` apart (default: contiguous, or a
    /// block of columns of a wider matrix): one pass over the hidden layer of an MLP instead of two.
    public func apply(
        _ x: UnsafeMutablePointer<Float>, rows: Int, columns: Int, bias: UnsafePointer<Float>?, ld: Int? = nil
    ) {
        let ld = ld ?? columns
        @inline(__always) func map(_ f: (Float) -> Float) {
            for r in 0..<rows {
                let row = x + r * ld
                if let bias {
                    for c in 0..<columns { row[c] = f(row[c] + bias[c]) }
                } else {
                    for c in 0..<columns { row[c] = f(row[c]) }
                }
            }
        }
        switch self {
        case .identity:
            if let bias { acm_add_bias_rows(x, rows, columns, ld, bias) }
        case .gelu: acm_gelu_rows(x, rows, columns, ld, bias)
        case .relu: map { $0 < 0 ? 0 : $0 }
        // tanh(x) = 1 − 2/(e^{2x} + 1), exact in the limits.
        case .tanh: map { 1 - 2 / (expApprox(2 * $0) + 1) }
        }
    }
}

// MARK: - Row kernels

/// Adds `bias` (length `columns`) to each of `rows` rows of `x` (stride `ld`).
public func addBias(
    _ x: UnsafeMutablePointer<Float>, rows: Int, columns: Int, ld: Int, bias: UnsafePointer<Float>
) {
    acm_add_bias_rows(x, rows, columns, ld, bias)
}

/// x += y over `count` floats, split among the workers: the residual connection.
public func addInPlace(_ x: UnsafeMutablePointer<Float>, _ y: UnsafePointer<Float>, count: Int) {
    Parallel.forEachChunk(count, minimumPerChunk: 16_384) { _, r in
        acm_add(x + r.lowerBound, y + r.lowerBound, r.count)
    }
}

/// out[p] = x[order[p]] for p < count: rows of `columns` floats gathered into a contiguous block.
func gatherRows(_ out: UnsafeMutablePointer<Float>, from x: UnsafePointer<Float>, order: UnsafePointer<Int32>, count: Int, columns: Int) {
    acm_gather_rows(out, x, order, count, columns)
}

/// The scatter of a gathered block's results and each token's bias by its k, for every token t < rows:
/// out[t] = (out[t] + ys[position[t]]) + table[ks[t]] where ks[t] > kMin, else out[t] += table[ks[t]]; rows of
/// `columns` floats. Unless `accumulate` (out holds nothing yet), out[t] on the right is 0; with no table, its
/// rows are 0.
func scatterRows(
    _ out: UnsafeMutablePointer<Float>, from ys: UnsafePointer<Float>, position: UnsafePointer<Int32>,
    ks: UnsafePointer<Int32>, above kMin: Int, rows: Int, columns: Int, accumulate: Bool,
    table: UnsafePointer<Float>? = nil
) {
    acm_scatter_rows(out, ys, position, ks, Int32(kMin), rows, columns, accumulate ? 1 : 0, table)
}

/// out[t] += table[ks[t]] for t < rows: rows of `columns` floats, each token's row of `table` by its k.
func addIndexedRows(_ out: UnsafeMutablePointer<Float>, table: UnsafePointer<Float>, ks: UnsafePointer<Int32>, rows: Int, columns: Int) {
    acm_add_indexed_rows(out, table, ks, rows, columns)
}

/// out[i] = the half-precision `bits[i]` widened to Float, for i < count.
func widenHalves(_ bits: UnsafePointer<UInt16>, into out: UnsafeMutablePointer<Float>, count: Int) {
    acm_f16_to_f32(bits, out, count)
}

/// out[r·ldOut + j] = x[r] · w[j] for r < rows, j < outputs: rows of x (`ldx` apart) against rows of w (`ldw`
/// apart), k floats each, read where they lie (a few attention queries against their keys).
func dotRows(
    _ x: UnsafePointer<Float>, rows: Int, ldx: Int, w: UnsafePointer<Float>, ldw: Int, outputs: Int, k: Int,
    out: UnsafeMutablePointer<Float>, ldOut: Int
) {
    acm_dot_rows(x, rows, ldx, w, ldw, outputs, k, out, ldOut)
}

/// out[r] = Σ_j p[r, j]·v[j] for r < rows: rows of p (`ldp` apart) weighting n rows of v (`ldv` apart), k
/// floats each (a few attention queries' sums of their values).
func weightedRows(
    _ p: UnsafePointer<Float>, rows: Int, ldp: Int, v: UnsafePointer<Float>, ldv: Int, n: Int, k: Int,
    out: UnsafeMutablePointer<Float>, ldOut: Int
) {
    acm_weighted_rows(p, rows, ldp, v, ldv, n, k, out, ldOut)
}

/// out[r·ldOut + j] = x[r] · w[j] for r < rows, j < outputs, with w's rows of k halves.
func dotRowsHalf(
    _ x: UnsafePointer<Float>, rows: Int, ldx: Int, w: UnsafePointer<UInt16>, outputs: Int, k: Int,
    out: UnsafeMutablePointer<Float>, ldOut: Int
) {
    acm_dot_rows_f16(x, rows, ldx, w, outputs, k, out, ldOut)
}

/// out[i] = e^{x[i]} for doubles in [-700, 0] (a softmax's shifted logits), to about 1 ulp, vectorised.
public func expInPlace(_ x: UnsafePointer<Double>, out: UnsafeMutablePointer<Double>, count: Int) {
    acm_exp_f64(x, out, count)
}

/// For each of `rows` rows of `columns` values (`ld` apart): best[t] = offset + the index of its largest
/// value, the first of equal ones; histogram[c] (`columns` entries) += the rows whose index is c.
/// Returns Σ best[t].
@discardableResult
public func argmaxRows(
    _ x: UnsafePointer<Float>, rows: Int, columns: Int, ld: Int, offset: Int,
    best: UnsafeMutablePointer<Int32>, histogram: UnsafeMutablePointer<Int>
) -> Int {
    precondition(columns >= 1 && ld >= columns)
    return acm_argmax_rows(x, rows, columns, ld, Int32(offset), best, histogram)
}

/// The rows t with ks[t] ≥ `level` of `rows` rows of `columns` gate logits (`ld` apart), in order:
/// token[r] = t, survival[r] = Σ_{c ≥ top} p_t(c), p_t the row's softmax in double precision.
/// `scratch` holds 2·rows·columns doubles. Returns the number of such rows.
func reachingSurvival(
    _ x: UnsafePointer<Float>, rows: Int, columns: Int, ld: Int, ks: UnsafePointer<Int32>, level: Int, top: Int,
    scratch: UnsafeMutablePointer<Double>, survival: UnsafeMutablePointer<Double>, token: UnsafeMutablePointer<Int32>
) -> Int {
    acm_reaching_survival(x, rows, columns, ld, ks, Int32(level), top, scratch, survival, token)
}

/// ks[token[r]] += 1 for the `k` best of `count` rows r: the highest survival[r], ties to the smaller r
/// (the rows being in token order). The k-th best by a quickselect on a copy of the survivals (with AVX-512,
/// partitioned eight at a time by compress), then one pass in order: O(count) on average, where a sort of
/// the boundary level took a tenth of a capped forward pass. `scratch` holds `giveBestScratch(count)` doubles.
func giveBest(
    survival: UnsafePointer<Double>, token: UnsafePointer<Int32>, count: Int, _ k: Int,
    scratch: UnsafeMutablePointer<Double>, ks: UnsafeMutablePointer<Int32>
) {
    acm_give_best(survival, token, count, k, scratch, ks)
}

/// The doubles of scratch `giveBest` needs for `count` rows.
func giveBestScratch(_ count: Int) -> Int { 3 * (count + 8) }

/// LayerNorm over each row: (x − mean)/√(var + eps)·gamma + beta, variance biased as in PyTorch.
/// `out` may equal `x`.
public func layerNorm(
    _ x: UnsafePointer<Float>, rows: Int, columns d: Int,
    gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>, eps: Float,
    out: UnsafeMutablePointer<Float>
) {
    Parallel.forEachChunk(rows, minimumPerChunk: 64) { _, chunk in
        acm_layer_norm_rows(x + chunk.lowerBound * d, chunk.count, d, gamma, beta, eps, out + chunk.lowerBound * d)
    }
}

/// Softmax over each row of `rows` rows of length `n` (stride `ld`), in place, of the row times `scale`.
public func softmaxRows(_ x: UnsafeMutablePointer<Float>, rows: Int, n: Int, ld: Int, scale: Float = 1) {
    acm_softmax_rows(x, rows, n, ld, scale)
}

/// im2col for a convolution whose stride equals its kernel (a ViT's patch embedding): writes the
/// patches of `count` images [C, size, size] as rows [count·g², C·p·p], g = size/p, patches in row-major
/// grid order and each row in (channel, ky, kx) order, the layout of a conv weight [d, C, p, p]. The
/// embedding is then one GEMM: [count·g², C·p·p] × [C·p·p, d].
public func extractPatches(
    _ images: UnsafePointer<Float>, count: Int, channels c: Int, size: Int, patch p: Int,
    out: UnsafeMutablePointer<Float>
) {
    let g = size / p, patchLength = c * p * p
    for b in 0..<count {
        let image = images + b * c * size * size
        for gy in 0..<g {
            for gx in 0..<g {
                var dst = out + ((b * g + gy) * g + gx) * patchLength
                for ch in 0..<c {
                    for ky in 0..<p {
                        dst.update(from: image + (ch * size + gy * p + ky) * size + gx * p, count: p)
                        dst += p
                    }
                }
            }
        }
    }
}

/// Sets the calling thread to flush denormal float results to zero and read denormal inputs as zero (the SSE
/// control word's FTZ and DAZ bits); threads it creates afterwards inherit them. Real Fashion-MNIST images make
/// denormal activations that `acm-bench model`'s random ones do not, and the GEMMs' FMAs take a slow path on them:
/// `acm-serve evaluate` on the 10,000 test images at cap 0.25, batch 32, one core, ran 1,353 images/s without the
/// flush and 1,684-1,822 with it, against 1,870 for acm-bench's random batches either way (2026-12-02, Zen 3).
/// Values below 1.2e-38 move no result by anything the tolerances see.
public func flushDenormalsToZero() { acm_flush_denormals() }
