"""compress.quantize: quantizers, k-means, integer reference forward, sizes."""
import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from compress.image import pack_layer, unpack_layer, validate_layer  # noqa: E402
from compress.quantize import (bits_breakdown, bits_per_weight, dequantize,  # noqa: E402
                               integer_forward, kmeans, mult_shift, quantize_act,
                               quantize_layer, relative_error)
from hw.config import AccelConfig  # noqa: E402
from sim.golden import outputs  # noqa: E402

CFGS = {"k16d4": AccelConfig(k=16, d=4), "k256d8": AccelConfig(k=256, d=8)}
ROWS, COLS = 37, 45


def _layer(seed=0, rows=ROWS, cols=COLS):
    rng = np.random.default_rng(seed)
    # rows of very different magnitude, so per-row scaling matters
    w = (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 2.0, (rows, 1))).astype(np.float32)
    b = (rng.standard_normal(rows) * 0.3).astype(np.float32)
    x = rng.standard_normal((300, cols)).astype(np.float32)
    return w, b, x


# ------------------------------------------------------------------ int8
def test_int8_per_channel_error_bound():
    w, b, x = _layer(1)
    img = quantize_layer("t", w, b, x, "int8", CFGS["k16d4"])
    s = np.abs(w).max(axis=1).astype(np.float64) / 127.0          # independent row scale
    np.testing.assert_allclose(img.scales["row_scale"], s, rtol=1e-12)
    q = img.weights.astype(np.float64)
    assert img.weights.dtype == np.int8 and np.abs(q).max() <= 127
    err = np.abs(w - s[:, None] * q)
    assert (err <= s[:, None] / 2 * (1 + 1e-5)).all()
    np.testing.assert_allclose(dequantize(img), s[:, None] * q, rtol=1e-6)
    # every row uses its full range
    assert (np.abs(q).max(axis=1) == 127).all()


