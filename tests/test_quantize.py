"""compress.quantize: every layer configuration's core rule against a computation
written here (rounding and clipping by hand, additive reconstruction with explicit
loops, least-squares coefficients), k-means, requantization, sizes."""
import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from compress.calib import act_params  # noqa: E402
from compress.quantize import (dequantize, int_row_scale, kmeans, layer_bits,  # noqa: E402
                               mult_shift, quantize_act, quantize_layer, relative_error)
from ssvq.config import AccelConfig, LayerConfig  # noqa: E402
from ssvq.image import pack_layer, unpack_layer, validate_layer  # noqa: E402
from ssvq.reference import outputs, weight_matrix  # noqa: E402

ROWS, COLS = 37, 45
LC = LayerConfig.parse
CODEBOOK = ["vq-k16-d4", "ssvq-k16-d4", "vq-k256-d8", "ssvq-k256-d8"]
ADDITIVE = ["vq-k16-d8-m2", "ssvq-k16-d8-m2", "vq-k16-d8-c4", "vq-k16-d4-m2-c4",
            "ssvq-k16-d8-m2-c4", "ssvq-k8-d4-c2", "vq-k16-d8-c1", "ssvq-k16-d8-c1",
            "vq-k4-d2-m2-c3"]
INTS = ["int1", "int2", "int3", "int4", "int5", "int6", "int8"]
ALL = INTS + CODEBOOK + ADDITIVE


def _layer(seed=0, rows=ROWS, cols=COLS):
    rng = np.random.default_rng(seed)
    # rows of very different magnitude, so per-row scaling matters
    w = (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 2.0, (rows, 1))).astype(np.float32)
    b = (rng.standard_normal(rows) * 0.3).astype(np.float32)
    x = rng.standard_normal((300, cols)).astype(np.float32)
    return w, b, x


def _cfg(lc, rows=ROWS, cols=COLS):
    return AccelConfig.covering([(lc, rows, cols)])


# ------------------------------------------------------------------ int-b
def test_int8_per_channel_error_bound():
    w, b, x = _layer(1)
    img = quantize_layer("t", w, b, x, LC("int8"))
    s = np.abs(w).max(axis=1).astype(np.float64) / 127.0          # independent row scale
    np.testing.assert_allclose(img.scales["row_scale"], s, rtol=1e-12)
    q = img.weights.astype(np.float64)
    assert img.weights.dtype == np.int8 and np.abs(q).max() <= 127
    err = np.abs(w - s[:, None] * q)
    assert (err <= s[:, None] / 2 * (1 + 1e-5)).all()
    np.testing.assert_allclose(dequantize(img), s[:, None] * q, rtol=1e-6)
    assert (np.abs(q).max(axis=1) == 127).all()                   # every row its full range


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6])
def test_int_b_rounds_and_clips_by_hand(bits):
    w, b, x = _layer(2)
    img = quantize_layer("t", w, b, x, LC(f"int{bits}"))
    assert img.config == LayerConfig("int", bits=bits)
    s = img.scales["row_scale"]
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    for r in range(0, ROWS, 5):
        for c in range(COLS):
            want = min(hi, max(lo, int(np.floor(float(w[r, c]) / s[r] + 0.5))))
            assert img.weights[r, c] == want, (r, c)
    np.testing.assert_allclose(dequantize(img), s[:, None] * img.weights, rtol=1e-6)
    # the chosen scale is never worse than plain max scaling (max|w_r| / hi)
    smax = np.abs(w.astype(np.float64)).max(axis=1) / hi
    qmax = np.clip(np.floor(w / smax[:, None] + 0.5), lo, hi) * smax[:, None]
    err_max = ((qmax - w) ** 2).sum(axis=1)
    err = ((dequantize(img).astype(np.float64) - w) ** 2).sum(axis=1)
    assert (err <= err_max * (1 + 1e-6) + 1e-12).all()
    assert img.weights.min() >= lo and img.weights.max() <= hi
    validate_layer(img, _cfg(img.config))


def test_int1_is_sign_times_mean_magnitude():
    w, b, x = _layer(3)
    w[0, :5] = 0.0
    img = quantize_layer("t", w, b, x, LC("int1"))
    want = np.array([[1 if v >= 0 else -1 for v in row] for row in w])
    np.testing.assert_array_equal(img.weights, want)
    np.testing.assert_allclose(img.scales["row_scale"],
                               [np.mean(np.abs(row.astype(np.float64))) for row in w],
                               rtol=1e-9)
    validate_layer(img, _cfg(img.config))


