"""Quantizers that turn one float layer into a `compress.image.LayerImage`.

Methods (the real weight the hardware realises is always
``row_scale[r] * cb_scale * w_int[r, c]``; the per-row scale is never streamed,
it is folded into the row's requantization multiplier):

* ``int8``: per-output-channel symmetric. row_scale[r] = max|w_r| / 127,
  w_int = round(w / row_scale) in -127..127, cb_scale = 1.
* ``vq``: each row is divided by its RMS (so every row weighs the same in the
  clustering objective, which is what per-row relative error asks for; a max
  normalisation lets one outlier squash the rest of its row), cut into
  D-vectors along the input dimension (columns zero-padded to a multiple of D),
  clustered with k-means into K codewords; codewords are quantized to signed
  int8 with one codebook scale (max|codeword| / 127).
* ``ssvq``: the same on |w|: the codebook holds unsigned magnitudes quantized
  to 0..255 (cb_scale = max codeword / 255) and every weight keeps its own sign
  bit (1 = negative; padded columns 0), so signs are exact.

If some D-vectors are all zero (zero rows, pruned weights) codeword 0 is
reserved as an exact zero and k-means fits the other K-1 to the rest.
For vq and ssvq, after every vector is assigned to its nearest *quantized*
codeword, the per-row scale is refit by least squares
(row_scale = <w_r, q_r> / (cb_scale * <q_r, q_r>)); it costs nothing in the
stream because it lives in the multiplier.

Requantization (the formula sim/golden.py:requantize implements):
act_scale = p99.9(|calib_x|) / 127 and the int8 input is clip(round(x / act_scale));
out_scale = p99.9(|y|) / 127 over the calibration set, y being the output of the
compressed layer (int8-quantized input, dequantized weights, integer bias).
The 99.9th percentile rather than the maximum because transformer activations
carry a few outlier channels: scaling by the maximum leaves most int8 values at
0 (seen on MiniLM: 98% zero outputs in a layer); the outliers saturate instead.
The activation streamed with the layer is the calibration token of median norm,
a typical input rather than the [CLS] token.
the real multiplier row_scale*cb_scale*act_scale/out_scale is mult * 2**-shift
with mult a uint16 normalised into [2**15, 2**16) and shift in 1..63 (tiny
multipliers use shift 63 and a smaller mult; huge ones saturate at 65535, 1);
bias_int = round(b / (row_scale*cb_scale*act_scale)) clipped to int32.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from compress.image import LayerImage
from hw.config import MODES, ROW_SCALE_BITS, AccelConfig

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
CLIP_PERCENTILE = 99.9  # activation and output scales; see the module docstring


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
    point's nearest centroid. With n <= k (or at most k distinct points) the
    distinct points themselves are the centroids, the spare entries repeat the
    first one, and the clustering is exact.
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


# ------------------------------------------------------------------ helpers
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


def requantize_params(row_scale, cb_scale, act_scale, out_scale, bias):
    """(bias int32, mult uint16, shift uint8) for each row."""
    unit = np.asarray(row_scale, np.float64) * float(cb_scale) * float(act_scale)
    mult, shift = mult_shift(unit / float(out_scale))
    if bias is None:
        b = np.zeros(len(unit), np.int32)
    else:
        b = np.clip(np.rint(np.asarray(bias, np.float64) / unit), INT32_MIN, INT32_MAX)
        b = b.astype(np.int32)
    return b, mult, shift


def quantize_act(x: np.ndarray, act_scale: float) -> np.ndarray:
    return np.clip(np.rint(np.asarray(x, np.float64) / act_scale), -128, 127).astype(np.int8)


# ------------------------------------------------------------------ weights
def _quant_int8(w: np.ndarray):
    row_scale = _safe_scale(np.abs(w).max(axis=1).astype(np.float64) / 127.0)
    q = np.clip(np.rint(w / row_scale[:, None]), -127, 127).astype(np.int8)
    return {"weights": q}, row_scale, 1.0


def _quant_vq(w: np.ndarray, method: str, cfg: AccelConfig, seed: int):
    rows, cols = w.shape
    d, k = cfg.d, cfg.k
    v = -(-cols // d)
    rms = _safe_scale(np.sqrt(np.mean(np.square(w, dtype=np.float64), axis=1)))
    u = np.zeros((rows, v * d), np.float32)
    u[:, :cols] = w / rms[:, None]
    vecs = u.reshape(rows * v, d)
    signed = method == "vq"
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
    q = cb.astype(np.float64)[codes].reshape(rows, v * d)[:, :cols]
    fields = {"codebook": cb, "codes": codes.reshape(rows, v).astype(np.int32)}
    if not signed:
        neg = w < 0
        fields["signs"] = neg.astype(np.uint8)
        q = np.where(neg, -q, q)
    # least-squares refit of the per-row scale (free: it is folded into mult)
    num = np.sum(w.astype(np.float64) * q, axis=1)
    den = np.sum(q * q, axis=1) * cb_scale
    with np.errstate(divide="ignore", invalid="ignore"):
        fit = num / den
    row_scale = np.where(np.isfinite(fit) & (fit > 0), fit, rms)
    return fields, row_scale, cb_scale


def quantize_layer(name: str, w: np.ndarray, bias: np.ndarray | None, calib_x: np.ndarray,
                   method: str, cfg: AccelConfig, seed: int = 0) -> LayerImage:
    """Compresses one layer (w: rows=out x cols=in) with real calibration inputs
    calib_x (n, cols). See the module docstring for each method."""
    if method not in MODES:
        raise ValueError(f"layer {name}: method must be one of {MODES}, found {method!r}")
    w = np.asarray(w, np.float32)
    if w.ndim != 2:
        raise ValueError(f"layer {name}: expected a 2-D weight, found shape {w.shape}")
    rows, cols = w.shape
    cfg.check_shape(rows, cols, f"layer {name}")
    x = np.asarray(calib_x, np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != cols or len(x) == 0:
        raise ValueError(f"layer {name}: calibration expected (n, {cols}), found {x.shape}")
    if bias is not None:
        bias = np.asarray(bias, np.float32).reshape(-1)
        if bias.shape != (rows,):
            raise ValueError(f"layer {name}: bias expected ({rows},), found {bias.shape}")

    if method == "int8":
        fields, row_scale, cb_scale = _quant_int8(w)
    else:
        fields, row_scale, cb_scale = _quant_vq(w, method, cfg, seed)

    return image_from_fields(name, method, fields, row_scale, cb_scale, bias, x)


def image_from_fields(name: str, mode: str, fields: dict, row_scale, cb_scale: float,
                      bias: np.ndarray | None, calib_x: np.ndarray) -> LayerImage:
    """A LayerImage from integer weight fields (codebook/codes/signs or weights)
    and their scales, with the requantization derived from calibration inputs
    (see the module docstring). Post-training and trained compressors share it."""
    x = np.asarray(calib_x, np.float32)
    if x.ndim == 1:
        x = x[None]
    rows, cols = len(row_scale), x.shape[1]
    row_scale = np.asarray(row_scale, np.float64)
    amax = float(np.percentile(np.abs(x), CLIP_PERCENTILE))
    act_scale = amax / 127.0 if amax > 0 else 1.0
    typical = int(np.argsort(np.linalg.norm(x, axis=1))[len(x) // 2])
    img = LayerImage(name=name, mode=mode, rows=rows, cols=cols, bias=None, mult=None,
                     shift=None, act=quantize_act(x[typical], act_scale), **fields)
    img.scales = {"row_scale": row_scale, "cb_scale": cb_scale, "act_scale": act_scale}
    # output scale from the compressed layer's own output on the calibration set
    unit = row_scale * cb_scale * act_scale
    bias_int = requantize_params(row_scale, cb_scale, act_scale, 1.0, bias)[0]
    wdeq = torch.from_numpy(dequantize(img).astype(np.float32))
    xq = torch.from_numpy(quantize_act(x, act_scale).astype(np.float32) * np.float32(act_scale))
    y = (xq @ wdeq.T).numpy().astype(np.float64) + bias_int.astype(np.float64) * unit
    ymax = float(np.percentile(np.abs(y), CLIP_PERCENTILE))
    out_scale = ymax / 127.0 if ymax > 0 else 1.0
    img.bias, img.mult, img.shift = requantize_params(row_scale, cb_scale, act_scale,
                                                      out_scale, bias)
    img.scales = {"row_scale": np.asarray(row_scale, np.float64),
                  "cb_scale": float(cb_scale), "act_scale": float(act_scale),
                  "out_scale": float(out_scale)}
    return img


# ------------------------------------------------------------------ reference forward
def integer_weights(img: LayerImage) -> np.ndarray:
    """(rows, cols) int64 weights rebuilt from codebook/codes/signs or weights."""
    if img.mode == "int8":
        return np.asarray(img.weights, np.int64)
    cb = np.asarray(img.codebook, np.int64)
    codes = np.asarray(img.codes, np.int64)
    d = cb.shape[1]
    w = np.empty((img.rows, codes.shape[1] * d), np.int64)
    for j in range(d):                       # element j of every vector
        w[:, j::d] = cb[codes, j]
    w = w[:, : img.cols]
    if img.mode == "ssvq":
        w = w * (1 - 2 * np.asarray(img.signs, np.int64))
    return w


def integer_forward(img: LayerImage, act_int8: np.ndarray | None = None) -> np.ndarray:
    """Bit-exact integer output of the layer: int8 (rows,) for one (cols,)
    activation (default img.act), or (n, rows) for an (n, cols) batch.

    acc = W_int @ a (int64); y = ((acc + bias) * mult + 2**(shift-1)) >> shift,
    arithmetic shift, saturated to -128..127."""
    a = img.act if act_int8 is None else act_int8
    a = torch.as_tensor(np.asarray(a, np.int64))
    wt = torch.from_numpy(integer_weights(img))
    acc = a @ wt.T                                            # (..., rows) int64
    shift = torch.from_numpy(np.asarray(img.shift, np.int64))
    y = (acc + torch.from_numpy(np.asarray(img.bias, np.int64))) \
        * torch.from_numpy(np.asarray(img.mult, np.int64))
    y = torch.bitwise_right_shift(y + torch.bitwise_left_shift(torch.ones_like(shift), shift - 1),
                                  shift)
    return y.clamp(-128, 127).to(torch.int8).numpy()


def dequantize(img: LayerImage) -> np.ndarray:
    """Real weights (rows, cols) float32 the compressed layer stands for."""
    rs = np.asarray(img.scales["row_scale"], np.float64)
    return (rs[:, None] * float(img.scales["cb_scale"]) * integer_weights(img)).astype(np.float32)


def relative_error(w: np.ndarray, img: LayerImage) -> float:
    """||w - dequantize(img)||_F / ||w||_F."""
    w = np.asarray(w, np.float64)
    n = np.linalg.norm(w)
    return float(np.linalg.norm(w - dequantize(img)) / n) if n > 0 else 0.0


# ------------------------------------------------------------------ size
def bits_breakdown(cfg: AccelConfig, mode: str, rows: int, cols: int) -> dict:
    """Bits one layer costs as the format streams it (codes, signs and int8
    weights padded to whole weight blocks) plus ROW_SCALE_BITS per row for the
    row scale, from the cost model. Keys: codebook, codes, signs, weights,
    row_scale, total."""
    from sim.cost import layer_cost

    c = layer_cost(cfg, mode, rows, cols)
    out = {k: getattr(c, k) for k in ("codebook", "codes", "signs", "weights")}
    out["row_scale"] = ROW_SCALE_BITS * rows
    out["total"] = c.weight_side_bits
    return out


def bits_per_weight(img: LayerImage, cfg: AccelConfig) -> float:
    return bits_breakdown(cfg, img.mode, img.rows, img.cols)["total"] / (img.rows * img.cols)
