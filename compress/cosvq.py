"""Cosine-assignment VQ with hard top-1 and a straight-through estimator
(method "cosvq", after arXiv 2604.23172; the paper itself was not available
offline, so the projection rule below is this implementation's choice).

Per layer: latent weights t (rows x cols, in units of the row scale s), a
signed K x D codebook C on the 8-bit grid (cb_scale = max|C| / 127,
straight-through rounding, as VQLinear) and per-row scales s = exp(log_scale).
Every D-vector x of t is assigned by cosine similarity, hard top-1:

    j = argmax_j  x . Cq_j / |Cq_j|          (|x| is common to all j;
                                              |x . Cq_j| / |Cq_j| when the
                                              coefficient can be negative)

and reconstructed as the chosen codeword scaled onto the vector, the
projection x . Cq_j / |Cq_j|^2, rounded to an integer coefficient

    a = clamp(round(x . Cq_j / |Cq_j|^2), lo, hi),   x_hat = a * Cq_j,

(the rounded projection is the least-squares integer multiple of Cq_j, the
error being quadratic in a). Why a rounded coefficient and not the exact
projection: the accelerator has per-row scales and codebook entries but no
free per-vector scale; it does have per-vector signed coefficients
(LayerConfig coef_bits), so the projection scale becomes a coef_bits-bit
coefficient and the image is exactly what training computes:
W = s * a * Cq[j] = row_scale * cb_scale * (coef * codeword). Coefficients
use the range -(2^(c-1)-1) .. 2^(c-1) (with c >= 2 a negative coefficient
makes -Cq_j a codeword too, so the top-1 is taken over the 2K directions +-Cq_j,
by |cosine|; the larger half of the signed range goes to positive values; the image stores the codebook and the coefficients negated, as
compress.quantize does, leaving every product unchanged).

Gradients: straight-through to the latents (d x_hat / d x := I, so
dL/dt = dL/dW * s), and through the gather a * Cq[j] to the codebook (each
codeword receives its vectors' gradients times their coefficients) and to s.
Codes and coefficients are re-assigned after every `reassign_every`-th
optimizer step until `reassign_until` of training (then the codebook and
scales adapt to fixed codes); assignment by direction keeps every codeword
in use where nearest-neighbour assignment lets codewords die (collapse).
Initialisation: compress.quantize's post-training gain-shape quantizer of the
same LayerConfig (k-means of directions), then one cosine assignment.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from compress.train import QuantLinear, SpecDict, _cb_scale
from compress.quantize import quantize_weights
from compress.vectors import from_vectors, to_vectors
from ssvq.config import COEF_BITS_MAX, LayerConfig
from ssvq.errors import ConfigError


@dataclass(frozen=True)
class CosVQ(SpecDict):
    """k codewords of length d; coef_bits (1..4) bits per vector for the
    projection coefficient; re-assignment schedule."""
    method: ClassVar[str] = "cosvq"
    k: int = 256
    d: int = 8
    coef_bits: int = 4
    reassign_every: int = 1
    reassign_until: float = 0.9
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.coef_bits <= COEF_BITS_MAX:
            raise ConfigError(f"CosVQ: coef_bits: expected 1..{COEF_BITS_MAX} (the projection "
                              f"scale is a per-vector coefficient), found {self.coef_bits}")
        if self.reassign_every < 1:
            raise ConfigError(f"CosVQ: reassign_every: expected >= 1, found {self.reassign_every}")
        self.layer_config

    @property
    def layer_config(self) -> LayerConfig:
        return LayerConfig("vq", k=self.k, d=self.d, m=1, coef_bits=self.coef_bits)

    @property
    def coef_range(self) -> tuple[int, int]:
        """(lo, hi) of the training-side coefficient (the stored one negated)."""
        half = 1 << (self.coef_bits - 1)
        return -(half - 1), half

    def layer_class(self) -> type:
        return CosVQLinear


def cosine_assign(x: torch.Tensor, cq: torch.Tensor, lo: int, hi: int,
                  chunk: int = 32768) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard top-1 cosine assignment of vectors x (n, d) to codewords cq (k, d)
    and the rounded projection coefficient in lo..hi. With a coefficient range
    of both signs (lo < 0) -cq_j is a codeword too, so the score is |cosine|;
    zero codewords are never chosen unless all are zero (then a = 0)."""
    nn2 = (cq * cq).sum(1)
    inv = torch.where(nn2 > 0, nn2.rsqrt(), torch.zeros_like(nn2))
    codes = torch.empty(len(x), dtype=torch.int64)
    coefs = torch.empty(len(x), dtype=torch.int64)
    for i in range(0, len(x), chunk):
        dot = x[i:i + chunk] @ cq.T                                  # (n, k)
        cos = dot * inv
        score = torch.where(nn2 > 0, cos.abs() if lo < 0 else cos,
                            torch.full_like(dot, -torch.inf))
        j = score.argmax(1)
        dj = dot.gather(1, j[:, None])[:, 0]
        proj = torch.where(nn2[j] > 0, dj / torch.where(nn2[j] > 0, nn2[j], 1.0),
                           torch.zeros_like(dj))
        codes[i:i + chunk] = j
        coefs[i:i + chunk] = torch.round(proj).clamp(lo, hi).to(torch.int64)
    return codes, coefs


