"""dkm (compress.dkm): attention weights and the k-means-like centroid update
against numpy, gradients through the iterations against finite differences,
training's weighted-average weights, and the hard export (nearest 8-bit
centroid, a bit-exact vq image equal to the evaluated model)."""
import numpy as np
import pytest
import torch
from torch import nn

from compress.dkm import DKM, attention, dkm_update
from compress.quantize import dequantize
from compress.train import QuantizedModel, fit
from ssvq.errors import ConfigError
from ssvq.reference import weight_matrix

torch.set_num_threads(1)


def _softmax_np(x, c, tau):
    d = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    e = np.exp(-(d - d.min(1, keepdims=True)) / tau)
    return e / e.sum(1, keepdims=True)


def test_attention_and_update_match_numpy():
    rng = np.random.default_rng(0)
    x, c, tau = rng.standard_normal((50, 4)), rng.standard_normal((6, 4)), 0.7
    a = attention(torch.from_numpy(x), torch.from_numpy(c), tau).numpy()
    np.testing.assert_allclose(a, _softmax_np(x, c, tau), rtol=1e-9, atol=1e-12)
    # two iterations of C_j = sum_i A_ij x_i / sum_i A_ij
    want = c
    for _ in range(2):
        aa = _softmax_np(x, want, tau)
        want = (aa.T @ x) / aa.sum(0)[:, None]
    got = dkm_update(torch.from_numpy(x), torch.from_numpy(c), tau, 2).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_gradient_flows_through_the_iterations():
    torch.manual_seed(0)
    x = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, 3, dtype=torch.float64)

    def f(x):
        cc = dkm_update(x, c, 0.5, 2)
        return attention(x, cc, 0.5) @ cc
    assert torch.autograd.gradcheck(f, (x,))


def test_training_is_soft_and_export_is_the_hard_model():
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(96, 36)
    y = m(x).detach()
    qm = QuantizedModel(m, DKM(k=8, d=4, temperature=0.5, iters=2))
    q = qm.qlayers["0"]
    # training forward: attention-weighted average of the updated 8-bit centroids
    qm.train()
    c0 = q.centroids.clone()
    w = q.weight_q().detach().double().numpy()
    xs = np.zeros((16, 36))
    xs[:, :36] = q.latent.detach().double().numpy()
    v = xs.reshape(-1, 4)
    cc = c0.double().numpy()
    for _ in range(2):
        aa = _softmax_np(v, cc, float(q.tau))
        cc = (aa.T @ v) / aa.sum(0)[:, None]
    np.testing.assert_allclose(q.centroids.double().numpy(), cc, rtol=1e-4, atol=1e-5)
    cs = np.abs(q.centroids.numpy()).max() / np.float32(127)
    cq = np.round(q.centroids.numpy() / cs) * cs
    rec = _softmax_np(v, cq, float(q.tau)) @ cq
    s = q.scale().detach().double().numpy()
    np.testing.assert_allclose(w, s[:, None] * rec.reshape(16, 36), rtol=1e-4, atol=1e-5)
    fit(qm, lambda mm, b: ((mm(b) - y) ** 2).mean(), lambda i: x, steps=20, lr=3e-3,
        progress=None)
    # eval / export: nearest 8-bit centroid, by brute force
    imgs = {im.name: im for im in qm.export(lambda mm: mm(x))}
    img = imgs["0"]
    assert img.config.name == "vq-k8-d4"
    qi = np.round(q.centroids.numpy() / (np.abs(q.centroids.numpy()).max() / np.float32(127)))
    lat = q.latent.detach().numpy().reshape(-1, 4)
    codes = np.array([np.argmin(((qi * (np.abs(q.centroids.numpy()).max() / np.float32(127))
                                  - u) ** 2).sum(1)) for u in lat])
    assert (weight_matrix(img) == qi.astype(np.int64)[codes].reshape(16, 36)).all()
    f = qm.to_float()
    assert (f[0].weight.detach().numpy() == dequantize(img)).all()
    np.testing.assert_allclose(q.weight_q().detach().numpy(), dequantize(img), rtol=1e-5,
                               atol=1e-6)
    from ssvq.app.quality.checks import check_images
    assert check_images(list(imgs.values()))


def test_spec_errors():
    assert DKM.from_dict(DKM(k=8).to_dict()) == DKM(k=8)
    with pytest.raises(ConfigError, match="temperature"):
        DKM(temperature=0)
