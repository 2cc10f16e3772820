"""Post-training quantizers: one float layer -> one `ssvq.image.LayerImage` of any
`ssvq.config.LayerConfig` the format allows.

The real weight the hardware realises is always
``row_scale[r] * cb_scale * W_int[r, c]`` with ``W_int = ssvq.reference.weight_matrix``;
the per-row scale is never streamed, it is folded into the row's requantization
multiplier.

* ``int<b>`` (b in 1, 2, 3, 4, 5, 6, 8), per-row symmetric scale s, cb_scale = 1:
  - int8: s = max|w_r| / 127, W_int = round(w / s) in -127..127 (as before v2);
  - int2..int6: W_int = clip(round(w / s), -2^(b-1), 2^(b-1)-1) with s = r * max|w_r| /
    (2^(b-1)-1), r the clipping ratio in linspace(0.2, 1, 40) with the least squared
    error of the row (`int_row_scale`; quantization-aware training starts from it too);
  - int1: W_int = +1 where w >= 0, -1 where w < 0; s = mean|w_r| (the least-squares
    scale of a sign pattern).
* ``vq-k<K>-d<D>`` (m = 1, no coefficients): each row is divided by its RMS (so every
  row weighs the same in the clustering objective; a max normalisation lets one
  outlier squash the rest of its row), cut into D-vectors along the input dimension
  (columns zero-padded to a multiple of D), clustered with k-means on all points into
  K codewords, quantized to signed 8-bit with one codebook scale (max|codeword| / 127).
* ``ssvq-k<K>-d<D>``: the same on |w|: unsigned magnitudes 0..255 (cb_scale = max
  codeword / 255), and every weight keeps its own sign bit (1 = negative), so signs
  are exact. If some D-vectors are all zero, codeword 0 is an exact zero and k-means
  fits the other K-1 to the rest.
* additive, m in {1, 2} codebooks and coef_bits c in 0..4 (vq or ssvq: `_quant_additive`):
  vector = sum_i coef_i * codebook_i[code_i].
  - c = 0, m = 2: residual VQ: stage 2 clusters what stage 1 leaves; a few alternating
    rounds re-fit each stage's codewords (means of their vectors' targets) and codes;
    both codebooks share the one 8-bit grid (max|codeword| / 127 or / 255). ssvq: the
    stage-2 magnitudes are kept >= 0 and its codeword 0 is an exact zero.
  - c > 0: gain-shape stages: each stage clusters the directions of its residual
    vectors (k-means), every codeword is stretched to the full 8-bit range (stage 1)
    or to the share of the range its gains need (stage 2, so both stages' coefficients
    use the same span), and the layer's grid step is set from a percentile of the
    stage-1 gains so that the coefficients use their whole signed range. Codes are
    picked per stage with their rounded least-squares coefficient, then the m
    coefficients of each vector are solved jointly by least squares and rounded
    (the best of the 2^m floor/ceil combinations, clipped to the coef_bits range).
    Coefficients carry the sign: internally the most positive value 2^(c-1) is used
    (codebook or, for ssvq, the sign bits negated once for the whole layer), so c = 1
    (values -1 and 0) is a plain codebook with an exact-zero option.
For every codebook mode the per-row scale is then refit by least squares
(row_scale = <w_r, q_r> / (cb_scale * <q_r, q_r>)); it costs nothing in the stream.

Requantization (ssvq.reference.requantize): the input (act_scale, act_zero) and the
per-row output scales come from the calibration rule of compress.calib (its module
doc: the input range searched for the least row-normalised output error, with a zero
point; per-row output scales, one for a layer feeding another). The int8 input is
compress.calib.quantize_act(x, act_scale, act_zero); the output y the compressed
layer computes on it (dequantized weights, integer bias). The activation streamed
with the layer is the calibration token of median norm. The real multiplier
row_scale*cb_scale*act_scale/out_scale[r] is mult * 2**-shift with mult a uint16
normalised into [2**15, 2**16) and shift in 1..63; bias_int = round(b / (row_scale *
cb_scale * act_scale)) - act_zero * sum_c W_int[r, c] (the zero point folded in,
exactly), clipped to int32.
"""
from __future__ import annotations

import contextlib

import numpy as np

from compress.calib import (act_params, choose_act, layer_out_scale, out_scales_per_row,
                           quantize_act)
