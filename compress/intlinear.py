"""The accelerator's integer arithmetic as a drop-in for nn.Linear, vectorised
over tokens: what a model computes when every compressed layer runs on the
accelerator (the golden model the RTL equals), not fake quantization.

Per layer image (ssvq.reference states the rule, compress.quantize defines the
scales from calibration):

    a   = clip(rint(x / act_scale), -128, 127)          quantize_act, int8
    acc = a @ W_int.T                                    exact integers
    y   = requantize(acc, bias, mult, shift)             int8
    out = y * out_scale

The integer product runs as a float BLAS matmul because that is exact here:
|a| <= 128 and W_int is integer, so every partial sum is an integer of
magnitude at most 128 * max_r sum_c |W_int[r, c]|, represented exactly in
float32 below 2**24 and in float64 below 2**53 (each layer takes the cheapest
exact one; a layer beyond 2**53 is refused). The requantization is int64
torch with the same floor shift as ssvq.reference.requantize.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ssvq.image import LayerImage
from ssvq.reference import weight_matrix

ACT_MIN, ACT_MAX = -128, 127
EXACT = ((torch.float32, 1 << 24), (torch.float64, 1 << 53))


def exact_dtype(w: np.ndarray) -> torch.dtype:
    """The float dtype in which int8 activations times `w` accumulate exactly."""
    w = np.asarray(w, np.int64)
    bound = (-ACT_MIN) * int(np.abs(w).sum(axis=1).max(initial=0))
    for dtype, limit in EXACT:
        if bound < limit:
            return dtype
    raise ValueError(f"integer forward: |accumulator| may reach {bound}, beyond exact "
                     f"float64 (2**53)")


class IntegerLinear(nn.Module):
    """One layer image's integer forward: float input -> float output (module doc).
    `quantize`, `integer` and `dequantize` are its three steps; `integer` maps
    int8 activations to the image's int8 outputs (ssvq.reference.outputs)."""

    def __init__(self, img: LayerImage):
        super().__init__()
        w = weight_matrix(img)
        self.name = img.name
        self.in_features, self.out_features = img.cols, img.rows
        self.acc_dtype = exact_dtype(w)
        self.act_scale = float(np.asarray(img.scales["act_scale"]))
        self.out_scale = float(np.asarray(img.scales["out_scale"]))
        shift = np.asarray(img.shift, np.int64)
        wt = torch.from_numpy(np.ascontiguousarray(w.T)).to(self.acc_dtype)
        self.register_buffer("wt", wt)
        self.register_buffer("bias_int", torch.from_numpy(np.asarray(img.bias, np.int64)))
        self.register_buffer("mult", torch.from_numpy(np.asarray(img.mult, np.int64)))
        self.register_buffer("shift", torch.from_numpy(shift))
        self.register_buffer("rounding", torch.from_numpy(np.int64(1) << (shift - 1)))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """compress.quantize.quantize_act in torch: float64 divide, half-to-even round."""
        return torch.clamp(torch.round(x.to(torch.float64) / self.act_scale),
                           ACT_MIN, ACT_MAX).to(torch.int8)

    def integer(self, a: torch.Tensor) -> torch.Tensor:
        """int8 activations (..., cols) -> int8 outputs (..., rows)."""
        acc = (a.to(self.acc_dtype) @ self.wt).to(torch.int64)
        y = (acc + self.bias_int) * self.mult + self.rounding
        y = torch.bitwise_right_shift(y, self.shift)           # floor, as >> on int64
        return torch.clamp(y, ACT_MIN, ACT_MAX).to(torch.int8)

    def dequantize(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return (y.to(torch.float64) * self.out_scale).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequantize(self.integer(self.quantize(x)), x.dtype)

    def extra_repr(self) -> str:
        return (f"{self.name}: {self.in_features} -> {self.out_features}, accumulate in "
                f"{self.acc_dtype}")


class IntegerChain(nn.Module):
    """A low-rank pair (<layer>#B then <layer>#A, A's input_from = B): the int8
    outputs of each factor are the next one's activations directly, as on the
    accelerator (no float round trip between them)."""

    def __init__(self, layers: list[IntegerLinear]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.in_features = layers[0].in_features
        self.out_features = layers[-1].out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.layers[0].quantize(x)
        for layer in self.layers:
            a = layer.integer(a)
        return self.layers[-1].dequantize(a, x.dtype)


def _chains(imgs: list[LayerImage]) -> dict[str, list[LayerImage]]:
    """{model layer name: its images in run order}: one image, or a pair's
    factors ordered by input_from."""
    groups: dict[str, list[LayerImage]] = {}
    for im in imgs:
        groups.setdefault(im.name.partition("#")[0], []).append(im)
    out = {}
    for name, group in groups.items():
        by_source = {im.input_from: im for im in group}
        order, src = [], None
        while src in by_source:
            order.append(by_source[src])
            src = order[-1].name
        if len(order) != len(group):
            raise ValueError(f"integer forward: layer {name}: images "
                             f"{[im.name for im in group]} do not form one chain")
        out[name] = order
    return out


def integer_model(model: nn.Module, imgs: list[LayerImage], inplace: bool = False
                  ) -> nn.Module:
    """A copy of `model` (or model itself, inplace) in which the nn.Linear named
    after every image (or low-rank pair) computes the accelerator's integer
    forward of that image; everything else is unchanged."""
    m = model if inplace else copy.deepcopy(model)
    mods = dict(m.named_modules())
    for name, chain in _chains(imgs).items():
        old = mods.get(name)
        if old is None:
            raise ValueError(f"integer forward: image {chain[0].name}: the model has no "
                             f"module {name!r}")
        new = (IntegerLinear(chain[0]) if len(chain) == 1
               else IntegerChain([IntegerLinear(im) for im in chain]))
        shape = (getattr(old, "in_features", None), getattr(old, "out_features", None))
        if shape != (new.in_features, new.out_features):
            raise ValueError(f"integer forward: layer {name}: the model's module is "
                             f"{shape[0]} -> {shape[1]}, the image "
                             f"{new.in_features} -> {new.out_features}")
        parent, _, leaf = name.rpartition(".")
        setattr(m.get_submodule(parent) if parent else m, leaf, new)
    return m