# ------------------------------------------------------------------ ssvq / vq
@pytest.mark.parametrize("cfg", CFGS.values(), ids=CFGS.keys())
def test_ssvq_signs_exact_and_magnitudes_from_codebook(cfg):
    w, b, x = _layer(2)
    img = quantize_layer("t", w, b, x, "ssvq", cfg)
    assert img.signs.shape == (ROWS, COLS)
    np.testing.assert_array_equal(img.signs, (w < 0).astype(np.uint8))
    assert img.codebook.shape == (cfg.k, cfg.d) and img.codebook.dtype == np.uint8
    assert img.codes.shape == (ROWS, -(-COLS // cfg.d))
    assert img.codes.min() >= 0 and img.codes.max() < cfg.k
    # magnitude of weight (r, c) is element c % d of codeword codes[r, c // d]
    r, c = np.meshgrid(np.arange(ROWS), np.arange(COLS), indexing="ij")
    mag = img.codebook[img.codes[r, c // cfg.d], c % cfg.d].astype(np.float64)
    deq = dequantize(img).astype(np.float64)
    unit = img.scales["row_scale"][:, None] * img.scales["cb_scale"]
    np.testing.assert_allclose(np.abs(deq), mag * unit, rtol=1e-6)
    nz = deq != 0
    assert (np.sign(deq[nz]) == np.sign(w[nz])).all()
    # and the format's own weight matrix agrees
    np.testing.assert_allclose(deq, unit * img.weight_matrix(), rtol=1e-6)
    validate_layer(img, cfg)


def test_vq_codebook_is_signed_int8_and_reconstructs():
    cfg = CFGS["k16d4"]
    w, b, x = _layer(3)
    img = quantize_layer("t", w, b, x, "vq", cfg)
    assert img.codebook.dtype == np.int8 and img.codebook.shape == (16, 4)
    assert img.codebook.min() < 0 < img.codebook.max()
    assert img.signs is None
    # vector j of row r (zero-padded) is approximated by codeword codes[r, j]
    r, c = np.meshgrid(np.arange(ROWS), np.arange(COLS), indexing="ij")
    wint = img.codebook[img.codes[r, c // 4], c % 4].astype(np.float64)
    np.testing.assert_allclose(dequantize(img),
                               img.scales["row_scale"][:, None] * img.scales["cb_scale"] * wint,
                               rtol=1e-6)
    assert relative_error(w, img) < 0.8


def test_ssvq_nearly_lossless_when_k_covers_every_vector():
    # 37 rows x 6 vectors = 222 <= 256 codewords: only the 8-bit codebook rounds
    w, b, x = _layer(4)
    img = quantize_layer("t", w, b, x, "ssvq", CFGS["k256d8"])
    assert relative_error(w, img) < 0.01


def test_zero_row_and_no_bias():
    w, _, x = _layer(5)
    w[3] = 0
    for method in ("int8", "vq", "ssvq"):
        img = quantize_layer("t", w, None, x, method, CFGS["k16d4"])
        validate_layer(img, CFGS["k16d4"])
        assert (img.bias == 0).all()
        assert (dequantize(img)[3] == 0).all()
        assert (integer_forward(img)[3] == 0)


def test_deterministic_for_a_seed():
    w, b, x = _layer(6)
    a = quantize_layer("t", w, b, x, "ssvq", CFGS["k16d4"], seed=3)
    c = quantize_layer("t", w, b, x, "ssvq", CFGS["k16d4"], seed=3)
    np.testing.assert_array_equal(a.codes, c.codes)
    np.testing.assert_array_equal(a.codebook, c.codebook)


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
    # assignment is to the nearest centroid
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


# ------------------------------------------------------------------ integer forward
@pytest.mark.parametrize("method", ["int8", "vq", "ssvq"])
@pytest.mark.parametrize("cfg", CFGS.values(), ids=CFGS.keys())
def test_integer_forward_equals_golden(method, cfg):
    w, b, x = _layer(7)
    img = quantize_layer("t", w, b, x, method, cfg)
    beats, _ = pack_layer(img, cfg)
    dec = unpack_layer(beats, cfg)
    np.testing.assert_array_equal(integer_forward(img), outputs(dec))
    # other activations through the same decoded image
    acts = quantize_act(x[1:40], img.scales["act_scale"])
    batch = integer_forward(img, acts)
    assert batch.shape == (39, ROWS) and batch.dtype == np.int8
    for i in (0, 17, 38):
        dec.act = acts[i]
        np.testing.assert_array_equal(batch[i], outputs(dec))


def _float_vs_int(method, cfg, seed=8):
    w, b, x = _layer(seed)
    img = quantize_layer("t", w, b, x, method, cfg)
    xs = x[:100]
    yi = integer_forward(img, quantize_act(xs, img.scales["act_scale"])).astype(np.float64)
    yf = xs.astype(np.float64) @ w.T.astype(np.float64) + b
    return np.corrcoef((yi * img.scales["out_scale"]).ravel(), yf.ravel())[0, 1]


def test_integer_forward_tracks_float_int8():
    assert _float_vs_int("int8", CFGS["k16d4"]) > 0.95


def test_integer_forward_tracks_float_ssvq():
    assert _float_vs_int("ssvq", CFGS["k256d8"]) > 0.95


def test_requantization_parameters():
    w, b, x = _layer(9)
    img = quantize_layer("t", w, b, x, "ssvq", CFGS["k16d4"])
    sc = img.scales
    act_scale = np.percentile(np.abs(x), 99.9) / 127
    assert sc["act_scale"] == pytest.approx(act_scale, rel=1e-6)
    typical = np.argsort(np.linalg.norm(x, axis=1))[len(x) // 2]
    np.testing.assert_array_equal(img.act, np.clip(np.rint(x[typical] / act_scale), -128, 127))
    m = sc["row_scale"] * sc["cb_scale"] * sc["act_scale"] / sc["out_scale"]
    mult, shift = img.mult.astype(np.float64), img.shift.astype(np.int64)
    assert ((mult >= 2 ** 15) & (mult < 2 ** 16)).all() and ((shift >= 1) & (shift <= 63)).all()
    np.testing.assert_allclose(mult * 2.0 ** -shift, m, rtol=2 ** -15)
    unit = sc["row_scale"] * sc["cb_scale"] * sc["act_scale"]
    assert (np.abs(img.bias - b / unit) <= 0.5 + 1e-6).all()
    # scales clip at the 99.9th percentile: about 0.1% of calibration outputs saturate
    yq = integer_forward(img, quantize_act(x, sc["act_scale"]))
    assert 0 < (np.abs(yq.astype(int)) >= 127).mean() < 0.01


def test_mult_shift_edges():
    mult, shift = mult_shift(np.array([0.0, 1.0, 0.75, 1e-20, 1e6, 2.0 ** -40]))
    assert (mult[0], shift[0]) == (0, 1)
    assert (mult[1], shift[1]) == (32768, 15)
    assert (mult[2], shift[2]) == (49152, 16)
    assert shift[3] == 63 and mult[3] == 0
    assert (mult[4], shift[4]) == (65535, 1)
    assert (mult[5], shift[5]) == (32768, 55)
    assert mult.dtype == np.uint16 and shift.dtype == np.uint8


# ------------------------------------------------------------------ sizes
def test_bits_per_weight_hand_computed():
    # ssvq, k=16 d=4 mults=32 bus=64, 37x45: 8 lanes x 4-bit codes = 32 code bits and
    # 32 sign bits per group, 2 groups per 64-bit beat pair -> 2-beat blocks of 2
    # groups; 2 groups per row -> 37 blocks = 74 beats = 4736 bits; codebook
    # 16*4*8 = 512 bits; row scales 37*16 = 592 bits.
    cfg = CFGS["k16d4"]
    assert bits_breakdown(cfg, "ssvq", 37, 45)["total"] == 4736 + 512 + 592
    w, b, x = _layer(10)
    img = quantize_layer("t", w, b, x, "ssvq", cfg)
    assert bits_per_weight(img, cfg) == pytest.approx((4736 + 512 + 592) / (37 * 45))


@pytest.mark.parametrize("method", ["int8", "vq", "ssvq"])
@pytest.mark.parametrize("cfg", CFGS.values(), ids=CFGS.keys())
def test_bits_match_streamed_sections(method, cfg):
    w, b, x = _layer(11)
    img = quantize_layer("t", w, b, x, method, cfg)
    beats, sec = pack_layer(img, cfg)
    streamed = (sec["codebook"][1] + sec["weights"][1]) * cfg.bus
    assert bits_per_weight(img, cfg) * ROWS * COLS == pytest.approx(streamed + 16 * ROWS)
