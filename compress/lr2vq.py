"""Low-rank representation + subvector clustering (method "lr2vq", after
LR2VQ, arXiv 2211.11397), exported as a plain VQ image with D = m.

Per layer the rows are divided by their RMS and cut into m-dimensional
sub-vectors x (m = the image's D). They are projected to r < m dimensions
(P = the top-r right singular vectors of the sub-vector matrix, so x P is
the least-squares rank-r view), clustered there into K latent codewords Z
(K x r, k-means), and the m-dimensional codebook is reconstructed by a
linear map U (r x m, initialised to P^T):

    C = Z U,   W[r, v] = s_r * Cq[code[r, v]]

with Cq the 8-bit grid of C (straight-through) and s the per-row scales
(least-squares refit at initialisation, learnable). Training learns Z, U and
s with fixed codes; the image stores only Cq (K x m), so its bits are those
of vq-k<K>-d<m>; the low rank shapes the clustering and the trained
parameters, not the stream.

Choosing r before training (`rank_errors`): with P orthonormal the error of
a rank-r clustering splits exactly into the low-rank error
|x - x P P^T|^2 (the trailing singular values) plus the clustering error in
r-space |x P - Z[code]|^2; both are measured per r (k-means on all
sub-vectors), and the estimate is the r of least total (`rank_estimate`:
over a model's layers, weighted by their sizes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from compress.quantize import _row_vectors, kmeans
from compress.train import QuantLinear, SpecDict, _cb_scale
from compress.vectors import from_vectors
from ssvq.config import LayerConfig
from ssvq.errors import ConfigError


@dataclass(frozen=True)
class LR2VQ(SpecDict):
    method: ClassVar[str] = "lr2vq"
    k: int = 256
    d: int = 8
    rank: int = 4
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.rank <= self.d:
            raise ConfigError(f"LR2VQ: rank: expected 1..d={self.d}, found {self.rank}")
        self.layer_config

    @property
    def layer_config(self) -> LayerConfig:
        return LayerConfig("vq", k=self.k, d=self.d, m=1, coef_bits=0)

    def layer_class(self) -> type:
        return LR2VQLinear


def low_rank_cluster(x: np.ndarray, k: int, rank: int, seed: int = 0):
    """(P (m, r), Z (k, r), codes (n,), low-rank error, clustering error) of
    sub-vectors x (n, m); errors are sums of squares."""
    x = np.asarray(x, np.float64)
    _, sv, vt = np.linalg.svd(x, full_matrices=False)
    p = vt[:rank].T
    y = x @ p
    z, codes = kmeans(y.astype(np.float32), k, seed)
    z = z.astype(np.float64)
    low = float(np.sum(sv[rank:] ** 2))
    clus = float(np.sum((y - z[codes]) ** 2))
    return p, z, codes, low, clus


def rank_errors(w: np.ndarray, k: int, d: int, ranks, seed: int = 0) -> list[dict]:
    """Per rank r: low-rank, clustering and total error of the rank-r
    clustering of w's sub-vectors, relative to their energy."""
    x, _, _ = _row_vectors(np.asarray(w, np.float32), d)
    e = float(np.sum(np.asarray(x, np.float64) ** 2)) or 1.0
    out = []
    for r in ranks:
        _, _, _, low, clus = low_rank_cluster(x, k, r, seed)
        out.append({"rank": r, "low_rank": low / e, "clustering": clus / e,
                    "total": (low + clus) / e})
    return out


def rank_estimate(weights, k: int, d: int, ranks, seed: int = 0) -> list[dict]:
    """rank_errors over a model's layers, each layer weighted by its number of
    weights: per rank r, {"rank", "low_rank", "clustering", "total"}."""
    ranks = list(ranks)
    acc = {r: {"low_rank": 0.0, "clustering": 0.0, "total": 0.0} for r in ranks}
    n = 0
    for w in weights:
        for e in rank_errors(w, k, d, ranks, seed):
            for f in acc[e["rank"]]:
                acc[e["rank"]][f] += e[f] * w.size
        n += w.size
    return [{"rank": r, **{f: v / n for f, v in acc[r].items()}} for r in ranks]


class LR2VQLinear(QuantLinear):
    method = "lr2vq"

    def __init__(self, linear: nn.Linear, spec: LR2VQ, name: str):
        super().__init__(linear, spec, name)
        w = linear.weight.detach().float().cpu().numpy()
        x, rms, v = _row_vectors(w, spec.d)
        p, z, codes, _, _ = low_rank_cluster(x, spec.k, spec.rank, spec.seed)
        self.latent_codebook = nn.Parameter(torch.from_numpy(z.astype(np.float32)))   # (K, r)
        self.map = nn.Parameter(torch.from_numpy(p.T.astype(np.float32).copy()))    # (r, m)
        self.v = v
        self.register_buffer("codes", torch.from_numpy(codes.reshape(self.out_features, v)))
        # least-squares row scale for the initial codebook (the stream never carries it)
        with torch.no_grad():
            q = from_vectors(self.codebook_q()[self.codes.reshape(-1)], self.out_features,
                             self.in_features).double().numpy()
        num = (w.astype(np.float64) * q).sum(1)
        den = (q * q).sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            fit = num / den
        rs = np.where(np.isfinite(fit) & (fit > 0), fit, rms)
        self.log_scale = nn.Parameter(torch.from_numpy(np.log(rs).astype(np.float32)))

    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def codebook(self) -> torch.Tensor:
        """C = Z U, (K, m)."""
        return self.latent_codebook @ self.map

    def codebook_q(self) -> torch.Tensor:
        c = self.codebook()
        cs = _cb_scale(c, True)
        return c + (torch.round(c / cs) * cs - c).detach()

    def weight_q(self) -> torch.Tensor:
        rec = self.codebook_q()[self.codes.reshape(-1)]
        return from_vectors(rec, self.out_features, self.in_features) * self.scale()[:, None]

    def groups(self):
        return {"codebook": [self.latent_codebook], "map": [self.map], "scale": [self.log_scale]}

    def image_fields(self):
        with torch.no_grad():
            c = self.codebook()
            cs = _cb_scale(c, True)
            q = torch.round(c / cs).clamp(-127, 127).to(torch.int64).numpy()
        fields = {"codebook": q.astype(np.int8),
                  "codes": self.codes.numpy().astype(np.int32)[:, :, None]}
        return self.spec.layer_config, fields, self.scale().detach().double().numpy(), float(cs)
