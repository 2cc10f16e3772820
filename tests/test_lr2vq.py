"""lr2vq (compress.lr2vq): the split of a rank-r clustering's error into
low-rank and clustering parts, the reconstruction C = Z U and its gradients
against hand-derived ones, and the export (a bit-exact vq image whose
codebook is the 8-bit grid of Z U)."""
import numpy as np
import pytest
import torch
from torch import nn

from compress.lr2vq import LR2VQ, low_rank_cluster, rank_errors, rank_estimate
from compress.quantize import dequantize
from compress.train import QuantizedModel, fit
from ssvq.errors import ConfigError
from ssvq.reference import weight_matrix

torch.set_num_threads(1)


def test_error_splits_into_low_rank_and_clustering():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 8)) @ np.diag([3, 2, 1.5, 1, 0.5, 0.3, 0.2, 0.1])
    p, z, codes, low, clus = low_rank_cluster(x, 16, 3, seed=0)
    assert np.allclose(p.T @ p, np.eye(3))
    total = np.sum((x - z[codes] @ p.T) ** 2)
    assert low + clus == pytest.approx(total, rel=1e-6)
    s = np.linalg.svd(x, compute_uv=False)
    assert low == pytest.approx(np.sum(s[3:] ** 2), rel=1e-9)
    # every sub-vector's code is its nearest latent codeword in r-space
    y = x @ p
    near = np.argmin(((y[:, None] - z[None]) ** 2).sum(-1), 1)
    assert (near == codes).all() or np.allclose(((y - z[near]) ** 2).sum(),
                                                ((y - z[codes]) ** 2).sum(), rtol=1e-5)
    rows = rank_errors(x.reshape(100, 32), 16, 8, [2, 4, 8])
    assert [r["low_rank"] > 0 for r in rows] == [True, True, False]
    assert rows[0]["low_rank"] > rows[1]["low_rank"]


def test_rank_estimate_weights_layers_by_size():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((8, 16)), rng.standard_normal((24, 16))
    est = rank_estimate([a, b], 4, 4, [2, 4])
    for r, e in zip([2, 4], est):
        ea, eb = rank_errors(a, 4, 4, [r])[0], rank_errors(b, 4, 4, [r])[0]
        assert e["rank"] == r
        for f in ("low_rank", "clustering", "total"):
            assert e[f] == pytest.approx((ea[f] * 128 + eb[f] * 384) / 512, rel=1e-12)


def test_reconstruction_gradients_and_export():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(30, 12), nn.ReLU(), nn.Linear(12, 3))     # 30: padded to 32
    x = torch.randn(64, 30)
    y = m(x).detach()
    qm = QuantizedModel(m, LR2VQ(k=8, d=8, rank=3))
    fit(qm, lambda mm, b: ((mm(b) - y) ** 2).mean(), lambda i: x, steps=10, lr=1e-3,
        progress=None)
    q = qm.qlayers["0"]
    z = q.latent_codebook.detach().double().numpy()
    u = q.map.detach().double().numpy()
    c = z @ u
    cs = np.abs(c).max() / 127
    cq = np.round(c / cs) * cs
    codes = q.codes.numpy()
    s = q.scale().detach().double().numpy()
    rec = cq[codes].reshape(12, 32)[:, :30] * s[:, None]
    qm.train()
    w = q.weight_q()
    np.testing.assert_allclose(w.detach().numpy(), rec, rtol=1e-4, atol=1e-6)
    g = torch.randn(12, 30)
    for p in (q.latent_codebook, q.map):
        p.grad = None
    (w * g).sum().backward()
    gp = np.zeros((12, 32))
    gp[:, :30] = g.double().numpy() * s[:, None]
    gc = np.zeros((8, 8))
    for r in range(12):
        for v in range(4):
            gc[codes[r, v]] += gp[r, 8 * v:8 * v + 8]
    np.testing.assert_allclose(q.map.grad.numpy(), z.T @ gc, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(q.latent_codebook.grad.numpy(), gc @ u.T, rtol=1e-4, atol=1e-5)
    imgs = {im.name: im for im in qm.export(lambda mm: mm(x))}
    img = imgs["0"]
    assert img.config.name == "vq-k8-d8"
    assert (weight_matrix(img) == np.round(c / cs).astype(np.int64)[codes].reshape(12, 32)[:, :30]
            ).all()
    assert (qm.to_float()[0].weight.detach().numpy() == dequantize(img)).all()
    from ssvq.app.quality.checks import check_images
    assert check_images(list(imgs.values()))


def test_spec_errors():
    assert LR2VQ.from_dict(LR2VQ(rank=2).to_dict()) == LR2VQ(rank=2)
    with pytest.raises(ConfigError, match="rank"):
        LR2VQ(d=4, rank=5)