from ssvq.config import ROW_SCALE_BITS, AccelConfig, LayerConfig
from ssvq.errors import ConfigError
from ssvq.image import LayerImage
from ssvq.reference import outputs, weight_matrix

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
GAIN_SHAPE_ITERS = 8      # Lloyd steps of the float gain-shape stages (additive with coefficients)


# ------------------------------------------------------------------ k-means
@contextlib.contextmanager
def _faiss_single_thread():
    """Layers are small (<0.5 s of k-means each); one OpenMP thread avoids the
    spin-wait collapse OpenMP suffers on a shared, oversubscribed machine."""
    import faiss
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield faiss
    finally:
        faiss.omp_set_num_threads(before)


def _nearest(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    with _faiss_single_thread() as faiss:
        index = faiss.IndexFlatL2(c.shape[1])
        index.add(np.ascontiguousarray(c, np.float32))
        _, idx = index.search(np.ascontiguousarray(x, np.float32), 1)
    return idx[:, 0].astype(np.int64)


def kmeans(x: np.ndarray, k: int, seed: int, niter: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """k-means on ALL n points (faiss otherwise subsamples to 256*k).

    Returns (centroids (k, d) float32, assign (n,) int64), assign being each
    point's nearest centroid. With at most k distinct points the distinct points
    themselves are the centroids, the spare entries repeat the first one, and the
    clustering is exact.
    """
    x = np.ascontiguousarray(np.asarray(x, np.float32))
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"kmeans: expected a non-empty (n, d) array, found shape {x.shape}")
    n, d = x.shape
    uniq = np.unique(x, axis=0)
    if len(uniq) <= k:
        cent = np.concatenate([uniq, np.repeat(uniq[:1], k - len(uniq), axis=0)])
        cent = np.ascontiguousarray(cent, np.float32)
        return cent, _nearest(x, cent)
    with _faiss_single_thread() as faiss:
        km = faiss.Kmeans(d, k, niter=niter, seed=int(seed) & 0x7FFFFFFF,
                          max_points_per_centroid=max(256, -(-n // k) + 1),
                          min_points_per_centroid=1, verbose=False,
                          init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS)
        km.train(x)
    cent = np.ascontiguousarray(km.centroids, np.float32).reshape(k, d)
    return cent, _nearest(x, cent)


# ------------------------------------------------------------------ requantization
def _safe_scale(s: np.ndarray) -> np.ndarray:
    """Per-row scales must be > 0 (bias is expressed in their units); all-zero
    rows borrow the mean scale of the other rows (or 1.0)."""
    s = np.asarray(s, np.float64).copy()
    good = np.isfinite(s) & (s > 0)
    s[~good] = s[good].mean() if good.any() else 1.0
    return s


def mult_shift(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Real multipliers m >= 0 as (mult uint16, shift uint8) with
    m ~= mult * 2**-shift, mult in [2**15, 2**16) where shift 1..63 allows."""
    m = np.asarray(m, np.float64)
    mult = np.zeros(m.shape, np.int64)
    shift = np.ones(m.shape, np.int64)
    pos = np.isfinite(m) & (m > 0)
    f, e = np.frexp(np.where(pos, m, 1.0))            # m = f * 2**e, f in [0.5, 1)
    mi = np.rint(f * 65536.0).astype(np.int64)
    sh = 16 - e.astype(np.int64)
    carry = mi == 65536
    mi[carry], sh[carry] = 32768, sh[carry] - 1
    small = sh > 63                                     # m < 2**-48: as precise as 63 allows
    mi[small] = np.rint(np.where(pos, m, 0.0)[small] * 2.0 ** 63).astype(np.int64)
    sh[small] = 63
    big = sh < 1                                        # m >= 2**15: saturate
    mi[big], sh[big] = 65535, 1
    mult[pos], shift[pos] = mi[pos], sh[pos]
    return mult.astype(np.uint16), shift.astype(np.uint8)


def requantize_params(row_scale, cb_scale, act_scale, out_scale, bias, w_int=None,
                      act_zero: int = 0):
    """(bias int32, mult uint16, shift uint8) for each row; out_scale one value or
    one per row. With act_zero, w_int (the integer weights) folds the zero point
    into the bias: -act_zero * sum_c w_int[r, c]."""
    unit = np.asarray(row_scale, np.float64) * float(cb_scale) * float(act_scale)
    mult, shift = mult_shift(unit / np.asarray(out_scale, np.float64))
    b = np.zeros(len(unit), np.int64) if bias is None else \
        np.rint(np.asarray(bias, np.float64) / unit).clip(INT32_MIN, INT32_MAX).astype(np.int64)
    if act_zero:
        b = b - int(act_zero) * np.asarray(w_int, np.int64).sum(axis=1)
    return np.clip(b, INT32_MIN, INT32_MAX).astype(np.int32), mult, shift


# ------------------------------------------------------------------ int-b
def int_range(bits: int) -> tuple[int, int]:
    """Integer weight range of an int-b image as this compressor fills it (int8
    keeps -127..127, symmetric, as the pre-v2 int8 images; int1 is -1/+1)."""
    if bits == 1:
        return -1, 1
    if bits == 8:
        return -127, 127
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def int_row_scale(w: np.ndarray, bits: int, grid: int = 40) -> np.ndarray:
    """Per-row scale of an int-b layer (module docstring), float64 (rows,)."""
    w = np.asarray(w, np.float64)
    if bits == 1:
        return _safe_scale(np.abs(w).mean(axis=1))
    amax = np.abs(w).max(axis=1)
    if bits == 8:
        return _safe_scale(amax / 127.0)
    qmin, qmax = int_range(bits)
    best = amax / qmax
    best_err = np.full(len(w), np.inf)
    for r in np.linspace(0.2, 1.0, grid):
        s = np.where(amax > 0, amax * r / qmax, 1.0)
        q = np.clip(np.rint(w / s[:, None]), qmin, qmax) * s[:, None]
        err = ((q - w) ** 2).sum(axis=1)
        better = err < best_err
        best, best_err = np.where(better, s, best), np.where(better, err, best_err)
    return _safe_scale(np.where(amax > 0, best, 0.0))


def int_weights(w: np.ndarray, bits: int, row_scale: np.ndarray) -> np.ndarray:
    """int-b weights for the given per-row scales (int1: the signs, 0 -> +1)."""
    w = np.asarray(w, np.float64)
    if bits == 1:
        return np.where(w < 0, -1, 1).astype(np.int8)
    lo, hi = int_range(bits)
    return np.clip(np.rint(w / np.asarray(row_scale, np.float64)[:, None]), lo, hi).astype(np.int8)


def _quant_int(w: np.ndarray, bits: int):
    row_scale = int_row_scale(w, bits)
    return {"weights": int_weights(w, bits, row_scale)}, row_scale, 1.0


# ------------------------------------------------------------------ vq / ssvq, m = 1
def _row_vectors(w: np.ndarray, d: int):
    """Rows divided by their RMS, zero-padded to V*d columns, as (rows*V, d)."""
    rows, cols = w.shape
    v = -(-cols // d)
    rms = _safe_scale(np.sqrt(np.mean(np.square(w, dtype=np.float64), axis=1)))
    u = np.zeros((rows, v * d), np.float32)
    u[:, :cols] = w / rms[:, None]
    return u.reshape(rows * v, d), rms, v


def _quant_vq(w: np.ndarray, lc: LayerConfig, seed: int):
    rows, cols = w.shape
    d, k = lc.d, lc.k
    vecs, rms, v = _row_vectors(w, d)
    signed = lc.mode == "vq"
    if not signed:
        vecs = np.abs(vecs)
    zero = ~vecs.any(axis=1)
    if zero.any() and not zero.all():
        # all-zero vectors (zero rows, pruned weights) get an exact zero codeword
        cent = np.concatenate([np.zeros((1, d), np.float32), kmeans(vecs[~zero], k - 1, seed)[0]])
    else:
        cent, _ = kmeans(vecs, k, seed)
    top = float(np.abs(cent).max())
    qmax = 127 if signed else 255
    cb_scale = top / qmax if top > 0 else 1.0
    cb = np.clip(np.rint(cent / cb_scale), -127 if signed else 0, qmax)
    codes = _nearest(vecs, (cb * cb_scale).astype(np.float32))   # nearest quantized codeword
    cb = cb.astype(np.int8 if signed else np.uint8)
    fields = {"codebook": cb, "codes": codes.reshape(rows, v, 1).astype(np.int32)}
    if not signed:
        fields["signs"] = (w < 0).astype(np.uint8)
    return fields, rms, cb_scale


# ------------------------------------------------------------------ additive
def _canonical(x: np.ndarray, signed: bool) -> np.ndarray:
    """Directions up to sign: flipped so that the largest-|.| element (vq) or the
    sum (ssvq, whose codewords are >= 0) is positive."""
    if signed:
        key = x[np.arange(len(x)), np.abs(x).argmax(axis=1)]
    else:
        key = x.sum(axis=1)
    return np.where(key[:, None] < 0, -x, x)


def _shape_codebook(r: np.ndarray, k: int, signed: bool, seed: int) -> np.ndarray:
    """k unit-max-abs shapes (float64) clustered from the directions of r's vectors."""
    d = r.shape[1]
    norm = np.linalg.norm(r, axis=1)
    nz = norm > 1e-12 * max(1.0, float(norm.max(initial=0.0)))
    if not nz.any():
        return np.zeros((k, d))
    x = _canonical(r[nz] / norm[nz, None], signed)
    cent, _ = kmeans(x, k, seed)
    cent = cent.astype(np.float64)
    if not signed:
        cent = np.maximum(cent, 0.0)
    top = np.abs(cent).max(axis=1, keepdims=True)
    return np.where(top > 0, cent / np.where(top > 0, top, 1.0), 0.0)


def _best_code(r: np.ndarray, cb: np.ndarray, g: float, lo: int, hi: int,
               chunk: int = 8192) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each vector of r: the codeword j and integer coefficient a in lo..hi
    minimising ||r - g * a * cb[j]||^2 (a = the rounded, clipped least-squares
    coefficient). Returns (codes, coefs, the chosen contribution g*a*cb[j])."""
    cb = np.asarray(cb, np.float64)
    nn = (cb * cb).sum(axis=1)                                    # (k,)
    inv = np.where(nn > 0, 1.0 / (g * np.where(nn > 0, nn, 1.0)), 0.0).astype(np.float32)
    gnn = (g * g * nn).astype(np.float32)
    cb32 = cb.astype(np.float32)
    codes = np.empty(len(r), np.int64)
    coefs = np.empty(len(r), np.int64)
    for i in range(0, len(r), chunk):
        dot = np.asarray(r[i:i + chunk], np.float32) @ cb32.T     # (n, k)
        a = np.rint(dot * inv)
        np.clip(a, lo, hi, out=a)
        err = a * gnn                                             # a * (g^2 a nn - 2 g dot):
        err *= a                                                  # the error minus ||x||^2
        err -= np.float32(2.0 * g) * a * dot
        j = err.argmin(axis=1)
        codes[i:i + chunk] = j
        coefs[i:i + chunk] = a[np.arange(len(j)), j]
    return codes, coefs, g * coefs[:, None] * cb[codes]


def _joint_coefs(t: np.ndarray, cw: np.ndarray, g: float, lo: int, hi: int,
                 start: np.ndarray) -> np.ndarray:
    """Per vector, the m integer coefficients (lo..hi) for the fixed codewords
    cw (n, m, d): least squares jointly over the m stages, then the best of the
    2^m floor/ceil roundings (clipped); `start` (n, m) is kept where it is better."""
    n, m, _ = cw.shape
    a = cw * g                                                    # (n, m, d)
    gram = np.einsum("nid,njd->nij", a, a)
    rhs = np.einsum("nid,nd->ni", a, t)
    gram = gram + np.eye(m)[None] * 1e-9 * (np.trace(gram, axis1=1, axis2=2)[:, None, None] + 1e-30)
    sol = np.linalg.solve(gram, rhs[..., None])[..., 0]           # (n, m)

    def err(c):
        return ((t - np.einsum("ni,nid->nd", c, a)) ** 2).sum(axis=1)

    best = np.asarray(start, np.float64)
    best_err = err(best)
    fl = np.floor(sol)
    for combo in range(1 << m):
        c = fl + np.array([(combo >> i) & 1 for i in range(m)], np.float64)[None]
        c = np.clip(c, lo, hi)
        e = err(c)
        better = e < best_err - 1e-12
        best = np.where(better[:, None], c, best)
        best_err = np.where(better, e, best_err)
    return best.astype(np.int64)


def _additive_no_coefs(t: np.ndarray, lc: LayerConfig, signed: bool, seed: int, rounds: int = 3):
    """Residual VQ (c = 0): m float codebooks, then one shared 8-bit grid."""
    k, d, m = lc.k, lc.d, lc.m
    n = len(t)
    qlo, qhi = (-127, 127) if signed else (0, 255)
    cbs, codes = [], np.zeros((n, m), np.int64)
    r = t.astype(np.float64)
    zero = ~(np.abs(t) > 0).any(axis=1)
    some_zero = bool(zero.any() and not zero.all())
    # codeword 0 of a stage is an exact zero when some vectors are all zero (zero rows,
    # pruned weights: they use it in every stage) and in ssvq's stage 2 ("no correction")
    reserve = [some_zero or (i > 0 and not signed) for i in range(m)]
    for i in range(m):
        if reserve[i]:
            c = np.concatenate([np.zeros((1, d)), kmeans(r[~zero] if some_zero else r, k - 1,
                                                         seed + i)[0]])
        else:
            c = kmeans(r, k, seed + i)[0].astype(np.float64)
        if not signed:
            c = np.maximum(c, 0.0)
        codes[:, i] = _nearest(r, c)
        cbs.append(c)
        r = r - c[codes[:, i]]
    # alternating refinement: each stage's codewords and codes against what the
    # other stages leave
    for _ in range(rounds):
        for i in range(m):
            others = sum(cbs[j][codes[:, j]] for j in range(m) if j != i)
            tgt = t - others
            codes[:, i] = _nearest(tgt, cbs[i])
            cnt = np.bincount(codes[:, i], minlength=k)
            sums = np.zeros((k, d))
            np.add.at(sums, codes[:, i], tgt)
            new = np.where(cnt[:, None] > 0, sums / np.maximum(cnt, 1)[:, None], cbs[i])
            if not signed:
                new = np.maximum(new, 0.0)
            if reserve[i]:
                new[0] = 0.0
            cbs[i] = new
    top = max(float(np.abs(c).max()) for c in cbs)
    g = top / qhi if top > 0 else 1.0
    icb = [np.clip(np.rint(c / g), qlo, qhi) for c in cbs]
    # final codes against the integer codebooks (alternating, from the float codes)
    for _ in range(2):
        for i in range(m):
            others = sum(icb[j][codes[:, j]] * g for j in range(m) if j != i)
            codes[:, i] = _nearest(t - others, icb[i] * g)
    if some_zero:
        codes[zero] = 0
    return np.concatenate(icb), codes, None, g


def _additive_coefs(t: np.ndarray, lc: LayerConfig, signed: bool, seed: int):
    """Gain-shape stages with per-vector coefficients (c > 0), see the module doc.
    Internal coefficients lie in -(2^(c-1)-1) .. 2^(c-1) (the negated range)."""
    k, m, c = lc.k, lc.m, lc.coef_bits
    lo, hi = -((1 << (c - 1)) - 1), 1 << (c - 1)
    qlo, qhi = (-127, 127) if signed else (0, 255)
    t = t.astype(np.float64)
    # float stages: shapes and gains
    shapes, gains = [], []
    r = t.copy()
    for i in range(m):
        s = _shape_codebook(r, k, signed, seed + i)
        r32 = r.astype(np.float32)
        for it in range(GAIN_SHAPE_ITERS + 1):
            nn = (s * s).sum(axis=1)
            inv = np.where(nn > 0, 1.0 / np.where(nn > 0, nn, 1.0), 0.0).astype(np.float32)
            fit = r32 @ s.astype(np.float32).T              # (n, k): dot, then dot^2 / nn
            np.square(fit, out=fit)
            fit *= inv
            j = fit.argmax(axis=1)
            gam = (r * s[j]).sum(axis=1) * inv[j]           # least-squares gain, float64
            if it == GAIN_SHAPE_ITERS:
                break
            # Lloyd step of gain-shape VQ: each shape the least-squares fit of its vectors
            num = np.zeros_like(s)
            np.add.at(num, j, gam[:, None] * r)
            den = np.bincount(j, weights=gam * gam, minlength=k)
            new = np.where(den[:, None] > 0, num / np.where(den > 0, den, 1)[:, None], s)
            if not signed:
                new = np.maximum(new, 0.0)
            top = np.abs(new).max(axis=1, keepdims=True)
            s = np.where(top > 0, new / np.where(top > 0, top, 1.0), s)
        shapes.append(s)
        gains.append(np.abs(gam))
        r = r - gam[:, None] * s[j]
    best = None
    for pct in (90.0, 99.0, 100.0):
        big = [float(np.percentile(gm[gm > 0], pct)) if (gm > 0).any() else 0.0 for gm in gains]
        if big[0] <= 0:
            continue
        g = big[0] / (qhi * hi)
        amp = [min(qhi, max(1.0, qhi * b / big[0])) for b in big]
        icb = [np.clip(np.rint(s * a), qlo, qhi) for s, a in zip(shapes, amp)]
        codes = np.zeros((len(t), m), np.int64)
        coefs = np.zeros((len(t), m), np.int64)
        contrib = [np.zeros_like(t) for _ in range(m)]
        for rnd in range(2):        # greedy, then once more against the other stage
            for i in range(m):
                tgt = t - sum(contrib[j] for j in range(m) if j != i)
                codes[:, i], coefs[:, i], contrib[i] = _best_code(tgt, icb[i], g, lo, hi)
            if m == 1:
                break
        cw = np.stack([icb[i][codes[:, i]] for i in range(m)], axis=1)     # (n, m, d)
        coefs = _joint_coefs(t, cw, g, lo, hi, coefs)
        err = float(((t - g * np.einsum("ni,nid->nd", coefs, cw)) ** 2).sum())
        if best is None or err < best[0]:
            best = (err, np.concatenate(icb), codes, coefs, g)
    if best is None:                 # every vector is zero
        return np.zeros((m * k, lc.d)), np.zeros((len(t), m), np.int64), \
            np.zeros((len(t), m), np.int64), 1.0
    _, cb, codes, coefs, g = best
    return cb, codes, coefs, g


def _quant_additive(w: np.ndarray, lc: LayerConfig, seed: int):
    rows, cols = w.shape
    vecs, rms, v = _row_vectors(w, lc.d)
    signed = lc.mode == "vq"
    t = vecs if signed else np.abs(vecs)
    if lc.coef_bits == 0:
        cb, codes, coefs, g = _additive_no_coefs(t, lc, signed, seed)
        neg_signs = False
    else:
        cb, codes, coefs, g = _additive_coefs(t, lc, signed, seed)
        coefs = -coefs                                  # internal range is the negated one
        neg_signs = not signed
        if signed:
            cb = -cb                                    # so coef * codeword is unchanged
    fields = {"codebook": cb.astype(np.int8 if signed else np.uint8),
              "codes": codes.reshape(rows, v, lc.m).astype(np.int32)}
    if coefs is not None:
        fields["coefs"] = coefs.reshape(rows, v, lc.m).astype(np.int8)
    if not signed:
        neg = w < 0
        fields["signs"] = (~neg if neg_signs else neg).astype(np.uint8)
    return fields, rms, g


# ------------------------------------------------------------------ layers
def _check_layer(name: str, w, bias, config: LayerConfig):
    if isinstance(config, str):
        config = LayerConfig.parse(config, f"layer {name}")
    if not isinstance(config, LayerConfig):
        raise ConfigError(f"layer {name}: expected a LayerConfig, found {config!r}")
    w = np.asarray(w, np.float32)
    if w.ndim != 2 or w.size == 0:
        raise ValueError(f"layer {name}: expected a non-empty 2-D weight, found shape {w.shape}")
    if config.mode != "int" and config.d > 64:
        raise ConfigError(f"layer {name}: {config.name}: d={config.d} is above 64")
    if bias is not None:
        bias = np.asarray(bias, np.float32).reshape(-1)
        if bias.shape != (w.shape[0],):
            raise ValueError(f"layer {name}: bias expected ({w.shape[0]},), found {bias.shape}")
    return w, bias, config


def quantize_weights(w: np.ndarray, config: LayerConfig, seed: int = 0, name: str = "layer"):
    """The weight side only: (fields, row_scale float64 (rows,), cb_scale) for
    `config` (see the module docstring). Quantization-aware training starts here."""
    w, _, config = _check_layer(name, w, None, config)
    if config.mode == "int":
        fields, rs, cs = _quant_int(w, config.bits)
        return fields, rs, cs
    if config.m == 1 and config.coef_bits == 0:
        fields, rms, cs = _quant_vq(w, config, seed)
    else:
        fields, rms, cs = _quant_additive(w, config, seed)
    # least-squares refit of the per-row scale (free: it is folded into mult)
    tmp = LayerImage(name, config, w.shape[0], w.shape[1], None, None, None, None, **fields)
    q = weight_matrix(tmp).astype(np.float64)
    num = np.sum(w.astype(np.float64) * q, axis=1)
    den = np.sum(q * q, axis=1) * cs
    with np.errstate(divide="ignore", invalid="ignore"):
        fit = num / den
    row_scale = np.where(np.isfinite(fit) & (fit > 0), fit, rms)
    if config.coef_bits:
        fields["coefs"] = _refit_coefs(w, fields, config, row_scale * cs)
    return fields, row_scale, cs


def _refit_coefs(w: np.ndarray, fields: dict, lc: LayerConfig, unit: np.ndarray) -> np.ndarray:
    """The coefficients once more, jointly by least squares and rounding, against the
    final per-row unit (row_scale * cb_scale); a vector keeps its coefficients unless
    others are better."""
    rows, cols = w.shape
    d, v = lc.d, fields["codes"].shape[1]
    t = np.zeros((rows, v * d))
    t[:, :cols] = w / unit[:, None]
    sign = np.ones((rows, v * d))
    if lc.mode == "ssvq":
        sign[:, :cols] = 1 - 2 * fields["signs"].astype(np.float64)
    cb = fields["codebook"].astype(np.float64)
    idx = fields["codes"].astype(np.int64) + np.arange(lc.m) * lc.k          # (rows, V, m)
    cw = cb[idx] * sign.reshape(rows, v, 1, d)                               # (rows, V, m, d)
    half = 1 << (lc.coef_bits - 1)
    start = fields["coefs"].astype(np.int64).reshape(-1, lc.m)
    c = _joint_coefs(t.reshape(-1, d), cw.reshape(-1, lc.m, d), 1.0, -half, half - 1, start)
    return c.reshape(rows, v, lc.m).astype(np.int8)


def quantize_layer(name: str, w: np.ndarray, bias: np.ndarray | None, calib_x: np.ndarray,
                   config: LayerConfig, seed: int = 0, source: LayerImage | None = None,
                   out_per_row: bool = True) -> LayerImage:
    """Compresses one layer (w: rows = out x cols = in) into `config` (a LayerConfig
    or its name, e.g. "ssvq-k256-d8") with real calibration inputs calib_x (n, cols).
    With `source` (an earlier layer image) the layer is chained behind it: its input
    scale is the source's output scale and its activation vector the source's int8
    outputs, so the two run back to back on the accelerator (`input_from`).
    out_per_row=False: one output scale (a layer that will be a source)."""
    w, bias, config = _check_layer(name, w, bias, config)
    cols = w.shape[1]
    x = np.asarray(calib_x, np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != cols or len(x) == 0:
        raise ValueError(f"layer {name}: calibration expected (n, {cols}), found {x.shape}")
    fields, row_scale, cb_scale = quantize_weights(w, config, seed, name)
    return image_from_fields(name, config, fields, row_scale, cb_scale, bias, x, source,
                             out_per_row)


def image_from_fields(name: str, config: LayerConfig, fields: dict, row_scale, cb_scale: float,
                      bias: np.ndarray | None, calib_x: np.ndarray,
                      source: LayerImage | None = None, out_per_row: bool = True
                      ) -> LayerImage:
    """A LayerImage from integer weight fields (codebook/codes/coefs/signs or weights)
    and their scales, with the requantization derived from calibration inputs by
    compress.calib's rule (module docstring). Post-training and trained compressors
    share it. out_per_row=False: one output scale (the layer's int8 outputs will be
    another layer's activations, `source` of the next)."""
    x = np.asarray(calib_x, np.float32)
    if x.ndim == 1:
        x = x[None]
    rows, cols = len(row_scale), x.shape[1]
    row_scale = np.asarray(row_scale, np.float64)
    img = LayerImage(name=name, config=config, rows=rows, cols=cols, bias=None, mult=None,
                     shift=None, act=None, **fields,
                     input_from=None if source is None else source.name)
    img.scales = {"row_scale": row_scale, "cb_scale": float(cb_scale)}
    wdeq = dequantize(img)
    if source is None:
        act_scale, act_zero = choose_act(x, wdeq)
        typical = int(np.argsort(np.linalg.norm(x, axis=1))[len(x) // 2])
        img.act = quantize_act(x[typical], act_scale, act_zero)
    else:       # the int8 values the source layer hands over, at its output scale
        if np.ndim(source.scales["out_scale"]) != 0:
            raise ValueError(f"layer {name}: its source {source.name} has one output scale "
                             f"per row; a source needs one (out_per_row=False)")
        act_scale, act_zero = float(source.scales["out_scale"]), 0
        img.act = outputs(source)
    img.scales.update(act_scale=float(act_scale), act_zero=int(act_zero))
    # output scales from the compressed layer's own output on the calibration set
    unit = row_scale * cb_scale * act_scale
    bias_q = requantize_params(row_scale, cb_scale, act_scale, 1.0, bias)[0]
    xq = (quantize_act(x, act_scale, act_zero).astype(np.float64) - act_zero) * act_scale
    y = (xq.astype(np.float32) @ wdeq.T).astype(np.float64) + bias_q.astype(np.float64) * unit
    out_scale = out_scales_per_row(y) if out_per_row else layer_out_scale(y)
    img.bias, img.mult, img.shift = requantize_params(
        row_scale, cb_scale, act_scale, out_scale, bias, weight_matrix(img), act_zero)
    img.scales["out_scale"] = out_scale
    return img


# ------------------------------------------------------------------ float views
def dequantize(img: LayerImage) -> np.ndarray:
    """Real weights (rows, cols) float32 the compressed layer stands for:
    row_scale * cb_scale * ssvq.reference.weight_matrix(img)."""
    rs = np.asarray(img.scales["row_scale"], np.float64)
    return (rs[:, None] * float(img.scales["cb_scale"]) * weight_matrix(img)).astype(np.float32)


def relative_error(w: np.ndarray, img: LayerImage) -> float:
    """||w - dequantize(img)||_F / ||w||_F."""
    w = np.asarray(w, np.float64)
    n = np.linalg.norm(w)
    return float(np.linalg.norm(w - dequantize(img)) / n) if n > 0 else 0.0


def float_outputs(img: LayerImage, x: np.ndarray) -> np.ndarray:
    """The integer layer (ssvq.reference.outputs) on float inputs x (n, cols):
    x quantized with the layer's act_scale and act_zero, int8 outputs times
    out_scale (one value or one per row)."""
    a = quantize_act(x, *act_params(img.scales))
    return outputs(img, a).astype(np.float64) * np.asarray(img.scales["out_scale"], np.float64)


# ------------------------------------------------------------------ size
def stream_base(mults: int = 32, bus: int = 64) -> AccelConfig:
    """The smallest valid build with these mults and bus: enough for stream
    geometry (which depends on nothing else) and to check the two numbers."""
    return AccelConfig(kmax=2, d_set=(1,), int_bits=(1,), modes=("int",), m_max=1,
                       coef_bits_max=0, mults=mults, bus=bus)


def layer_bits(config: LayerConfig, rows: int, cols: int, mults: int = 32,
               bus: int = 64) -> dict:
    """Bits one layer costs as the v2 stream carries it: the codebook and weight
    sections in whole beats (records laid end to end, the last beat padded), plus
    ROW_SCALE_BITS per row for the row scale a float model would store. Keys:
    codebook, codes, coefs, signs, weights (int), padding, row_scale, total."""
    if config.mode != "int" and config.d > mults:
        raise ConfigError(f"{config.name}: d={config.d} is above mults={mults}")
    geo = stream_base(mults, bus).geometry(config, rows, cols)
    groups = geo.records["weights"]
    out = {"codebook": geo.beats["codebook"] * bus,
           "codes": groups * geo.code_field_bits if config.mode != "int" else 0,
           "coefs": groups * geo.coef_field_bits,
           "signs": groups * geo.sign_field_bits,
           "weights": groups * geo.group_bits if config.mode == "int" else 0}
    streamed = (geo.beats["codebook"] + geo.beats["weights"]) * bus
    out["padding"] = streamed - sum(out.values())
    out["row_scale"] = ROW_SCALE_BITS * rows
    out["total"] = streamed + out["row_scale"]
    return out
