"""Differentiable quantization with pseudo-quantization noise and learned bit
widths (method "diffq", after DiffQ, arXiv 2104.09987), exported as int-b.

Per layer: a float shadow weight w and one bit parameter per group of weights
(`group_size` consecutive weights of a row; 0 = the whole row),

    b_g = b_min + (b_max - b_min) * sigmoid(logit_g).

Training forward: w + Delta_g * u, u ~ U(-1/2, 1/2) drawn afresh per weight
and step, Delta_g = (max_g w - min_g w) / (2^b_g - 1), the step of a b_g-bit
grid over the group's range (the range is a statistic: no gradient flows
through max/min). The bit gradient flows through Delta_g. The size penalty
added to the loss (QuantizedModel.size_penalty) is
penalty * sum_g b_g n_g / N, N the model's quantized weights: penalty times
the model's mean bits per weight.

Export: the accelerator runs one width per layer (int1..int6, int8) with a
per-row scale, so the layer's mean bit width is rounded to the nearest width
the accelerator has (ties up, 7 -> 8; int1 only when b_min <= 1) and the
shadow weight exported as that int-b image (compress.quantize's per-row scale
search). Eval mode and to_float compute exactly that exported model, never
the noisy one. Why one group per row by default: the image has one scale
per row and one width per layer, so finer groups would only change the
noise the bits are trained against, not what is exported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from compress.quantize import int_row_scale, int_weights
from compress.train import QuantLinear, SpecDict
from ssvq.config import INT_BITS, LayerConfig
from ssvq.errors import ConfigError


@dataclass(frozen=True)
class DiffQ(SpecDict):
    method: ClassVar[str] = "diffq"
    b_min: float = 2.0
    b_max: float = 8.0
    init_bits: float = 6.0
    group_size: int = 0
    penalty: float = 1e-2
    seed: int = 0

    def __post_init__(self):
        if not 1.0 <= self.b_min < self.b_max <= 8.0:
            raise ConfigError(f"DiffQ: need 1 <= b_min < b_max <= 8, found {self.b_min}, "
                              f"{self.b_max}")
        if not self.b_min < self.init_bits < self.b_max:
            raise ConfigError(f"DiffQ: init_bits: expected inside ({self.b_min}, {self.b_max}), "
                              f"found {self.init_bits}")
        if self.group_size < 0 or self.penalty < 0:
            raise ConfigError("DiffQ: group_size and penalty must be >= 0")

    def widths(self) -> tuple[int, ...]:
        """Widths an exported layer may take."""
        return tuple(b for b in INT_BITS if b >= 2 or self.b_min <= 1.0)

    def width(self, mean_bits: float) -> int:
        """The nearest width the accelerator runs, ties to the wider one."""
        return min(self.widths(), key=lambda b: (abs(b - mean_bits), -b))

    @property
    def layer_config(self) -> LayerConfig:
        """The width at init_bits (a trained layer exports its learned one)."""
        return LayerConfig("int", bits=self.width(self.init_bits))

    def layer_class(self) -> type:
        return DiffQLinear


class DiffQLinear(QuantLinear):
    method = "diffq"

    def __init__(self, linear: nn.Linear, spec: DiffQ, name: str):
        super().__init__(linear, spec, name)
        w = linear.weight.detach().float().clone()
        self.shadow = nn.Parameter(w)
        gs = spec.group_size or self.in_features
        self.gs = gs
        self.g = -(-self.in_features // gs)
        p = (spec.init_bits - spec.b_min) / (spec.b_max - spec.b_min)
        self.logit = nn.Parameter(torch.full((self.out_features, self.g), math.log(p / (1 - p))))
        # weights per group (the last group of a row may be shorter)
        n = torch.full((self.g,), float(gs))
        n[-1] = self.in_features - gs * (self.g - 1)
        self.register_buffer("group_weights", n)

    def group_bits(self) -> torch.Tensor:
        s = self.spec
        return s.b_min + (s.b_max - s.b_min) * torch.sigmoid(self.logit)

    def mean_bits(self) -> float:
        with torch.no_grad():
            return float((self.group_bits() * self.group_weights).sum()
                         / (self.out_features * self.in_features))

    def _grouped(self, w: torch.Tensor) -> torch.Tensor:
        pad = self.g * self.gs - self.in_features
        if pad:   # pad with the row's last weight: the last group's max and min stay
            w = torch.cat([w, w[:, -1:].expand(-1, pad)], 1)
        return w.reshape(self.out_features, self.g, self.gs)

    def step_size(self) -> torch.Tensor:
        """Delta_g = (max - min) / (2^b_g - 1), (rows, groups)."""
        wg = self._grouped(self.shadow.detach())
        rng = wg.amax(2) - wg.amin(2)
        return rng / (torch.exp2(self.group_bits()) - 1.0)

    def noise(self) -> torch.Tensor:
        u = torch.rand_like(self.shadow) - 0.5
        delta = self.step_size().repeat_interleave(self.gs, dim=1)[:, : self.in_features]
        return delta * u

    def export_config(self) -> LayerConfig:
        return LayerConfig("int", bits=self.spec.width(self.mean_bits()))

    def _int(self) -> tuple[np.ndarray, np.ndarray, int]:
        b = self.export_config().bits
        w = self.shadow.detach().double().numpy()
        rs = int_row_scale(w, b)
        return int_weights(w, b, rs), rs, b

    def weight_q(self) -> torch.Tensor:
        if self.training:
            return self.shadow + self.noise()
        q, rs, _ = self._int()
        return torch.from_numpy((rs[:, None] * 1.0 * q.astype(np.int64)).astype(np.float32))

    def size_penalty(self, total_weights: int) -> torch.Tensor:
        bits = (self.group_bits() * self.group_weights).sum()
        return self.spec.penalty * bits / total_weights

    def groups(self):
        return {"shadow": [self.shadow], "bits": [self.logit]}

    def image_fields(self):
        q, rs, _ = self._int()
        return self.export_config(), {"weights": q}, rs, 1.0
