"""cosvq (compress.cosvq): the cosine top-1 assignment and its rounded
projection coefficient against a brute-force float64 computation, the
straight-through gradients against hand-derived ones, and the export: the
image's integer weights are coefficient x codeword, its stream round trip is
bit-exact, and the float model is the image's dequantized weights."""
import numpy as np
import pytest
import torch
from torch import nn

from compress.cosvq import CosVQ
from compress.quantize import dequantize
from compress.train import QuantizedModel, fit
from ssvq.errors import ConfigError
from ssvq.reference import weight_matrix

torch.set_num_threads(1)


def _model(seed=0, cols=40):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(cols, 24), nn.ReLU(), nn.Linear(24, 5))


def _grid(c):
    """The signed 8-bit codebook grid, by hand."""
    c = np.asarray(c, np.float64)
    cs = np.abs(c).max() / 127
    return np.round(c / cs) * cs, cs


def _brute_assign(x, cq, lo, hi):
    """Every codeword's cosine (and its negative's, when coefficients can be
    negative), then the rounded projection onto the best."""
    codes, coefs = [], []
    for v in x:
        best, bj = -np.inf, 0
        for j, c in enumerate(cq):
            n = np.linalg.norm(c)
            if n == 0:
                continue
            cos = v @ c / (n * max(np.linalg.norm(v), 1e-300))
            if lo < 0:
                cos = abs(cos)
            if cos > best:
                best, bj = cos, j
        c = cq[bj]
        a = np.clip(np.round(v @ c / (c @ c)), lo, hi) if c @ c > 0 else 0
        codes.append(bj)
        coefs.append(int(a))
    return np.array(codes), np.array(coefs)


@pytest.mark.parametrize("coef_bits", [1, 2, 4])
def test_cosine_top1_assignment_and_projection(coef_bits):
    qm = QuantizedModel(_model(), CosVQ(k=8, d=4, coef_bits=coef_bits))
    q = qm.qlayers["0"]
    with torch.no_grad():       # latents and codebook moved off their initial fit
        q.latent.add_(0.3 * torch.randn_like(q.latent))
        q.codebook.add_(0.05 * torch.randn_like(q.codebook))
        q.codebook[3] = 0.0       # a zero codeword must never be chosen
    q.assign()
    x = q.latent.detach().double().numpy().reshape(-1, 4)
    cq, _ = _grid(q.codebook.detach().numpy())
    half = 1 << (coef_bits - 1)
    codes, coefs = _brute_assign(x, cq, -(half - 1), half)
    assert (q.codes.numpy().reshape(-1) == codes).all()
    assert (q.coefs.numpy().reshape(-1) == coefs).all()
    assert 3 not in codes


def test_reconstruction_and_straight_through_gradients():
    qm = QuantizedModel(_model(1, cols=38), CosVQ(k=8, d=4, coef_bits=3))   # 38: padded to 40
    q = qm.qlayers["0"]
    g = torch.randn(24, 38, dtype=torch.float32)
    w = q.weight_q()
    (w * g).sum().backward()
    s = q.scale().detach().double().numpy()
    cq, _ = _grid(q.codebook.detach().numpy())
    codes, coefs = q.codes.numpy(), q.coefs.numpy()
    rec = np.zeros((24, 40))
    for r in range(24):
        for v in range(10):
            rec[r, 4 * v:4 * v + 4] = coefs[r, v] * cq[codes[r, v]]
    np.testing.assert_allclose(w.detach().numpy(), s[:, None] * rec[:, :38], rtol=1e-5, atol=1e-6)
    gn = g.double().numpy()
    # latents: straight through, dL/dt = dL/dW * s
    np.testing.assert_allclose(q.latent.grad.numpy(), gn * s[:, None], rtol=1e-5, atol=1e-6)
    # codebook: each codeword the sum of its vectors' (gradient * s * coefficient)
    gp = np.zeros((24, 40))
    gp[:, :38] = gn * s[:, None]
    want = np.zeros((8, 4))
    for r in range(24):
        for v in range(10):
            want[codes[r, v]] += coefs[r, v] * gp[r, 4 * v:4 * v + 4]
    np.testing.assert_allclose(q.codebook.grad.numpy(), want, rtol=1e-4, atol=1e-5)
    # row scale: d/dlog s = s * sum(rec * g)
    np.testing.assert_allclose(q.log_scale.grad.numpy(), s * (rec[:, :38] * gn).sum(1),
                               rtol=1e-4, atol=1e-5)


def test_training_reassigns_by_cosine_and_exports_exactly():
    m = _model(2)
    x = torch.randn(128, 40)
    y = m(x).detach()
    qm = QuantizedModel(m, CosVQ(k=16, d=4, coef_bits=4, reassign_until=1.0))
    res = fit(qm, lambda mm, b: ((mm(b) - y) ** 2).mean(), lambda i: x, steps=30, lr=3e-3,
              progress=None)
    assert sum(r.get("codes_changed", 0) for r in res.log) > 0
    q = qm.qlayers["0"]
    before = (q.codes.clone(), q.coefs.clone())
    q.assign()                 # the last step re-assigned: nothing moves now
    assert all((a == b).all() for a, b in zip(before, (q.codes, q.coefs)))
    imgs = {im.name: im for im in qm.export(lambda mm: mm(x))}
    img = imgs["0"]
    assert img.config.name == "vq-k16-d4-c4"
    # integer weights: coefficient x 8-bit codeword, by hand from the layer's state
    c = q.codebook.detach().double().numpy()
    cs = np.float32(np.abs(c).max()) / np.float32(127)
    qi = np.round(q.codebook.detach().numpy() / cs).astype(np.int64)
    want = (q.coefs.numpy()[..., None] * qi[q.codes.numpy()]).reshape(24, 40)
    assert (weight_matrix(img) == want).all()
    # the float model is the image, and the training forward agrees to float rounding
    f = qm.to_float()
    assert (f[0].weight.detach().numpy() == dequantize(img)).all()
    np.testing.assert_allclose(dequantize(img), q.weight_q().detach().numpy(), rtol=1e-5,
                               atol=1e-6)
    from ssvq.app.quality.checks import check_images
    assert check_images(list(imgs.values()))


def test_spec_round_trip_and_errors():
    s = CosVQ(k=16, d=4, coef_bits=2)
    assert CosVQ.from_dict(s.to_dict()) == s and "method" not in s.to_dict()
    with pytest.raises(ConfigError, match="coef_bits"):
        CosVQ(coef_bits=0)
    with pytest.raises(ConfigError, match="k"):
        CosVQ(k=12)
