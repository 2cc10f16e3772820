"""compress.calib's calibration rule against a brute force written here: the
input range over the grid of clip ratios scored by the row-normalised output
error in float64 (one candidate at a time, by the documented formulas), the
per-row and per-layer output scales, the quantizer with its zero point."""
import numpy as np
import pytest

from compress import calib
from compress.calib import (choose_act, layer_out_scale, out_scales_per_row, quantize_act)

RATIOS = [2.0 ** (-k / 8) for k in range(41)]     # the documented grid, 1 .. 1/32


def _layer(seed=0, n=700, rows=6, cols=10):
    """Inputs with a one-sided outlier channel (+40 on 1% of the tokens) and a
    skewed one (>= 0), and weights with one row a hundred times the others that
    reads the outlier channel alone: the situations the rule is for."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, cols))
    x[:, 1] = np.abs(x[:, 1]) * 3
    x[rng.random(n) < 0.01, 0] += 40.0
    w = rng.standard_normal((rows, cols)) * 0.5
    w[0] = 0.0
    w[0, 0] = 50.0
    w[1:, 0] *= 0.02
    return x.astype(np.float32), w.astype(np.float32)


def _candidate(x, r):
    """The data's range, clipped at +-r * max|x|, onto -128..127."""
    m, big = min(0.0, float(x.min())), max(0.0, float(x.max()))
    c = r * max(-m, big)
    lo, hi = max(m, -c), min(big, c)
    s = (hi - lo) / 255
    z = int(np.clip(np.rint(-128 - lo / s), -128, 127))
    return s, z


def _errors(x, w, s, z):
    """Per-row mean squared output error of quantizing x at (s, z), and the
    rows' mean squared outputs, float64, the quantizer written out."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    q = np.clip(np.rint(x / s) + z, -128, 127)
    e = ((q - z) * s - x) @ w.T
    return (e ** 2).mean(axis=0), ((x @ w.T) ** 2).mean(axis=0)


def _objective(x, w, s, z):
    err, power = _errors(x, w, s, z)
    return float((err / power).sum())


def test_the_input_range_minimises_the_row_normalised_output_error_over_the_grid():
    x, w = _layer()
    assert len(x) > calib.SEARCH_ROWS                  # the search rows are a subsample
    xs = x[::2]                                        # every ceil(700 / 512) = 2nd row
    cands = [_candidate(x, r) for r in RATIOS]         # the range from all the rows
    objs = [_objective(xs, w, s, z) for s, z in cands]
    best = int(np.argmin(objs))
    assert 0 < best < len(RATIOS) - 1                  # a real trade-off, not an end of the grid
    s, z = choose_act(x, w)
    assert objs[best] > 0 and _objective(xs, w, s, z) <= objs[best] * (1 + 1e-6)
    assert s == pytest.approx(cands[best][0], rel=1e-12) and z == cands[best][1]
    # the skewed inputs get a zero point: their range is not symmetric
    assert z < -20
    # a grid 16 times finer finds nothing more than 2% better
    fine = [_objective(xs, w, *_candidate(x, 2.0 ** (-k / 128))) for k in range(641)]
    assert objs[best] <= 1.02 * min(fine)
    # the plain output MSE, which the large row decides, would choose another
    # range: each row's error counts relative to the row's own size
    plain = [_errors(xs, w, cs, cz)[0].sum() for cs, cz in cands]
    assert int(np.argmin(plain)) != best
    # and the old rule, the symmetric 99.9th percentile of |x|, does worse on it
    p = float(np.percentile(np.abs(x), 99.9)) / 127
    assert _objective(xs, w, p, 0) > 1.5 * objs[best]


def test_without_a_subsample_every_row_counts():
    x, w = _layer(seed=3, n=300)
    objs = [_objective(x, w, *_candidate(x, r)) for r in RATIOS]
    s, z = choose_act(x, w)
    assert (s, z) == pytest.approx(_candidate(x, RATIOS[int(np.argmin(objs))]), rel=1e-12)


def test_degenerate_inputs_and_weights():
    x, w = _layer(n=50)
    assert choose_act(np.zeros_like(x), w) == (1.0, 0)
    # zero weights: every candidate is as good (no error at all), and ties go to
    # the widest range
    assert choose_act(x, np.zeros_like(w)) == _candidate(x, 1.0)
    # all inputs >= 0: the zero point puts 0 at -128, the whole grid above it
    s, z = choose_act(np.abs(x), w)
    assert z == -128


def test_quantize_act_rounds_half_to_even_then_adds_the_zero_point_and_clips():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 0.26, 300.0, -300.0], np.float32)
    np.testing.assert_array_equal(quantize_act(x, 1.0), [0, 2, 2, 0, -2, 0, 127, -128])
    np.testing.assert_array_equal(quantize_act(x, 1.0, -100),
                                  [-100, -98, -98, -100, -102, -100, 127, -128])
    np.testing.assert_array_equal(quantize_act(x, 0.25, 3), [5, 9, 13, 1, -3, 4, 127, -128])
    assert quantize_act(x, 1.0).dtype == np.int8


def test_out_scales_are_each_rows_calibration_maximum():
    rng = np.random.default_rng(5)
    y = rng.standard_normal((40, 5)) * np.array([1.0, 100.0, 0.01, 3.0, 0.0])
    y[7, 3] = -25.0                                    # a negative maximum counts by size
    got = out_scales_per_row(y)
    want = [max(abs(v) for v in y[:, r]) / 127 for r in range(4)]
    np.testing.assert_allclose(got[:4], want, rtol=1e-15)
    assert got[3] == 25.0 / 127
    assert got[4] == got[1]                            # an all-zero row: the layer's largest
    np.testing.assert_array_equal(out_scales_per_row(np.zeros((3, 2))), [1.0, 1.0])


def test_one_layer_output_scale_minimises_the_mse_over_the_grid():
    rng = np.random.default_rng(6)
    # two outliers among 200000 values: clipping them to ~36 costs less than the
    # finer grid saves on all the others (an outlier per ~50000 values pays at 8 bits)
    y = rng.standard_normal((25000, 8))
    y[0, 0], y[1, 3] = 60.0, -45.0
    a = np.abs(y).max()
    errs = [((np.clip(np.rint(y / (r * a / 127)), -128, 127) * (r * a / 127) - y) ** 2).mean()
            for r in RATIOS]
    best = int(np.argmin(errs))
    assert 0 < best < len(RATIOS) - 1
    assert layer_out_scale(y) == pytest.approx(RATIOS[best] * a / 127, rel=1e-12)
    assert layer_out_scale(np.zeros((4, 2))) == 1.0
