"""Baselines from outside the project: a plain faiss k-means VQ and the
diffq-fixed package (DiffQ's own implementation; its float model is measured,
no accelerator image is written)."""
from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
from torch import nn


def faiss_anchor(w: np.ndarray, k: int, d: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """Off-the-shelf faiss k-means VQ of the raw weight D-vectors (faiss
    defaults: it subsamples to 256*k training points; float32 codebook; no
    row normalisation). Returns (reconstructed weight, bits)."""
    import faiss
    rows, cols = w.shape
    v = -(-cols // d)
    u = np.zeros((rows, v * d), np.float32)
    u[:, :cols] = w
    x = np.ascontiguousarray(u.reshape(-1, d))
    km = faiss.Kmeans(d, k, niter=20, seed=seed, verbose=False, min_points_per_centroid=1)
    km.train(x)
    _, a = km.index.search(x, 1)
    rec = km.centroids[a[:, 0]].reshape(rows, v * d)[:, :cols]
    bits = k * d * 32 + rows * v * int(math.log2(k))
    return rec.astype(np.float32), bits


def diffq_package_rows(base, X, Y, xte, yte, steps, seed) -> list[dict]:
    try:
        from diffq import DiffQuantizer
    except ImportError as e:
        return [{"method": "diffq", "trained": True, "bits_per_weight": None, "accuracy": None,
                 "seconds": 0.0, "skipped": f"diffq-fixed not importable: {e}"}]
    from compress.models import accuracy
    out = []
    for penalty in (3e1, 1e2, 3e2):
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        m = copy.deepcopy(base)
        m.train()
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        q = DiffQuantizer(m, min_size=0.0, group_size=8, min_bits=1.5, init_bits=8,
                          exclude=["*bias"])
        q.setup_optimizer(opt, lr=1e-2)
        g = torch.Generator().manual_seed(seed)
        for i in range(steps):
            idx = torch.randint(0, len(X), (64,), generator=g)
            loss = nn.functional.cross_entropy(m(X[idx]), Y[idx]) + penalty * q.model_size()
            opt.zero_grad()
            loss.backward()
            opt.step()
        m.eval()
        acc = accuracy(m, xte, yte)               # DiffQ quantizes the weights in eval()
        n_w = sum(qp.param.numel() for qp in q._qparams)
        others_mb = sum(p.numel() for p in q._others) * 4 / 2 ** 20
        bits = (q.true_model_size() - others_mb) * 2 ** 20 * 8 / n_w
        out.append({"method": "diffq", "config": f"penalty={penalty:g}, group 8",
                    "trained": True, "bits_per_weight": bits, "accuracy": acc,
                    "seconds": time.perf_counter() - t0, "steps": steps})
        q.detach()
    return out
