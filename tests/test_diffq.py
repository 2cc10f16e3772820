"""diffq (compress.diffq): the pseudo-quantization noise (its scale
(max - min) / (2^b - 1) per group and its uniform draw), the bit gradient of
the noisy weights and of the size penalty against the hand-derived
derivative, the rounding of a layer's mean bits to an accelerator width, and
the export: eval mode is the int-b image, bit-exact through the stream."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from compress.diffq import DiffQ
from compress.quantize import dequantize
from compress.train import QuantizedModel, fit
from ssvq.errors import ConfigError
from ssvq.reference import weight_matrix

torch.set_num_threads(1)


def _layer(spec, cols=20, seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(cols, 6), nn.ReLU(), nn.Linear(6, 3))
    return m, QuantizedModel(m, spec)


def test_noise_scale_is_the_groups_grid_step():
    spec = DiffQ(b_min=2, b_max=8, init_bits=5.0, group_size=8)
    m, qm = _layer(spec, cols=20)               # groups of 8, 8 and 4 weights per row
    q = qm.qlayers["0"]
    with torch.no_grad():
        q.logit.copy_(torch.randn_like(q.logit))
    qm.train()
    torch.manual_seed(7)
    w = q.weight_q().detach().double().numpy()
    torch.manual_seed(7)
    u = (torch.rand(6, 20) - 0.5).double().numpy()
    sh = q.shadow.detach().double().numpy()
    b = 2 + 6 / (1 + np.exp(-q.logit.detach().double().numpy()))
    want = sh.copy()
    for r in range(6):
        for g, (lo, hi) in enumerate([(0, 8), (8, 16), (16, 20)]):
            part = sh[r, lo:hi]
            delta = (part.max() - part.min()) / (2 ** b[r, g] - 1)
            want[r, lo:hi] += delta * u[r, lo:hi]
    np.testing.assert_allclose(w, want, rtol=1e-5, atol=1e-7)


def test_bit_gradient_of_noise_and_penalty():
    spec = DiffQ(b_min=2, b_max=8, init_bits=4.0, group_size=0, penalty=0.3)
    m, qm = _layer(spec, cols=10, seed=1)
    q = qm.qlayers["0"]
    qm.train()
    g = torch.randn(6, 10)
    torch.manual_seed(3)
    loss = (q.weight_q() * g).sum() + qm.size_penalty()
    loss.backward()
    torch.manual_seed(3)
    u = (torch.rand(6, 10) - 0.5).double().numpy()
    sh = q.shadow.detach().double().numpy()
    lg = q.logit.detach().double().numpy()[:, 0]
    sig = 1 / (1 + np.exp(-lg))
    b = 2 + 6 * sig
    db = 6 * sig * (1 - sig)
    rng = sh.max(1) - sh.min(1)
    ddelta = -rng * math.log(2) * 2 ** b / (2 ** b - 1) ** 2
    n_total = 6 * 10 + 3 * 6
    want = (g.double().numpy() * u).sum(1) * ddelta * db + 0.3 * 10 / n_total * db
    np.testing.assert_allclose(q.logit.grad.numpy()[:, 0], want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("mean, width", [(3.4, 3), (3.5, 4), (6.6, 6), (7.0, 8), (7.2, 8),
                                         (2.2, 2)])
def test_mean_bits_round_to_an_accelerator_width(mean, width):
    assert DiffQ().width(mean) == width
    assert DiffQ(b_min=1.0).width(1.2) == 1 and DiffQ(b_min=2.0).width(1.2) == 2


def test_training_learns_fewer_bits_and_exports_the_measured_model():
    torch.manual_seed(4)
    m = nn.Sequential(nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(128, 24)
    y = m(x).detach()
    qm = QuantizedModel(m, DiffQ(init_bits=6.0, penalty=0.5))
    before = qm.qlayers["0"].mean_bits()
    fit(qm, lambda mm, b: ((mm(b) - y) ** 2).mean(), lambda i: x, steps=100, lr=1e-3,
        lr_groups={"bits_lr": 5e-2}, progress=None)
    q = qm.qlayers["0"]
    assert q.mean_bits() < before
    img = {im.name: im for im in qm.export(lambda mm: mm(x))}["0"]
    assert img.config.name == f"int{DiffQ().width(q.mean_bits())}"
    b = img.config.bits
    wi = weight_matrix(img)
    lo, hi = (-127, 127) if b == 8 else (-(1 << (b - 1)), (1 << (b - 1)) - 1)
    assert wi.min() >= lo and wi.max() <= hi
    qm.eval()
    assert (q.weight_q().numpy() == dequantize(img)).all()
    assert (qm.to_float()[0].weight.detach().numpy() == dequantize(img)).all()
    assert qm.bits()["layers"]["0"] < 8.5
    from ssvq.app.quality.checks import check_images
    assert check_images(qm.export(lambda mm: mm(x)))


def test_spec_errors():
    assert DiffQ.from_dict(DiffQ(penalty=2.0).to_dict()) == DiffQ(penalty=2.0)
    with pytest.raises(ConfigError, match="init_bits"):
        DiffQ(init_bits=9)
