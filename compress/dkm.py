"""Differentiable k-means clustering of weights (method "dkm", after DKM,
arXiv 2108.12659), exported as a plain VQ image.

Per layer: latent weights t (rows x cols, in units of a learnable per-row
scale s) cut into D-vectors x_i, and K centroids C kept between steps (a
buffer: they are a function of the weights, not free parameters). In every
training forward pass, starting from the centroids of the previous pass:

    A_ij = softmax_j(-|x_i - C_j|^2 / tau)          (attention to codewords)
    C_j  = sum_i A_ij x_i / sum_i A_ij              (the k-means-like update)

repeated `iters` times (the paper iterates to convergence; a few warm-started
iterations per step converge as the weights move slowly), gradients flowing
through every iteration to the weights. The weight is the attention-weighted
average of the final centroids on the 8-bit grid, x_hat_i = sum_j A_ij Cq_j,
and W = s * x_hat. tau = temperature x the mean squared distance of the
vectors to their nearest centroid at initialisation (a scale-free setting:
the weights' units do not matter).

Attention over candidates. At MiniLM's ~2-bit configuration (K=256, D=4) the
dense attention is a 2.65M x 256 matrix per pass over the 36 layers: one
training step took 76 s and 12 GB on 2 cores. With tau at a tenth of the mean
squared distance to the nearest centroid, a vector's weight on a codeword
falls as exp(-(distance excess)/tau), so nearly all of it sits on its few
nearest codewords. Each vector therefore attends to its `candidates` nearest
centroids only (softmax over those), found without gradient every
`refresh` training steps and kept in between; `candidates >= k` is the exact
dense DKM. `omitted_mass` is the largest dense weight any vector puts outside
its candidates: on MiniLM's K=256 D=4 start (block 0's query, block 5's FFN
output) 2.5e-8 at 16 candidates, 6e-3 at 8, 0.25 at 4; 16 candidates take 9 s a
step and 6 GB (8: 6 s).

Outside training (eval mode, to_float, export) the assignment is hard: every
vector takes its nearest 8-bit centroid, the image a vq-k<K>-d<D> layer, so
the evaluated model is the exported one. Initialisation: compress.quantize's
post-training VQ of the same config (k-means, least-squares row scales).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from compress.quantize import quantize_weights
from compress.train import QuantLinear, SpecDict, _cb_scale
from compress.vectors import from_vectors, to_vectors
from ssvq.config import LayerConfig
from ssvq.errors import ConfigError


@dataclass(frozen=True)
class DKM(SpecDict):
    method: ClassVar[str] = "dkm"
    k: int = 16
    d: int = 4
    temperature: float = 0.1
    iters: int = 3
    candidates: int = 16
    refresh: int = 10
    seed: int = 0

    def __post_init__(self):
        if not self.temperature > 0:
            raise ConfigError(f"DKM: temperature: expected > 0, found {self.temperature}")
        if self.iters < 0:
            raise ConfigError(f"DKM: iters: expected >= 0, found {self.iters}")
        if self.candidates < 1:
            raise ConfigError(f"DKM: candidates: expected >= 1, found {self.candidates}")
        if self.refresh < 1:
            raise ConfigError(f"DKM: refresh: expected >= 1, found {self.refresh}")
        self.layer_config

    @property
    def layer_config(self) -> LayerConfig:
        return LayerConfig("vq", k=self.k, d=self.d, m=1, coef_bits=0)

    def layer_class(self) -> type:
        return DKMLinear


CHUNK = 1 << 16  # vectors per no-gradient distance block: 64 MB at K=256


def sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """|x_i - c_j|^2, (n, k), clamped at 0 against cancellation."""
    return ((x * x).sum(1, keepdim=True) - 2.0 * x @ c.T + (c * c).sum(1)[None]).clamp_min(0.0)


@torch.no_grad()
def nearest(x: torch.Tensor, c: torch.Tensor, t: int) -> torch.Tensor:
    """Indices (n, t) of each vector's t nearest centroids, nearest first,
    computed a block of CHUNK vectors at a time."""
    t = min(t, c.shape[0])
    out = [torch.topk(sq_dist(x[i:i + CHUNK], c), t, dim=1, largest=False).indices
           for i in range(0, x.shape[0], CHUNK)]
    return torch.cat(out) if out else torch.zeros(0, t, dtype=torch.int64)


def attention(x: torch.Tensor, c: torch.Tensor, tau: float | torch.Tensor,
              idx: torch.Tensor | None = None) -> torch.Tensor:
    """A_ij = softmax over j in idx[i] of -|x_i - c_j|^2 / tau, (n, t): entry
    (i, s) is vector i's weight on centroid idx[i, s] (idx None: all
    centroids, the dense DKM)."""
    if idx is None:
        return torch.softmax(-sq_dist(x, c) / tau, dim=1)
    dist = ((x[:, None, :] - c[idx]) ** 2).sum(-1)
    return torch.softmax(-dist / tau, dim=1)


def reconstruct(a: torch.Tensor, c: torch.Tensor, idx: torch.Tensor | None = None):
    """x_hat_i = sum_s A_is c_idx[i,s]."""
    return a @ c if idx is None else (a[:, :, None] * c[idx]).sum(1)


def dkm_update(x: torch.Tensor, c: torch.Tensor, tau, iters: int,
               idx: torch.Tensor | None = None) -> torch.Tensor:
    """`iters` differentiable k-means steps C_j = sum_i A_ij x_i / sum_i A_ij
    from centroids c; a centroid with (numerically) no attention keeps its place."""
    k, d = c.shape
    for _ in range(iters):
        a = attention(x, c, tau, idx)
        if idx is None:
            mass, num = a.sum(0), a.T @ x
        else:
            flat = idx.reshape(-1)
            mass = torch.zeros(k, dtype=x.dtype).index_add(0, flat, a.reshape(-1))
            num = torch.zeros(k, d, dtype=x.dtype).index_add(
                0, flat, (a[:, :, None] * x[:, None, :]).reshape(-1, d))
        new = num / mass.clamp_min(1e-12)[:, None]
        c = torch.where((mass > 1e-12)[:, None], new, c)
    return c


@torch.no_grad()
def omitted_mass(x: torch.Tensor, c: torch.Tensor, tau, t: int) -> float:
    """Largest dense-attention weight any vector puts outside its t nearest
    centroids (what the candidate truncation drops)."""
    worst = 0.0
    for i in range(0, x.shape[0], CHUNK):
        a = torch.sort(attention(x[i:i + CHUNK], c, tau), dim=1, descending=True).values
        worst = max(worst, float(a[:, t:].sum(1).max()))
    return worst


def grid(c: torch.Tensor) -> torch.Tensor:
    """Centroids on the signed 8-bit grid, straight-through."""
    cs = _cb_scale(c, True)
    return c + (torch.round(c / cs) * cs - c).detach()


class DKMLinear(QuantLinear):
    method = "dkm"

    def __init__(self, linear: nn.Linear, spec: DKM, name: str):
        super().__init__(linear, spec, name)
        w = linear.weight.detach().float().cpu().numpy()
        fields, rs, cs = quantize_weights(w, spec.layer_config, seed=spec.seed, name=name)
        self.register_buffer("centroids", torch.from_numpy(
            np.asarray(fields["codebook"], np.float32) * np.float32(cs)))
        self.log_scale = nn.Parameter(torch.from_numpy(np.log(rs).astype(np.float32)))
        self.latent = nn.Parameter(torch.from_numpy(w / rs[:, None].astype(np.float32)))
        with torch.no_grad():
            x = to_vectors(self.latent, spec.d)
            near = ((x - self.centroids[nearest(x, self.centroids, 1)[:, 0]]) ** 2).sum(1).mean()
        tau = spec.temperature * float(near) if float(near) > 0 else spec.temperature
        self.register_buffer("tau", torch.tensor(tau, dtype=torch.float32))
        self.dense = spec.candidates >= spec.k
        self.cand: torch.Tensor | None = None
        self.passes = 0
        self._codes = None

    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def vectors(self) -> torch.Tensor:
        return to_vectors(self.latent, self.spec.d)

    @torch.no_grad()
    def hard_codes(self) -> torch.Tensor:
        """Each vector's nearest 8-bit centroid (eval and export). Kept until the
        latents or centroids change (their in-place version counters): an eval
        forward would otherwise search all K codewords of every vector again for
        each batch (at K=256, 5 s a pass; calibration runs 128 of them)."""
        key = (self.latent._version, self.centroids._version)
        if self._codes is None or self._codes[0] != key:
            self._codes = key, nearest(self.vectors(), grid(self.centroids), 1)[:, 0]
        return self._codes[1]

    def candidate_set(self, x: torch.Tensor) -> torch.Tensor | None:
        """None (dense) or each vector's nearest `candidates` centroids, found
        again every `refresh` training passes."""
        if self.dense:
            return None
        if self.cand is None or self.passes % self.spec.refresh == 0:
            self.cand = nearest(x.detach(), self.centroids, self.spec.candidates)
        return self.cand

    def weight_q(self) -> torch.Tensor:
        x = self.vectors()
        if self.training:
            idx = self.candidate_set(x)
            self.passes += 1
            c = dkm_update(x, self.centroids.clone(), self.tau, self.spec.iters, idx)
            with torch.no_grad():
                self.centroids.copy_(c)
            cq = grid(c)
            rec = reconstruct(attention(x, cq, self.tau, idx), cq, idx)
        else:
            rec = grid(self.centroids)[self.hard_codes()]
        return from_vectors(rec, self.out_features, self.in_features) * self.scale()[:, None]
    def groups(self):
        return {"latent": [self.latent], "scale": [self.log_scale]}

    def image_fields(self):
        with torch.no_grad():
            cs = _cb_scale(self.centroids, True)
            q = torch.round(self.centroids / cs).clamp(-127, 127).to(torch.int64).numpy()
            codes = self.hard_codes().reshape(self.out_features, -1).numpy()
        fields = {"codebook": q.astype(np.int8), "codes": codes.astype(np.int32)[:, :, None]}
        return self.spec.layer_config, fields, self.scale().detach().double().numpy(), float(cs)