class CosVQLinear(QuantLinear):
    method = "cosvq"

    def __init__(self, linear: nn.Linear, spec: CosVQ, name: str):
        super().__init__(linear, spec, name)
        w = linear.weight.detach().float().cpu().numpy()
        fields, rs, cs = quantize_weights(w, spec.layer_config, seed=spec.seed, name=name)
        # the image's codebook is stored negated (module docstring)
        cb = -np.asarray(fields["codebook"], np.float32) * np.float32(cs)
        self.codebook = nn.Parameter(torch.from_numpy(cb))                   # (K, D)
        self.log_scale = nn.Parameter(torch.from_numpy(np.log(rs).astype(np.float32)))
        self.latent = nn.Parameter(torch.from_numpy(w / rs[:, None].astype(np.float32)))
        self.v = -(-self.in_features // spec.d)
        self.register_buffer("codes", torch.zeros(self.out_features, self.v, dtype=torch.int64))
        self.register_buffer("coefs", torch.zeros(self.out_features, self.v, dtype=torch.int64))
        self.assign()

    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def codebook_q(self) -> torch.Tensor:
        cs = _cb_scale(self.codebook, True)
        return self.codebook + (torch.round(self.codebook / cs) * cs - self.codebook).detach()

    @torch.no_grad()
    def assign(self) -> int:
        """Codes and coefficients from the current latents and codebook (the
        cosine rule); returns how many codes changed."""
        x = to_vectors(self.latent, self.spec.d)
        codes, coefs = cosine_assign(x, self.codebook_q(), *self.spec.coef_range)
        codes, coefs = codes.reshape(self.codes.shape), coefs.reshape(self.coefs.shape)
        changed = int((codes != self.codes).sum())
        self.codes.copy_(codes)
        self.coefs.copy_(coefs)
        return changed

    def weight_q(self) -> torch.Tensor:
        x = to_vectors(self.latent, self.spec.d)
        rec = self.coefs.reshape(-1, 1).to(x.dtype) * self.codebook_q()[self.codes.reshape(-1)]
        rec = rec + (x - x.detach())                      # straight-through to the latents
        return from_vectors(rec, self.out_features, self.in_features) * self.scale()[:, None]

    def groups(self):
        return {"codebook": [self.codebook], "scale": [self.log_scale], "latent": [self.latent]}

    def after_step(self, step: int, progress: float | None) -> dict:
        if step % self.spec.reassign_every or (progress is not None
                                               and progress > self.spec.reassign_until):
            return {}
        return {"codes_changed": self.assign()}

    def codewords_used(self) -> int:
        return int(torch.unique(self.codes[self.coefs != 0]).numel())

    def image_fields(self):
        with torch.no_grad():
            cs = _cb_scale(self.codebook, True)
            q = torch.round(self.codebook / cs).clamp(-127, 127).to(torch.int64).numpy()
        fields = {"codebook": (-q).astype(np.int8),
                  "codes": self.codes.numpy().astype(np.int32)[:, :, None],
                  "coefs": (-self.coefs.numpy()).astype(np.int8)[:, :, None]}
        return self.spec.layer_config, fields, self.scale().detach().double().numpy(), float(cs)