def test_int_row_scale_of_a_zero_row_is_positive():
    w = np.zeros((3, 8))
    w[1] = np.arange(8) - 3.5
    for bits in (1, 2, 4, 8):
        s = int_row_scale(w, bits)
        assert (s > 0).all()


# ------------------------------------------------------------------ ssvq / vq
@pytest.mark.parametrize("name", ["ssvq-k16-d4", "ssvq-k256-d8"])
def test_ssvq_signs_exact_and_magnitudes_from_codebook(name):
    lc = LC(name)
    w, b, x = _layer(2)
    img = quantize_layer("t", w, b, x, lc)
    np.testing.assert_array_equal(img.signs, (w < 0).astype(np.uint8))
    assert img.codebook.shape == (lc.k, lc.d) and img.codebook.dtype == np.uint8
    assert img.codes.shape == (ROWS, -(-COLS // lc.d), 1)
    assert img.codes.min() >= 0 and img.codes.max() < lc.k
    # magnitude of weight (r, c) is element c % d of codeword codes[r, c // d]
    r, c = np.meshgrid(np.arange(ROWS), np.arange(COLS), indexing="ij")
    mag = img.codebook[img.codes[r, c // lc.d, 0], c % lc.d].astype(np.float64)
    deq = dequantize(img).astype(np.float64)
    unit = img.scales["row_scale"][:, None] * img.scales["cb_scale"]
    np.testing.assert_allclose(np.abs(deq), mag * unit, rtol=1e-6)
    nz = deq != 0
    assert (np.sign(deq[nz]) == np.sign(w[nz])).all()
    assert img.codebook.max() == 255                    # the 8-bit range is used
    validate_layer(img, _cfg(lc))


def test_vq_codebook_is_signed_int8_and_reconstructs():
    w, b, x = _layer(3)
    img = quantize_layer("t", w, b, x, LC("vq-k16-d4"))
    assert img.codebook.dtype == np.int8 and img.codebook.shape == (16, 4)
    assert img.codebook.min() < 0 < img.codebook.max() and np.abs(img.codebook).max() == 127
    assert img.signs is None and img.coefs is None
    r, c = np.meshgrid(np.arange(ROWS), np.arange(COLS), indexing="ij")
    wint = img.codebook[img.codes[r, c // 4, 0], c % 4].astype(np.float64)
    np.testing.assert_allclose(dequantize(img),
                               img.scales["row_scale"][:, None] * img.scales["cb_scale"] * wint,
                               rtol=1e-6)
    assert relative_error(w, img) < 0.8


def test_ssvq_nearly_lossless_when_k_covers_every_vector():
    # 37 rows x 6 vectors = 222 <= 256 codewords: only the 8-bit codebook rounds
    w, b, x = _layer(4)
    img = quantize_layer("t", w, b, x, LC("ssvq-k256-d8"))
    assert relative_error(w, img) < 0.01


# ------------------------------------------------------------------ additive
def _by_loops(img):
    """W_int with explicit loops over rows, columns and codebooks (no numpy
    indexing tricks): sum_i coef * codebook_i[code_i][j], negated by the sign bit."""
    lc = img.config
    out = np.zeros((img.rows, img.cols), np.int64)
    for r in range(img.rows):
        for c in range(img.cols):
            v, j = c // lc.d, c % lc.d
            total = 0
            for i in range(lc.m):
                code = int(img.codes[r, v, i])
                coef = int(img.coefs[r, v, i]) if lc.coef_bits else 1
                total += coef * int(img.codebook[i * lc.k + code, j])
            if lc.mode == "ssvq" and img.signs[r, c]:
                total = -total
            out[r, c] = total
    return out


@pytest.mark.parametrize("name", ADDITIVE)
def test_additive_reconstruction_by_explicit_loops(name):
    lc = LC(name)
    w, b, x = _layer(5, rows=11, cols=21)
    img = quantize_layer("t", w, b, x, lc)
    assert img.config == lc
    v = -(-21 // lc.d)
    assert img.codebook.shape == (lc.m * lc.k, lc.d)
    assert img.codes.shape == (11, v, lc.m) and 0 <= img.codes.min() and img.codes.max() < lc.k
    wint = _by_loops(img)
    np.testing.assert_array_equal(weight_matrix(img), wint)
    unit = img.scales["row_scale"][:, None] * img.scales["cb_scale"]
    np.testing.assert_allclose(dequantize(img), unit * wint, rtol=1e-5, atol=1e-7)
    validate_layer(img, _cfg(lc, 11, 21))
    if lc.coef_bits:
        lo, hi = -(2 ** (lc.coef_bits - 1)), 2 ** (lc.coef_bits - 1) - 1
        assert img.coefs.shape == (11, v, lc.m)
        assert lo <= img.coefs.min() and img.coefs.max() <= hi
    else:
        assert img.coefs is None
    if lc.mode == "ssvq":
        assert img.codebook.dtype == np.uint8
    else:
        assert img.codebook.dtype == np.int8


@pytest.mark.parametrize("name", ["vq-k16-d4-m2-c4", "ssvq-k16-d8-m2-c4", "vq-k16-d8-c4"])
def test_coefficients_are_rounded_least_squares_and_use_their_range(name):
    """Per vector, with the codes as chosen, no integer coefficients from rounding the
    least-squares solution (computed here with lstsq) reconstruct it better; the
    coefficients and the codewords use their signed ranges."""
    lc = LC(name)
    w, b, x = _layer(6, rows=40, cols=64)
    img = quantize_layer("t", w, b, x, lc)
    lo, hi = -(2 ** (lc.coef_bits - 1)), 2 ** (lc.coef_bits - 1) - 1
    assert img.coefs.min() == lo or img.coefs.max() == hi          # the range is used
    top = 255 if lc.mode == "ssvq" else 127
    assert np.abs(img.codebook.astype(int)).max() == top           # so is the codeword range
    rs, cs = img.scales["row_scale"], img.scales["cb_scale"]
    worse = 0
    for r in range(0, 40, 3):
        for v in range(64 // lc.d):
            cols = slice(v * lc.d, (v + 1) * lc.d)
            sign = 1 - 2 * img.signs[r, cols].astype(int) if lc.mode == "ssvq" else 1
            # target in codeword units; columns: each stage's codeword (with the signs)
            t = w[r, cols].astype(np.float64) / (rs[r] * cs)
            a = np.stack([sign * img.codebook[i * lc.k + img.codes[r, v, i]].astype(float)
                          for i in range(lc.m)], axis=1)
            ls = np.linalg.lstsq(a, t, rcond=None)[0]
            chosen = img.coefs[r, v].astype(float)
            err = ((a @ chosen - t) ** 2).sum()
            rounded = np.clip(np.rint(ls), lo, hi)
            worse += err > ((a @ rounded - t) ** 2).sum() + 1e-9
    assert worse == 0


def test_more_stages_and_coefficients_lower_the_error():
    w, b, x = _layer(7, rows=64, cols=64)
    e = {n: relative_error(w, quantize_layer("t", w, b, x, LC(n)))
         for n in ("vq-k16-d8", "vq-k16-d8-m2", "vq-k16-d8-c4", "vq-k16-d8-m2-c4",
                   "ssvq-k16-d8", "ssvq-k16-d8-m2-c4")}
    assert e["vq-k16-d8-m2"] < e["vq-k16-d8"]
    assert e["vq-k16-d8-c4"] < e["vq-k16-d8"]
    assert e["vq-k16-d8-m2-c4"] < min(e["vq-k16-d8-m2"], e["vq-k16-d8-c4"])
    assert e["ssvq-k16-d8-m2-c4"] < e["ssvq-k16-d8"]


# ------------------------------------------------------------------ every mode
@pytest.mark.parametrize("name", ALL)
def test_zero_row_and_no_bias(name):
    w, _, x = _layer(5)
    w[3] = 0
    img = quantize_layer("t", w, None, x, LC(name))
    validate_layer(img, _cfg(img.config))
    # no bias but the input zero point's, -act_zero * sum_c W_int[r, c]
    z = img.scales["act_zero"]
    assert (img.bias == -z * weight_matrix(img).astype(np.int64).sum(axis=1)).all()
    if img.config.mode != "int" or img.config.bits > 1:
        assert (dequantize(img)[3] == 0).all()
    assert outputs(img)[3] == 0 or img.config.bits == 1


def test_deterministic_for_a_seed():
    w, b, x = _layer(6)
    for name in ("ssvq-k16-d4", "vq-k16-d4-m2-c4"):
        a = quantize_layer("t", w, b, x, LC(name), seed=3)
        c = quantize_layer("t", w, b, x, LC(name), seed=3)
        np.testing.assert_array_equal(a.codes, c.codes)
        np.testing.assert_array_equal(a.codebook, c.codebook)


def _requant_by_hand(acc, bias, mult, shift):
    """floor(((acc + bias) * mult + 2^(shift-1)) / 2^shift), saturated, in Python ints."""
    y = ((int(acc) + int(bias)) * int(mult) + (1 << (int(shift) - 1))) // (1 << int(shift))
    return max(-128, min(127, y))


@pytest.mark.parametrize("name", ["int8", "int4", "int1", "vq-k16-d4", "ssvq-k256-d8",
                                  "vq-k16-d4-m2-c4", "ssvq-k16-d8-m2-c4", "ssvq-k16-d8-m2"])
def test_outputs_by_hand_and_through_the_stream(name):
    w, b, x = _layer(7)
    img = quantize_layer("t", w, b, x, LC(name))
    cfg = _cfg(img.config)
    dec = unpack_layer(pack_layer(img, cfg)[0], cfg)
    acts = quantize_act(x[1:40], *act_params(img.scales))
    batch = outputs(img, acts)
    assert batch.shape == (39, ROWS) and batch.dtype == np.int8
    np.testing.assert_array_equal(outputs(dec, acts), batch)
    np.testing.assert_array_equal(outputs(dec), outputs(img))
    wint = weight_matrix(img)
    for i in (0, 17, 38):
        for r in (0, 5, 36):
            acc = sum(int(wint[r, c]) * int(acts[i, c]) for c in range(COLS))
            assert batch[i, r] == _requant_by_hand(acc, img.bias[r], img.mult[r], img.shift[r])


def _float_vs_int(name, seed=8):
    w, b, x = _layer(seed)
    img = quantize_layer("t", w, b, x, LC(name))
    xs = x[:100]
    yi = outputs(img, quantize_act(xs, *act_params(img.scales))).astype(np.float64)
    yf = xs.astype(np.float64) @ w.T.astype(np.float64) + b
    return np.corrcoef((yi * img.scales["out_scale"]).ravel(), yf.ravel())[0, 1]


def test_integer_outputs_track_the_float_layer():
    assert _float_vs_int("int8") > 0.95
    assert _float_vs_int("ssvq-k256-d8") > 0.95
    assert _float_vs_int("ssvq-k16-d4-m2-c4") > 0.9


@pytest.mark.parametrize("skew", [0.0, 2.0])
def test_requantization_parameters(skew):
    """The image's requantization from its own scales, worked out here: the
    zero point folded into the bias, per-row output scales from the calibration
    outputs' maxima (compress.calib's rule chooses the scales; tests/test_calib_rule.py)."""
    w, b, x = _layer(9)
    x = x + np.float32(skew) * np.abs(x)           # skew 2: one-sided, zero point far from 0
    img = quantize_layer("t", w, b, x, LC("ssvq-k16-d4"))
    sc = img.scales
    s, z = sc["act_scale"], sc["act_zero"]
    assert (z < -40) if skew else (abs(z) <= 10)
    a = np.clip(np.rint(x.astype(np.float64) / s) + z, -128, 127)
    typical = np.argsort(np.linalg.norm(x, axis=1))[len(x) // 2]
    np.testing.assert_array_equal(img.act, a[typical])
    m = sc["row_scale"] * sc["cb_scale"] * s / sc["out_scale"]
    mult, shift = img.mult.astype(np.float64), img.shift.astype(np.int64)
    assert ((mult >= 2 ** 15) & (mult < 2 ** 16)).all() and ((shift >= 1) & (shift <= 63)).all()
    np.testing.assert_allclose(mult * 2.0 ** -shift, m, rtol=2 ** -15)
    unit = sc["row_scale"] * sc["cb_scale"] * s
    wint = weight_matrix(img).astype(np.int64)
    folded = img.bias.astype(np.int64) + z * wint.sum(axis=1)      # the bias before the fold
    assert (np.abs(folded - b / unit) <= 0.5 + 1e-6).all()
    # out_scale[r]: the largest |output| of row r on the calibration set / 127
    y = ((a - z) * s) @ dequantize(img).astype(np.float64).T + np.rint(b / unit) * unit
    np.testing.assert_allclose(sc["out_scale"], np.abs(y).max(axis=0) / 127, rtol=1e-5)
    # so every row reaches the int8 range's end on calibration, and only there
    yq = outputs(img, a.astype(np.int8)).astype(int)
    assert set(np.abs(yq).max(axis=0)) <= {126, 127, 128}


def test_mult_shift_edges():
    mult, shift = mult_shift(np.array([0.0, 1.0, 0.75, 1e-20, 1e6, 2.0 ** -40]))
    assert (mult[0], shift[0]) == (0, 1)
    assert (mult[1], shift[1]) == (32768, 15)
    assert (mult[2], shift[2]) == (49152, 16)
    assert shift[3] == 63 and mult[3] == 0
    assert (mult[4], shift[4]) == (65535, 1)
    assert (mult[5], shift[5]) == (32768, 55)
    assert mult.dtype == np.uint16 and shift.dtype == np.uint8


def test_bad_calibration_and_shapes():
    w, b, x = _layer(10)
    with pytest.raises(ValueError, match=r"calibration expected \(n, 45\)"):
        quantize_layer("t", w, b, x[:, :44], LC("int8"))
    with pytest.raises(ValueError, match="bias expected"):
        quantize_layer("t", w, b[:5], x, LC("int8"))


# ------------------------------------------------------------------ k-means
def test_kmeans_trains_on_all_points():
    """Every centroid is the mean of ALL the points assigned to it. With
    n = 2000*k faiss' default would train on 256*k points only and miss the
    full means by ~sigma/16, far outside the tolerance."""
    rng = np.random.default_rng(0)
    k, n = 4, 8000
    centers = np.array([[0, 0], [20, 0], [0, 20], [20, 20]], np.float32)
    x = (centers[rng.integers(0, k, n)] + rng.standard_normal((n, 2))).astype(np.float32)
    cent, assign = kmeans(x, k, seed=0)
    assert cent.shape == (k, 2) and cent.dtype == np.float32
    assert assign.shape == (n,) and assign.dtype == np.int64
    for j in range(k):
        assert (assign == j).sum() > 1000
        np.testing.assert_allclose(cent[j], x[assign == j].mean(axis=0, dtype=np.float64),
                                   atol=1e-3)
    dist = ((x[:, None, :] - cent[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(assign, dist.argmin(axis=1))


def test_kmeans_fewer_points_than_k():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    cent, assign = kmeans(x, 16, seed=0)
    assert cent.shape == (16, 3)
    assert assign.min() >= 0 and assign.max() < 16
    np.testing.assert_array_equal(cent[assign], x)


def test_kmeans_duplicate_points():
    x = np.repeat(np.array([[1, 2], [3, 4], [5, 6]], np.float32), 100, axis=0)
    cent, assign = kmeans(x, 8, seed=0)
    np.testing.assert_array_equal(cent[assign], x)


# ------------------------------------------------------------------ sizes
def test_bits_hand_computed():
    # 37 x 45, mults 32, bus 64: G = 2 groups per row, 74 weight-group records laid end
    # to end, the section padded to whole 64-bit beats; 16 bits per row scale (592).
    # ssvq k16 d4: 8 lanes x 4-bit codes + 32 sign bits = 64-bit groups -> 4736 bits;
    # codebook 16 x 4 x 8 = 512 bits.
    assert layer_bits(LC("ssvq-k16-d4"), 37, 45)["total"] == 4736 + 512 + 592
    # int3: 96-bit groups, 74 x 96 = 7104 = 111 beats exactly; int1: 32-bit groups
    assert layer_bits(LC("int3"), 37, 45)["total"] == 7104 + 592
    assert layer_bits(LC("int1"), 37, 45)["total"] == 74 * 32 + 592
    # vq k16 d8 m2 c4: 4 lanes x 2 x (4 + 4) = 64-bit groups; codebook 2 x 16 x 8 x 8
    b = layer_bits(LC("vq-k16-d8-m2-c4"), 37, 45)
    assert b["total"] == 4736 + 2048 + 592
    assert (b["codes"], b["coefs"], b["signs"]) == (74 * 32, 74 * 32, 0)
    # int5: 160-bit groups, 74 x 160 = 11840 bits -> 185 beats exactly; bus 128 pads
    assert layer_bits(LC("int5"), 37, 45)["total"] == 11840 + 592
    assert layer_bits(LC("int5"), 37, 45, bus=128)["total"] == 93 * 128 + 592


@pytest.mark.parametrize("name", ["int8", "int3", "vq-k16-d4", "ssvq-k256-d8",
                                  "vq-k16-d8-m2-c4", "ssvq-k16-d4-m2-c2"])
@pytest.mark.parametrize("bus", [64, 128])
def test_bits_match_streamed_sections(name, bus):
    w, b, x = _layer(11)
    lc = LC(name)
    img = quantize_layer("t", w, b, x, lc)
    cfg = AccelConfig.covering([(lc, ROWS, COLS)], base=AccelConfig(bus=bus))
    _, sec = pack_layer(img, cfg)
    streamed = (sec["codebook"][1] + sec["weights"][1]) * bus
    assert layer_bits(lc, ROWS, COLS, bus=bus)["total"] == streamed + 16 * ROWS
