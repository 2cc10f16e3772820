"""qsd (compress.qsd): the projection onto the sparse + quantized set against
a brute-force search, PGD's monotone decrease (majorisation with step 1/L
and an exact projection), and the export: an additive m=2 image whose
integer weights are the two coefficient x codeword sums, bit-exact."""
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from compress.qsd import QSD, project
from compress.quantize import dequantize
from compress.train import QuantizedModel, fit
from ssvq.errors import ConfigError
from ssvq.reference import weight_matrix

torch.set_num_threads(1)


def _brute(b, k, lo, hi):
    """Nearest point of S: every (index, integer value) per half, and zero."""
    out = np.zeros_like(b)
    for h in range(2):
        part = b[h * k:(h + 1) * k]
        best, arg = np.sum(part ** 2), None
        for j, v in itertools.product(range(k), range(lo, hi + 1)):
            e = np.sum(part ** 2) - part[j] ** 2 + (part[j] - v) ** 2
            if e < best - 1e-12:
                best, arg = e, (j, v)
        if arg:
            out[h * k + arg[0]] = arg[1]
    return out


@pytest.mark.parametrize("lo, hi", [(-8, 7), (-2, 1), (-1, 0)])
def test_projection_is_the_nearest_point_of_the_set(lo, hi):
    rng = np.random.default_rng(0)
    b = rng.standard_normal((40, 10)) * 3
    got = project(torch.from_numpy(b), 5, lo, hi).numpy()
    for i in range(len(b)):
        want = _brute(b[i], 5, lo, hi)
        assert np.sum((got[i] - b[i]) ** 2) == pytest.approx(np.sum((want - b[i]) ** 2))
        assert (np.count_nonzero(got[i, :5]) <= 1) and (np.count_nonzero(got[i, 5:]) <= 1)


def test_pgd_decreases_and_export_is_exact():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 12), nn.ReLU(), nn.Linear(12, 3))
    x = torch.randn(64, 32)
    y = m(x).detach()
    qm = QuantizedModel(m, QSD(k=8, d=8, coef_bits=3, pgd_iters=15))
    q = qm.qlayers["0"]
    e = q.pgd_errors
    assert all(b <= a * (1 + 1e-5) + 1e-6 for a, b in zip(e, e[1:]))
    fit(qm, lambda mm, b: ((mm(b) - y) ** 2).mean(), lambda i: x, steps=10, lr=1e-2,
        progress=None)
    bd = q.codes_dense.detach().numpy()
    assert ((bd != 0).reshape(-1, 2, 8).sum(-1) <= 1).all() and (bd == np.round(bd)).all()
    img = {im.name: im for im in qm.export(lambda mm: mm(x))}["0"]
    assert img.config.name == "vq-k8-d8-m2-c3"
    a = q.dictionary.detach().numpy()
    cs = np.abs(a).max() / np.float32(127)
    qa = np.round(a / cs).astype(np.int64)
    want = (np.round(bd).astype(np.int64) @ qa).reshape(12, 32)
    assert (weight_matrix(img) == want).all()
    assert (qm.to_float()[0].weight.detach().numpy() == dequantize(img)).all()
    from ssvq.app.quality.checks import check_images
    assert check_images(qm.export(lambda mm: mm(x)))


def test_spec_errors():
    assert QSD.from_dict(QSD(k=8).to_dict()) == QSD(k=8)
    with pytest.raises(ConfigError, match="coef_bits"):
        QSD(coef_bits=0)
