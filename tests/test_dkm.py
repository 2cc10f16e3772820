"""dkm (compress.dkm): attention weights and the k-means-like centroid update
against numpy, gradients through the iterations against finite differences,
training's weighted-average weights, and the hard export (nearest 8-bit
centroid, a bit-exact vq image equal to the evaluated model)."""
import numpy as np
import pytest
import torch
from torch import nn

import compress.dkm as dkm
from compress.dkm import DKM, attention, dkm_update, nearest, omitted_mass, reconstruct
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


def _candidates_np(x, c, t):
    d = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    return np.argsort(d, axis=1, kind="stable")[:, :t]


def test_candidate_attention_update_and_reconstruction_match_numpy(monkeypatch):
    monkeypatch.setattr(dkm, "CHUNK", 7)  # several blocks, the last one short
    rng = np.random.default_rng(3)
    x, c, tau, t = rng.standard_normal((50, 4)), rng.standard_normal((12, 4)), 0.6, 3
    c[11] = 50.0  # far from every vector: nobody's candidate
    idx = nearest(torch.from_numpy(x), torch.from_numpy(c), t)
    want_idx = _candidates_np(x, c, t)
    assert (idx.numpy() == want_idx).all()
    # softmax over each vector's own candidates only
    d = ((x[:, None, :] - c[want_idx]) ** 2).sum(-1)
    e = np.exp(-(d - d.min(1, keepdims=True)) / tau)
    want_a = e / e.sum(1, keepdims=True)
    a = attention(torch.from_numpy(x), torch.from_numpy(c), tau, idx).numpy()
    np.testing.assert_allclose(a, want_a, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(reconstruct(torch.from_numpy(a), torch.from_numpy(c), idx).numpy(),
                               (want_a[:, :, None] * c[want_idx]).sum(1), rtol=1e-9, atol=1e-12)
    # one update: C_j = sum over the vectors with j among their candidates
    mass, num = np.zeros(12), np.zeros((12, 4))
    for i in range(50):
        for s_ in range(t):
            mass[want_idx[i, s_]] += want_a[i, s_]
            num[want_idx[i, s_]] += want_a[i, s_] * x[i]
    want_c = np.where((mass > 1e-12)[:, None], num / np.maximum(mass, 1e-12)[:, None], c)
    assert (mass == 0).any()  # a centroid no vector has as a candidate keeps its place
    got = dkm_update(torch.from_numpy(x), torch.from_numpy(c), tau, 1, idx).numpy()
    np.testing.assert_allclose(got, want_c, rtol=1e-9, atol=1e-12)
    # every centroid a candidate: the dense DKM
    full = nearest(torch.from_numpy(x), torch.from_numpy(c), 99)
    assert full.shape == (50, 12)
    np.testing.assert_allclose(
        dkm_update(torch.from_numpy(x), torch.from_numpy(c), tau, 2, full).numpy(),
        dkm_update(torch.from_numpy(x), torch.from_numpy(c), tau, 2).numpy(), rtol=1e-9)
    # the largest dense weight outside the t nearest
    dd = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    ea = _softmax_np(x, c, tau)
    out = np.array([ea[i, np.argsort(dd[i], kind="stable")[t:]].sum() for i in range(50)])
    assert omitted_mass(torch.from_numpy(x), torch.from_numpy(c), tau, t) == pytest.approx(
        out.max(), rel=1e-9)


def test_candidate_gradient_and_refresh():
    torch.manual_seed(2)
    x = torch.randn(20, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(9, 4, dtype=torch.float64)
    idx = nearest(x, c, 4)

    def f(x):
        cc = dkm_update(x, c, 0.5, 2, idx)
        return reconstruct(attention(x, cc, 0.5, idx), cc, idx)
    assert torch.autograd.gradcheck(f, (x,))
    # the layer finds its candidates again every `refresh` training passes
    m = nn.Sequential(nn.Linear(16, 8))
    qm = QuantizedModel(m, DKM(k=8, d=4, candidates=3, refresh=2, iters=1))
    q = qm.qlayers["0"]
    qm.train()
    seen = []
    for _ in range(4):
        with torch.no_grad():
            q.latent.add_(0.3 * torch.randn_like(q.latent))
        c_before = q.centroids.clone()
        q.weight_q()
        seen.append(q.cand.clone())
        want = _candidates_np(q.vectors().detach().double().numpy(),
                              c_before.double().numpy(), 3)
        if len(seen) % 2 == 1:  # passes 0 and 2 refresh, from the centroids before the pass
            assert (seen[-1].numpy() == want).all()
        else:
            assert torch.equal(seen[-1], seen[-2])


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
    with pytest.raises(ConfigError, match="candidates: expected >= 1, found 0"):
        DKM(candidates=0)
    with pytest.raises(ConfigError, match="refresh: expected >= 1, found 0"):
        DKM(refresh=0)


def test_hard_codes_follow_every_change_of_latents_and_centroids():
    """The eval-mode codes are kept between forwards, never past a change."""
    torch.manual_seed(4)
    qm = QuantizedModel(nn.Sequential(nn.Linear(16, 8)), DKM(k=8, d=4, iters=1))
    q = qm.qlayers["0"]
    qm.eval()

    def brute():
        c = dkm.grid(q.centroids).double().numpy()
        v = q.vectors().detach().double().numpy()
        return ((v[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
    assert (q.hard_codes().numpy() == brute()).all()
    with torch.no_grad():
        q.latent.mul_(-1.0)          # an optimizer step is in place like this
    assert (q.hard_codes().numpy() == brute()).all()
    with torch.no_grad():
        q.centroids.add_(0.5 * torch.randn_like(q.centroids))
    assert (q.hard_codes().numpy() == brute()).all()
