"""The accelerator's integer arithmetic as a drop-in for nn.Linear, vectorised
over tokens: what a model computes when every compressed layer runs on the
accelerator (the golden model the RTL equals), not fake quantization.

Per layer image (ssvq.reference states the rule, compress.calib defines the
scales from calibration):

    a   = clip(rint(x / act_scale) + act_zero, -128, 127)   quantize_act, int8
    acc = a @ W_int.T                                        exact integers
    y   = requantize(acc, bias, mult, shift)                 int8
    out = y * out_scale                                      one scale, or one per row

(the bias holds -act_zero * sum_c W_int[r, c], so the zero point needs nothing
here beyond the quantizer)

Everything runs in float arithmetic because it is exact here, and float
kernels vectorise where int64 multiplies do not (4-9x faster on MiniLM's
layers):

* the product: |a| <= 128 and W_int is integer, so every partial sum is an
  integer of magnitude at most 128 * max_r sum_c |W_int[r, c]|, exact in a
  float32 BLAS matmul below 2**24 and in float64 below 2**53 (each layer takes
  the cheaper exact one);
* the requantization: P = (acc + bias) * mult is an integer below 2**53
  (format limits: |acc| <= 128 * 4080 * 65535 < 2**35, |bias| < 2**31, mult
  < 2**16; checked per layer), so q = (acc + bias) * (mult * 2**-shift) is P
  scaled by a power of two, exact in float64; and floor((P + 2**(shift-1)) /
  2**shift) = floor(q) + (q - floor(q) >= 1/2), where q - floor(q) is exact too.
A layer outside these bounds is refused rather than computed inexactly.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from compress.calib import ACT_MAX, ACT_MIN, act_params
from ssvq.image import LayerImage
from ssvq.reference import weight_matrix

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
    int8 activations to the image's int8 outputs (ssvq.reference.outputs).
    Between the steps, values travel as floats holding exact integers."""

    def __init__(self, img: LayerImage):
        super().__init__()
        w = weight_matrix(img)
        self.name = img.name
        self.in_features, self.out_features = img.cols, img.rows
        self.acc_dtype = exact_dtype(w)
        self.act_scale, self.act_zero = act_params(img.scales)
        bias = np.asarray(img.bias, np.int64)
        mult = np.asarray(img.mult, np.int64)
        shift = np.asarray(img.shift, np.int64)
        acc_max = (-ACT_MIN) * int(np.abs(w).sum(axis=1).max(initial=0))
        p_max = (acc_max + int(np.abs(bias).max(initial=0))) * int(mult.max(initial=0))
        if p_max >= 1 << 53:
            raise ValueError(f"integer forward: layer {img.name}: (acc + bias) * mult may "
                             f"reach {p_max}, beyond exact float64 (2**53)")
        wt = torch.from_numpy(np.ascontiguousarray(w.T)).to(self.acc_dtype)
        self.register_buffer("wt", wt)
        # () or (rows,): broadcasts over the last dimension of the outputs
        self.register_buffer("out_scale", torch.from_numpy(
            np.array(img.scales["out_scale"], np.float64)))
        self.register_buffer("bias_f", torch.from_numpy(bias.astype(np.float64)))
        # mult * 2**-shift: a 16-bit integer times a power of two, exact in float64
        self.register_buffer("scale_f", torch.from_numpy(np.ldexp(mult.astype(np.float64),
                                                                  -shift)))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """compress.calib.quantize_act in torch (float64 divide, half-to-even
        round, zero point, clip), as exact integers in the accumulation dtype."""
        a = x.to(torch.float64)
        a.div_(self.act_scale).round_().add_(self.act_zero).clamp_(ACT_MIN, ACT_MAX)
        return a.to(self.acc_dtype)

    def requantize(self, acc: torch.Tensor) -> torch.Tensor:
        """ssvq.reference.requantize on exact-integer float accumulators; float64
        exact integers in -128..127 (module doc)."""
        q = acc.to(torch.float64)
        q.add_(self.bias_f).mul_(self.scale_f)
        y = torch.floor(q)
        q.sub_(y).ge_(0.5)                     # the fraction, then 1.0 where it rounds up
        return y.add_(q).clamp_(ACT_MIN, ACT_MAX)

    def integer(self, a: torch.Tensor) -> torch.Tensor:
        """int8 activations (..., cols) -> the image's int8 outputs (..., rows)."""
        return self.requantize(a.to(self.acc_dtype) @ self.wt).to(torch.int8)

    def dequantize(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """y * out_scale in float64, rounded once to dtype."""
        return self._dequantize_(y.to(torch.float64, copy=True), dtype)

    def _dequantize_(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # in place on requantize's own float64 result: at a transformer's batch
        # size a fresh temporary costs more than the multiply
        return y.mul_(self.out_scale).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._dequantize_(self.requantize(self.quantize(x) @ self.wt), x.dtype)

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
        y = self.layers[0].quantize(x)
        for layer in self.layers:
            y = layer.requantize(y.to(layer.acc_dtype) @ layer.wt)
        return self.layers[-1]._dequantize_(y, x.dtype)


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
