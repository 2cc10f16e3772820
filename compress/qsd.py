"""Quantized sparse decomposition (method "qsd", after arXiv 2207.11048),
exported on the additive decode: M = 2 codewords with signed coefficients.

Per layer the rows (in units of a per-row scale s) are cut into D-vectors,
X (n, D) ~ B A: A is a dictionary of 2K atoms (two codebooks of K on the
8-bit grid, A = [A_1; A_2]), B (n, 2K) a sparse quantized code matrix in

    S = {B : each row has at most one nonzero among its first K entries and
         one among its last K, every entry an integer in lo..hi}

(lo..hi = -(2^(c-1)) .. 2^(c-1)-1, coef_bits c), which is exactly what a
vq-k<K>-d<D>-m2-c<c> image stores: code_i = the nonzero's index in half i,
coef_i = its value. B is found by projected gradient descent: a gradient
step, then the Euclidean projection onto S (`project`): per half, every
entry is rounded and clipped, and the one entry kept is the one whose
rounding loses least, argmax_j b_j^2 - (b_j - q_j)^2 (the set is a union of
one-dimensional integer lattices, so this is the exact projection).

Initialisation: compress.quantize's post-training vq-k-d-m2-c image (B and
A read from it), then `pgd_iters` PGD steps on |X - B A|^2 (step 1 / L,
L = the largest eigenvalue of A A^T) alternating with least-squares steps of
A. Training: B is a dense parameter projected onto S after every optimizer
step (QuantizedModel.step), A and s learn by gradient; forward passes
always see a B in S, so the image is what training computes.
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
from ssvq.config import COEF_BITS_MAX, LayerConfig
from ssvq.errors import ConfigError


@dataclass(frozen=True)
class QSD(SpecDict):
    method: ClassVar[str] = "qsd"
    k: int = 16
    d: int = 8
    coef_bits: int = 4
    pgd_iters: int = 30
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.coef_bits <= COEF_BITS_MAX:
            raise ConfigError(f"QSD: coef_bits: expected 1..{COEF_BITS_MAX}, found "
                              f"{self.coef_bits}")
        self.layer_config

    @property
    def layer_config(self) -> LayerConfig:
        return LayerConfig("vq", k=self.k, d=self.d, m=2, coef_bits=self.coef_bits)

    @property
    def coef_range(self) -> tuple[int, int]:
        half = 1 << (self.coef_bits - 1)
        return -half, half - 1

    def layer_class(self) -> type:
        return QSDLinear


def project(b: torch.Tensor, k: int, lo: int, hi: int) -> torch.Tensor:
    """The Euclidean projection of b (n, 2k) onto S (module docstring)."""
    out = torch.zeros_like(b)
    for h in range(2):
        part = b[:, h * k:(h + 1) * k]
        q = torch.round(part).clamp(lo, hi)
        gain = part * part - (part - q) ** 2
        j = gain.argmax(1, keepdim=True)
        keep = gain.gather(1, j) > 0          # else all-zero is at least as close
        out[:, h * k:(h + 1) * k].scatter_(1, j, torch.where(keep, q.gather(1, j),
                                                             torch.zeros_like(j, dtype=b.dtype)))
    return out


def dictionary_grid(a: torch.Tensor) -> torch.Tensor:
    cs = _cb_scale(a, True)
    return a + (torch.round(a / cs) * cs - a).detach()


@torch.no_grad()
def pgd(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, k: int, lo: int, hi: int,
        iters: int) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """PGD on |x - b a|^2 for b (projected onto S), alternating with a
    least-squares update of a. Returns (a, b, error per iteration)."""
    errs = []
    for _ in range(iters):
        lip = torch.linalg.eigvalsh(a @ a.T).max().clamp_min(1e-12)
        b = project(b - ((b @ a - x) @ a.T) / lip, k, lo, hi)
        gram = b.T @ b + 1e-6 * torch.eye(len(a))
        a = torch.linalg.solve(gram, b.T @ x)
        errs.append(float(((x - b @ a) ** 2).sum()))
    return a, b, errs


class QSDLinear(QuantLinear):
    method = "qsd"

    def __init__(self, linear: nn.Linear, spec: QSD, name: str):
        super().__init__(linear, spec, name)
        w = linear.weight.detach().float().cpu().numpy()
        lc = spec.layer_config
        fields, rs, cs = quantize_weights(w, lc, seed=spec.seed, name=name)
        k = spec.k
        a = torch.from_numpy(np.asarray(fields["codebook"], np.float32) * np.float32(cs))
        codes = torch.from_numpy(np.asarray(fields["codes"], np.int64)).reshape(-1, 2)
        coefs = torch.from_numpy(np.asarray(fields["coefs"], np.float32)).reshape(-1, 2)
        b = torch.zeros(len(codes), 2 * k)
        for h in range(2):
            b[torch.arange(len(codes)), h * k + codes[:, h]] += coefs[:, h]
        self.latent_rows = torch.from_numpy(w / rs[:, None].astype(np.float32))
        x = to_vectors(self.latent_rows, spec.d)
        a, b, self.pgd_errors = pgd(x, a, b, k, *spec.coef_range, spec.pgd_iters)
        self.dictionary = nn.Parameter(a)
        self.codes_dense = nn.Parameter(project(b, k, *spec.coef_range))
        self.log_scale = nn.Parameter(torch.from_numpy(np.log(rs).astype(np.float32)))

    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def weight_q(self) -> torch.Tensor:
        rec = self.codes_dense @ dictionary_grid(self.dictionary)
        return from_vectors(rec, self.out_features, self.in_features) * self.scale()[:, None]

    def groups(self):
        return {"latent": [self.codes_dense], "codebook": [self.dictionary],
                "scale": [self.log_scale]}

    @torch.no_grad()
    def after_step(self, step: int, progress: float | None) -> dict:
        self.codes_dense.copy_(project(self.codes_dense, self.spec.k, *self.spec.coef_range))
        return {}

    def image_fields(self):
        k = self.spec.k
        with torch.no_grad():
            cs = _cb_scale(self.dictionary, True)
            q = torch.round(self.dictionary / cs).clamp(-127, 127).to(torch.int64).numpy()
            b = self.codes_dense.detach()
            codes = np.zeros((len(b), 2), np.int64)
            coefs = np.zeros((len(b), 2), np.int64)
            for h in range(2):
                part = b[:, h * k:(h + 1) * k]
                j = part.abs().argmax(1)
                codes[:, h] = j.numpy()
                coefs[:, h] = part.gather(1, j[:, None])[:, 0].round().to(torch.int64).numpy()
        shape = (self.out_features, -1, 2)
        fields = {"codebook": q.astype(np.int8), "codes": codes.reshape(shape).astype(np.int32),
                  "coefs": coefs.reshape(shape).astype(np.int8)}
        return self.spec.layer_config, fields, self.scale().detach().double().numpy(), float(cs)
