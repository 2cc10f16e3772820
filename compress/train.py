"""Quantization-aware training: SSVQ with learnable signs, VQ, and uniform
int-b fake quantization, as a PyTorch-style wrapper that exports memory images.

Usage (your own loop)::

    qm = QuantizedModel(model, SSVQ(k=256, d=8), skip_below=4096)
    opt = torch.optim.Adam(qm.param_groups(lr=1e-3))
    for i, (x, y) in enumerate(loader):
        loss = F.cross_entropy(qm(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        qm.step(progress=i / total)          # sign freezing, codebook projection
    images = qm.export(calibration)          # list of ssvq.image.LayerImage
    qm.write_images("out/", calibration)     # the covering accelerator config

or the provided loop: ``fit(qm, loss_fn, batches, steps=... | budget_s=...)``.

Layers (every nn.Linear unless `layers` names them; per-layer `overrides`, e.g.
plan_overrides(plan, spec) for the configs of a compress.plan plan;
layers with fewer than `skip_below` weights stay float) are replaced in place
(in a deep copy unless inplace=True) by:

* ``SSVQLinear``: W[r, c] = sign(latent[r, c]) * C[code[r, v(c)], c mod D] * s[r]
  with a non-negative K x D magnitude codebook C (clamped in the forward pass,
  projected back to >= 0 after every step), per-row scale s = exp(log_scale),
  and one real-valued sign latent per weight. The forward pass uses sign()
  with a straight-through estimator (d sign / d latent := 1), so
  dL/dlatent = dL/dW * C[code] * s. C is rounded to the 8-bit grid the image
  stores (cb_scale = max C / 255, straight-through) in every forward pass, so
  training sees exactly the exported weights. Initialisation is the
  post-training weight side of compress.quantize.quantize_weights (faiss k-means
  on |w| / rms(row)); latents start at w / rms(row). With init="gptq" (SSVQ and
  VQ) it is compress.gptvq.gptvq_weights instead, from the layer's input
  statistics X^T X (QuantizedModel(..., calibration=...)): activation-weighted
  k-means, the GPTQ error-feedback sweep, codeword and H-weighted row-scale
  refits; latents start at the sweep's error-updated weights (in units of
  rms(row)), so their signs are the sweep's sign bits.
* ``VQLinear``: W = C[code] * s, signed C (cb_scale = max|C| / 127). The
  codeword gradient is the sum of its assigned weights' gradients times s,
  which autograd produces through the gather C[code].
* ``UniformLinear`` (int2..int6, int8): per-output-channel symmetric fake
  quantization W = s * clamp(round(w / s), lo, hi) (compress.quantize.int_range:
  -2^(b-1)..2^(b-1)-1, int8 -127..127) with a straight-through round, a float
  shadow weight w and a learnable per-row scale (LSQ-style gradient), starting
  from the post-training scale (compress.quantize.int_row_scale). It exports a
  real int-b image (LayerConfig int-b), so its bits are the bits it streams.

Sign freezing (SSVQ). Every `step()` counts, per latent, how often its sign
flipped. With progress p in [0, 1] (fraction of training done):
  threshold(p) = flip_threshold                          p <  freeze_start
               = flip_threshold * (freeze_end - p) / (freeze_end - freeze_start)
                                                          freeze_start <= p < freeze_end
  a latent freezes (keeps its current sign for good) as soon as its flip
  count exceeds threshold(p); at p >= freeze_end every latent is frozen, so
  the codebook, scales and other parameters get the remaining
  (1 - freeze_end) of training to adapt to the final signs. Frozen latents
  receive no gradient (torch.where in the forward pass) and their values are
  restored after every step (so optimizer momentum cannot move them).

Codes: fixed from the k-means initialisation (default) or, with
codes="reassign", every `reassign_every` steps before freeze_start each SSVQ
vector moves to the codeword nearest its |latent| vector (latents are a
shadow of w / s: the STE gradient grows |latent| where a larger magnitude
lowers the loss). Fixed is the default because it measured better: MiniLM
K=256 D=8, 5-minute single-thread distillation, held-out probe mean cosine
0.9035 with fixed codes against 0.8965 re-assigning every 50 steps (each
re-assignment moves vectors onto codewords the codebook was not trained for
and costs a visible dip); on digits the two are within one test image.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from compress.calib import capture_gram, capture_inputs
from compress.gptvq import DAMP, gptvq_weights
from compress.quantize import (dequantize, image_from_fields, int_range, int_row_scale,
                               layer_bits, quantize_weights)
from compress.run import write_model_images
from ssvq.config import AccelConfig, LayerConfig
from ssvq.errors import ConfigError
from ssvq.image import LayerImage

UNIFORM = {f"int{b}": b for b in (2, 3, 4, 5, 6, 8)}
METHODS = ("ssvq", "vq") + tuple(UNIFORM)
INITS = ("kmeans", "gptq")


# ------------------------------------------------------------------ specs
class SpecDict:
    """to_dict / from_dict of a frozen spec dataclass: every field (the
    training recipe, stored in the manifest of trained images)."""

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict, where: str | None = None):
        where = where or cls.__name__
        known = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected an object, found {type(d).__name__}")
        unknown = [k for k in d if k not in known]
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key; expected one of {known}")
        return cls(**d)


@dataclass(frozen=True)
class QuantSpec(SpecDict):
    """How one layer is quantized and trained.

    method: ssvq | vq | int2 .. int6 | int8. k, d: codebook entries and vector
    length (ssvq, vq). codes: "fixed" or "reassign" (ssvq). flip_threshold,
    freeze_start, freeze_end: the sign-freezing rule (module docstring).
    ste_clip: None for the identity straight-through estimator, or c to pass
    the gradient only where |latent| <= c. init: "kmeans" (the plain
    post-training start) or "gptq" (ssvq, vq: compress.gptvq's data-aware start,
    which needs calibration inputs), damp its Hessian damping.
    """
    method: str = "ssvq"
    k: int = 256
    d: int = 8
    codes: str = "fixed"
    reassign_every: int = 100
    flip_threshold: float = 4.0
    freeze_start: float = 0.4
    freeze_end: float = 0.8
    ste_clip: float | None = None
    seed: int = 0
    init: str = "kmeans"
    damp: float = DAMP

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"QuantSpec: method: expected one of {METHODS}, found "
                              f"{self.method!r}" + (" (int1 is post-training only)"
                                                    if self.method == "int1" else ""))
        if self.codes not in ("fixed", "reassign"):
            raise ConfigError(f"QuantSpec: codes: expected 'fixed' or 'reassign', found "
                              f"{self.codes!r}")
        if self.init not in INITS:
            raise ConfigError(f"QuantSpec: init: expected one of {INITS}, found {self.init!r}")
        if self.init == "gptq" and self.method not in ("ssvq", "vq"):
            raise ConfigError(f"QuantSpec: init 'gptq' is for ssvq and vq, found method "
                              f"{self.method!r}")
        if not (isinstance(self.damp, (int, float)) and self.damp > 0):
            raise ConfigError(f"QuantSpec: damp: expected a number > 0, found {self.damp!r}")
        if not 0.0 <= self.freeze_start <= self.freeze_end <= 1.0:
            raise ConfigError("QuantSpec: need 0 <= freeze_start <= freeze_end <= 1, found "
                              f"{self.freeze_start}, {self.freeze_end}")
        self.layer_config                           # k, d must make a legal layer config

    @property
    def bits(self) -> int | None:
        return UNIFORM.get(self.method)

    def layer_class(self) -> type:
        """The QuantLinear this spec trains (every spec type names its own, so
        QuantizedModel needs no list of methods)."""
        return LAYER_TYPES[self.method]

    @property
    def layer_config(self) -> LayerConfig:
        """The image configuration this spec exports."""
        if self.method in UNIFORM:
            return LayerConfig("int", bits=UNIFORM[self.method])
        return LayerConfig(self.method, k=self.k, d=self.d, m=1, coef_bits=0)


def SSVQ(k: int = 256, d: int = 8, **kw) -> QuantSpec:
    return QuantSpec("ssvq", k=k, d=d, **kw)


def VQ(k: int = 256, d: int = 4, **kw) -> QuantSpec:
    return QuantSpec("vq", k=k, d=d, **kw)


def Uniform(bits: int = 8, **kw) -> QuantSpec:
    """Uniform int-b QAT, b in 2..6 or 8; exports int-b images."""
    return QuantSpec(f"int{bits}", **kw)


# ------------------------------------------------------------------ STE pieces
class SignSTE(torch.autograd.Function):
    """sign with sign(0) = +1; backward passes the gradient straight through
    (optionally only where |x| <= clip)."""

    @staticmethod
    def forward(ctx, x, clip):
        ctx.save_for_backward(x)
        ctx.clip = clip
        return torch.where(x < 0, -torch.ones_like(x), torch.ones_like(x))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if ctx.clip is not None:
            g = g * (x.abs() <= ctx.clip).to(g.dtype)
        return g, None


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def _cb_scale(c: torch.Tensor, signed: bool) -> torch.Tensor:
    """Codebook step for the 8-bit grid: max|C| / 127 (signed) or max C / 255."""
    top = c.detach().abs().max() if signed else c.detach().max()
    qmax = 127.0 if signed else 255.0
    return torch.where(top > 0, top / qmax, torch.ones_like(top))


# ------------------------------------------------------------------ layers
class QuantLinear(nn.Module):
    """Base: a drop-in for nn.Linear whose weight is rebuilt each forward."""
    method = "?"

    def __init__(self, linear: nn.Linear, spec: QuantSpec, name: str):
        super().__init__()
        self.name, self.spec = name, spec
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone().float())

    def weight_q(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def weight(self) -> torch.Tensor:         # what nn.Linear users expect to read
        return self.weight_q()

    def forward(self, x):
        return nn.functional.linear(x, self.weight_q().to(x.dtype), self.bias)

    # names of parameter groups -> parameters, for optimizers
    def groups(self) -> dict[str, list[nn.Parameter]]:
        raise NotImplementedError

    def export_config(self) -> LayerConfig:
        """The LayerConfig the layer exports now (a method that learns its
        width, DiffQ, overrides it)."""
        return self.spec.layer_config

    def bits(self, mults: int = 32, bus: int = 64) -> int:
        """Bits the exported image streams (compress.quantize.layer_bits)."""
        return layer_bits(self.export_config(), self.out_features, self.in_features, mults,
                          bus)["total"]

    def after_step(self, step: int, progress: float | None) -> dict:
        """Bookkeeping after an optimizer step (QuantizedModel.step); returns
        numbers for the training log. Methods with a rule between steps
        (re-assignment, projection) override it."""
        return {}

    def size_penalty(self, total_weights: int) -> torch.Tensor | None:
        """A differentiable term fit() adds to the loss (DiffQ's model size),
        already weighted, total_weights being the model's quantized weights;
        None for methods without one."""
        return None

    def image_fields(self) -> tuple[LayerConfig, dict, np.ndarray, float]:
        """(layer config, integer fields, row_scale float64 (rows,), cb_scale)."""
        raise NotImplementedError

    def extra_repr(self):
        return f"{self.in_features} -> {self.out_features}, {self.spec.method}"


class _CodebookLinear(QuantLinear):
    signed = True

    def __init__(self, linear: nn.Linear, spec: QuantSpec, name: str,
                 gram: np.ndarray | None = None):
        """gram: X^T X of the layer's inputs, for init="gptq" (compress.gptvq)."""
        super().__init__(linear, spec, name)
        w = linear.weight.detach().float().cpu().numpy()
        self.init_targets = None        # init="gptq": the sweep's weights, for the latents
        self.init_errors: dict = {}
        if spec.init == "gptq":
            if gram is None:
                raise ConfigError(f"layer {name}: init 'gptq' needs the layer's input "
                                  f"statistics (QuantizedModel(..., calibration=...))")
            res = gptvq_weights(w, gram, spec.layer_config, seed=spec.seed, damp=spec.damp)
            fields, rs, cs = res.fields, res.row_scale, res.cb_scale
            self.init_targets, self.init_errors = res.targets, res.errors
            self.init_negative = res.fields.get("signs")
        else:
            fields, rs, cs = quantize_weights(w, spec.layer_config, seed=spec.seed, name=name)
        cb = torch.from_numpy(np.asarray(fields["codebook"], np.float32) * np.float32(cs))
        self.codebook = nn.Parameter(cb)                                    # (K, D)
        self.log_scale = nn.Parameter(torch.from_numpy(np.log(rs).astype(np.float32)))
        codes = np.asarray(fields["codes"], np.int64)[:, :, 0]              # (rows, V), m = 1
        self.register_buffer("codes", torch.from_numpy(codes))
        self.v = self.codes.shape[1]

    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def codebook_q(self) -> torch.Tensor:
        c = self.codebook if self.signed else self.codebook.clamp_min(0.0)
        cs = _cb_scale(c, self.signed)
        return c + (torch.round(c / cs) * cs - c).detach()

    def magnitudes(self) -> torch.Tensor:
        """C[codes] laid out as (rows, cols): an embedding-style gather, whose
        backward is the scatter-sum of the weight gradients into codewords."""
        c = self.codebook_q()
        m = c[self.codes].reshape(self.out_features, self.v * self.spec.d)
        return m[:, : self.in_features]

    def int_codebook(self) -> tuple[np.ndarray, float]:
        with torch.no_grad():
            c = self.codebook if self.signed else self.codebook.clamp_min(0.0)
            cs = _cb_scale(c, self.signed)
            q = torch.round(c / cs)
        lo, hi = (-127, 127) if self.signed else (0, 255)
        q = q.clamp(lo, hi).numpy().astype(np.int64)
        return q, float(cs)

    def groups(self):
        return {"codebook": [self.codebook], "scale": [self.log_scale]}

    def _fields(self):
        q, cs = self.int_codebook()
        dtype = np.int8 if self.signed else np.uint8
        fields = {"codebook": q.astype(dtype),
                  "codes": self.codes.numpy().astype(np.int32)[:, :, None]}
        rs = self.scale().detach().double().numpy()
        return fields, rs, cs


def _latents_with_signs(targets: np.ndarray, negative: np.ndarray) -> torch.Tensor:
    """float32 sign latents from the sweep's float64 weights, with sign(latent)
    exactly the exported sign bit: a negative weight that float32 rounds to -0
    (which SignSTE reads as +) becomes the smallest negative float32."""
    t = np.asarray(targets, np.float32)
    neg = np.asarray(negative, bool)
    t = np.where(neg, np.minimum(t, -np.finfo(np.float32).tiny), np.maximum(t, 0.0))
    return torch.from_numpy(t.astype(np.float32))


class VQLinear(_CodebookLinear):
    method = "vq"
    signed = True

    def weight_q(self):
        return self.magnitudes() * self.scale()[:, None]

    def image_fields(self):
        fields, rs, cs = self._fields()
        return self.spec.layer_config, fields, rs, cs


class SSVQLinear(_CodebookLinear):
    method = "ssvq"
    signed = False

    def __init__(self, linear: nn.Linear, spec: QuantSpec, name: str,
                 gram: np.ndarray | None = None):
        super().__init__(linear, spec, name, gram)
        w = linear.weight.detach().float()
        if self.init_targets is None:
            rms = w.pow(2).mean(dim=1, keepdim=True).sqrt()
            rms = torch.where(rms > 0, rms, torch.ones_like(rms))
            lat = w / rms
        else:
            lat = _latents_with_signs(self.init_targets, self.init_negative)
        self.latent = nn.Parameter(lat)
        neg = self.latent.detach() < 0
        self.register_buffer("frozen", torch.zeros_like(neg))
        self.register_buffer("frozen_sign", torch.ones_like(w))
        self.register_buffer("frozen_latent", torch.zeros_like(w))
        self.register_buffer("prev_neg", neg.clone())
        self.register_buffer("flips", torch.zeros(w.shape, dtype=torch.int32))
        self.register_buffer("init_neg", w < 0)             # the float weights' signs

    def signs(self) -> torch.Tensor:
        s = SignSTE.apply(self.latent, self.spec.ste_clip)
        return torch.where(self.frozen, self.frozen_sign, s)

    def weight_q(self):
        return self.signs() * self.magnitudes() * self.scale()[:, None]

    def groups(self):
        g = super().groups()
        g["latent"] = [self.latent]
        return g

    def negative(self) -> torch.Tensor:
        """Current sign bits (True = negative), frozen ones included."""
        with torch.no_grad():
            return torch.where(self.frozen, self.frozen_sign < 0, self.latent < 0)

    @torch.no_grad()
    def update_signs(self, threshold: float, freeze_all: bool) -> tuple[int, int]:
        """Bookkeeping after an optimizer step: restore frozen latents, count
        flips of the others, freeze the ones whose flip count exceeds
        `threshold` (all of them if freeze_all). Returns (flips, newly frozen)."""
        self.codebook.clamp_(min=0.0)
        lat = self.latent
        lat.copy_(torch.where(self.frozen, self.frozen_latent, lat))
        neg = lat < 0
        flipped = (neg != self.prev_neg) & ~self.frozen
        self.flips += flipped.to(torch.int32)
        self.prev_neg.copy_(neg)
        newly = ~self.frozen & ((self.flips.float() > threshold) | freeze_all)
        self.frozen_sign.copy_(torch.where(newly, torch.where(neg, -1.0, 1.0), self.frozen_sign))
        self.frozen_latent.copy_(torch.where(newly, lat, self.frozen_latent))
        self.frozen |= newly
        return int(flipped.sum()), int(newly.sum())

    @torch.no_grad()
    def reassign_codes(self, chunk: int = 65536) -> int:
        """Each vector to the (8-bit) codeword nearest its |latent| vector.
        Returns how many codes changed."""
        d = self.spec.d
        a = torch.zeros(self.out_features, self.v * d)
        a[:, : self.in_features] = self.latent.abs()
        a = a.reshape(-1, d)
        c = self.codebook_q()
        cn = (c * c).sum(1)
        new = torch.empty(len(a), dtype=torch.int64)
        for i in range(0, len(a), chunk):
            x = a[i:i + chunk]
            new[i:i + chunk] = (cn[None, :] - 2.0 * x @ c.T).argmin(1)
        new = new.reshape(self.codes.shape)
        changed = int((new != self.codes).sum())
        self.codes.copy_(new)
        return changed

    def image_fields(self):
        fields, rs, cs = self._fields()
        fields["signs"] = self.negative().numpy().astype(np.uint8)
        return self.spec.layer_config, fields, rs, cs

    def signs_changed(self) -> int:
        """Signs that differ from the original weights' signs now."""
        return int((self.negative() != self.init_neg).sum())


class UniformLinear(QuantLinear):
    """Per-output-channel symmetric int-b fake quantization (QAT) with a
    straight-through round and a learnable per-row scale."""

    def __init__(self, linear: nn.Linear, spec: QuantSpec, name: str):
        super().__init__(linear, spec, name)
        self.method = spec.method
        b = spec.bits
        self.qmin, self.qmax = int_range(b)       # int8: -127..127, as the post-training image
        w = linear.weight.detach().float()
        self.shadow = nn.Parameter(w.clone())
        s = int_row_scale(w.double().numpy(), b)  # the post-training scale
        self.log_scale = nn.Parameter(torch.from_numpy(np.log(s)).float())

    def scale(self):
        return self.log_scale.exp()

    def int_weights(self, s: torch.Tensor | None = None) -> torch.Tensor:
        s = self.scale() if s is None else s
        return torch.clamp(round_ste(self.shadow / s[:, None]), self.qmin, self.qmax)

    def weight_q(self):
        s = self.scale()
        return self.int_weights(s) * s[:, None]

    def groups(self):
        return {"shadow": [self.shadow], "scale": [self.log_scale]}

    def image_fields(self):
        with torch.no_grad():
            q = self.int_weights().numpy().astype(np.int8)
        rs = self.scale().detach().double().numpy()
        return self.spec.layer_config, {"weights": q}, rs, 1.0


LAYER_TYPES = {"ssvq": SSVQLinear, "vq": VQLinear, **{m: UniformLinear for m in UNIFORM}}


# ------------------------------------------------------------------ the wrapper
SpecLike = QuantSpec | None
SpecFn = Callable[[str, nn.Linear], SpecLike]


def plan_overrides(plan, spec: QuantSpec) -> SpecFn:
    """QuantizedModel's overrides= from a compress.plan plan (a CompressionPlan or
    its dict: the JSON of `ssvq compress --config`): each layer trains the config
    the plan resolves for it (ssvq / vq with its K and D, int-b) with `spec`'s
    training options (init, sign freezing, seed); an int layer starts from its
    post-training scale, so it drops init="gptq". A config this module does not
    train (additive M / coefficients, low rank, int1) is a ConfigError naming the
    layer and its plan rule."""
    from compress.plan import CompressionPlan
    plan = CompressionPlan.coerce(plan)

    def choose(name: str, lin: nn.Linear) -> QuantSpec:
        r = plan.explain(name, lin.out_features, lin.in_features)
        lc, where = r.config, f"layer {name} ({r.rule})"
        if r.rank or (lc.mode != "int" and (lc.m != 1 or lc.coef_bits)):
            raise ConfigError(f"{where}: expected a config QuantizedModel trains (ssvq, vq "
                              f"with m 1 and no coefficients, int2..int8, no rank), found "
                              f"{lc.name}" + (f" rank {r.rank}" if r.rank else ""))
        try:
            if lc.mode == "int":
                return dataclasses.replace(spec, method=f"int{lc.bits}", init="kmeans")
            return dataclasses.replace(spec, method=lc.mode, k=lc.k, d=lc.d)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    return choose


class QuantizedModel(nn.Module):
    """Wraps a model; chosen nn.Linear layers become quantized layers.

    spec: the default QuantSpec; overrides: {layer name: QuantSpec or None
    (None = keep float)}, or a function (name, linear) -> QuantSpec | None
    taking precedence over everything. layers: only these names (default: all
    nn.Linear). skip_below: keep layers with fewer weights in float.
    calibration: what layers with init="gptq" start from: {name: (n, cols)
    inputs} or a function run(model) whose forward passes through the float
    model are hooked (compress.calib.capture_gram, every input row counted);
    only used (and run) when some layer's spec has init="gptq".
    """

    def __init__(self, model: nn.Module, spec: QuantSpec = QuantSpec(), *,
                 layers: Iterable[str] | None = None,
                 overrides: dict[str, SpecLike] | SpecFn | None = None,
                 skip_below: int = 0, inplace: bool = False, progress=None,
                 calibration: dict[str, np.ndarray] | Callable[[nn.Module], object]
                 | None = None):
        super().__init__()
        self.model = model if inplace else copy.deepcopy(model)
        want = None if layers is None else list(layers)
        linears = {n: m for n, m in self.model.named_modules() if isinstance(m, nn.Linear)}
        if want is not None:
            missing = [n for n in want if n not in linears]
            if missing:
                raise ValueError(f"layers {missing} are not nn.Linear modules of the model "
                                 f"(found {list(linears)[:8]}...)")
        self._q: dict[str, QuantLinear] = {}
        self.skipped: list[str] = []
        chosen = {}
        for name, lin in linears.items():
            if want is not None and name not in want:
                continue
            if callable(overrides):
                s = overrides(name, lin)
            elif overrides and name in overrides:
                s = overrides[name]
            else:
                s = spec if lin.weight.numel() >= skip_below else None
            if s is None:
                self.skipped.append(name)
            else:
                chosen[name] = s
        grams = self._grams(linears, chosen, calibration, progress)
        for name, s in chosen.items():
            lin = linears[name]
            t = time.perf_counter()
            q = s.layer_class()(lin, s, name, **({"gram": grams[name]} if name in grams else {}))
            _set_submodule(self.model, name, q)
            self._q[name] = q
            if progress:
                errs = getattr(q, "init_errors", None)
                extra = (" relative output error " + ", ".join(f"{k} {v:.4f}" for k, v in
                                                               errs.items())) if errs else ""
                progress(f"  init {name} {lin.out_features}x{lin.in_features} {s.method} "
                         f"({time.perf_counter() - t:.2f}s){extra}")
        self.global_step = 0
        self.history: list[dict] = []

    def _grams(self, linears: dict, chosen: dict, calibration, progress) -> dict:
        """X^T X of the inputs of every layer whose spec has init="gptq" (taken
        from the float model, before any layer is replaced)."""
        need = [n for n, s in chosen.items() if getattr(s, "init", "kmeans") == "gptq"]
        if not need:
            return {}
        if calibration is None:
            raise ConfigError(f"layer {need[0]}: init 'gptq' needs calibration inputs "
                              f"(QuantizedModel(..., calibration=...))")
        t = time.perf_counter()
        if callable(calibration):
            grams = capture_gram(self.model, {n: linears[n] for n in need},
                                 lambda: calibration(self.model))
        else:
            grams = {}
            for n in need:
                if n in calibration:
                    x = np.asarray(calibration[n], np.float64)
                    x = x.reshape(-1, x.shape[-1])
                    grams[n] = x.T @ x
        missing = [n for n in need if n not in grams]
        if missing:
            raise ConfigError(f"layer {missing[0]}: init 'gptq' needs calibration inputs; "
                              f"the calibration gave none for it")
        if progress:
            progress(f"  input statistics of {len(need)} layers ({time.perf_counter() - t:.1f}s)")
        return grams

    # -------- access
    @property
    def qlayers(self) -> dict[str, QuantLinear]:
        return dict(self._q)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def param_groups(self, lr: float = 1e-3, *,
                     train_other: bool | Callable[[str, nn.Parameter], bool] = True,
                     **group_lrs: float | None) -> list[dict]:
        """Optimizer parameter groups (each with a "name"): latent, codebook,
        scale, shadow (uniform QAT weights), those other methods name (bits:
        DiffQ's bit logits, map: LR2VQ's projection) and other (every
        remaining parameter of the model for which train_other says yes).
        `<group>_lr=` sets a group's learning rate (default lr)."""
        lrs = {}
        for key, v in group_lrs.items():
            if not key.endswith("_lr"):
                raise TypeError(f"param_groups: unexpected keyword {key!r} (expected <group>_lr)")
            lrs[key[:-3]] = v
        groups: dict[str, list] = {k: [] for k in ("latent", "codebook", "scale", "shadow")}
        seen = set()
        for q in self._q.values():
            for g, ps in q.groups().items():
                groups.setdefault(g, [])
                groups[g] += ps
                seen.update(id(p) for p in ps)
        groups["other"] = []
        for n, p in self.model.named_parameters():
            if id(p) in seen or not p.requires_grad:
                continue
            ok = train_other(n, p) if callable(train_other) else bool(train_other)
            if ok:
                groups["other"].append(p)
            else:
                p.requires_grad_(False)
        return [{"params": ps, "lr": lrs[g] if lrs.get(g) is not None else lr, "name": g}
                for g, ps in groups.items() if ps]

    # -------- schedule
    @staticmethod
    def threshold(spec: QuantSpec, p: float | None) -> tuple[float, bool]:
        """(flip-count threshold, freeze everything) at progress p."""
        if p is None or p < spec.freeze_start:
            return spec.flip_threshold, False
        if p >= spec.freeze_end:
            return 0.0, True
        span = spec.freeze_end - spec.freeze_start
        return spec.flip_threshold * (spec.freeze_end - p) / span, False

    @torch.no_grad()
    def step(self, progress: float | None = None) -> dict:
        """Call after every optimizer step. progress in [0, 1] (None: the
        sign-freezing rule's plain threshold, as before freeze_start)."""
        self.global_step += 1
        p = progress
        flips = newly = frozen = signs = changed = 0
        for q in self._q.values():
            if isinstance(q, SSVQLinear):
                thr, all_ = self.threshold(q.spec, p)
                if (q.spec.codes == "reassign" and q.spec.reassign_every > 0
                        and self.global_step % q.spec.reassign_every == 0
                        and (p is None or p < q.spec.freeze_start)):
                    changed += q.reassign_codes()
                f, n = q.update_signs(thr, all_)
                flips, newly = flips + f, newly + n
                frozen += int(q.frozen.sum())
                signs += q.frozen.numel()
        rec = {"step": self.global_step, "progress": p}
        for q in self._q.values():
            for k, v in q.after_step(self.global_step, p).items():
                rec[k] = rec.get(k, 0) + v
        if signs:
            rec.update(flip_rate=flips / signs, frozen_fraction=frozen / signs,
                       newly_frozen=newly, codes_changed=changed)
        self.history.append(rec)
        return rec

    def size_penalty(self) -> torch.Tensor | None:
        """The sum of the layers' size penalties (None if no layer has one)."""
        n = sum(q.in_features * q.out_features for q in self._q.values())
        terms = [t for t in (q.size_penalty(n) for q in self._q.values()) if t is not None]
        return sum(terms) if terms else None

    # -------- size
    def bits(self, mults: int = 32, bus: int = 64, float_bits: int = 32) -> dict:
        """Weight storage of every Linear the wrapper saw: quantized layers as
        their images stream them (codebook, codes, signs, padding, 16-bit row
        scales), skipped layers at `float_bits` per weight."""
        total, n, per = 0, 0, {}
        for name, q in self._q.items():
            b = q.bits(mults, bus)
            per[name] = b / (q.in_features * q.out_features)
            total += b
            n += q.in_features * q.out_features
        mods = dict(self.model.named_modules())
        for name in self.skipped:
            w = mods[name].weight
            total += float_bits * w.numel()
            n += w.numel()
            per[name] = float(float_bits)
        return {"bits_per_weight": total / max(n, 1), "total_bits": total, "weights": n,
                "layers": per}

    # -------- export
    def capture(self, run: Callable[[nn.Module], object],
                max_rows: int = 4096) -> dict[str, np.ndarray]:
        """Inputs of every quantized layer while run(self) executes (eval, no grad)."""
        return capture_inputs(self, self._q, lambda: run(self), max_rows)

    def export(self, calibration: dict[str, np.ndarray] | Callable[[nn.Module], object]
               | None = None) -> list[LayerImage]:
        """One LayerImage per quantized layer, of its spec's LayerConfig (int-b for
        Uniform(b)). calibration: {name: (n, cols)} inputs, or a function run(model)
        whose forward passes are hooked (a layer without any: zeros)."""
        if callable(calibration):
            calibration = self.capture(calibration)
        imgs = []
        for name, q in self._q.items():
            lc, fields, rs, cs = q.image_fields()
            x = None if calibration is None else calibration.get(name)
            if x is None:
                x = np.zeros((1, q.in_features), np.float32)
            b = None if q.bias is None else q.bias.detach().numpy().astype(np.float32)
            imgs.append(image_from_fields(name, lc, fields, rs, cs, b, x))
        return imgs

    def write_images(self, out_dir, calibration=None, meta: dict | None = None,
                     mults: int = 32, bus: int = 64, accel: AccelConfig | None = None):
        """export() written through compress.run.write_model_images (the writer of
        post-training images too); the manifest records the training recipe. accel:
        the build to write (default: the covering build of the exported configs)."""
        imgs = self.export(calibration)
        bits = self.bits(mults, bus)
        m = {"trained": True, "bits_per_weight": bits["bits_per_weight"],
             "configs": {im.name: im.config.name for im in imgs}, "mults": mults, "bus": bus}
        m.update(meta or {})
        layer_meta = {im.name: {"trained": True, "spec": self._q[im.name].spec.to_dict(),
                                "bits_per_weight": bits["layers"][im.name]} for im in imgs}
        return write_model_images(out_dir, imgs, meta=m, layer_meta=layer_meta, mults=mults,
                                  bus=bus, cfg=accel)

    def to_float(self) -> nn.Module:
        """A plain copy of the model with every quantized layer back as an
        nn.Linear holding the exported (dequantized) weights: what the
        compressed model computes with float activations."""
        m = copy.deepcopy(self.model)
        for name, q in self._q.items():
            lc, fields, rs, cs = q.image_fields()
            tmp = LayerImage(name=name, config=lc, rows=q.out_features, cols=q.in_features,
                             bias=None, mult=None, shift=None, act=None, **fields)
            tmp.scales = {"row_scale": rs, "cb_scale": cs}
            lin = nn.Linear(q.in_features, q.out_features, bias=q.bias is not None)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(dequantize(tmp)))
                if q.bias is not None:
                    lin.bias.copy_(q.bias)
            _set_submodule(m, name, lin)
        return m

    # -------- freezing summary
    def sign_stats(self) -> dict:
        """SSVQ signs: how many, frozen, flips in all, and how many differ from the
        original weights' signs now (`changed`)."""
        tot = fro = fl = ch = 0
        for q in self._q.values():
            if isinstance(q, SSVQLinear):
                tot += q.frozen.numel()
                fro += int(q.frozen.sum())
                fl += int(q.flips.sum())
                ch += q.signs_changed()
        return {"signs": tot, "frozen": fro, "flips": fl, "changed": ch,
                "frozen_fraction": fro / tot if tot else None}


def _set_submodule(root: nn.Module, name: str, new: nn.Module):
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


# ------------------------------------------------------------------ the loop
@dataclass
class FitResult:
    steps: int
    seconds: float
    log: list[dict] = field(default_factory=list)


def fit(qm: QuantizedModel, loss_fn: Callable[[nn.Module, object], torch.Tensor],
        batches: Callable[[int], object] | Iterable, *, steps: int | None = None,
        budget_s: float | None = None, lr: float = 1e-3, lr_groups: dict | None = None,
        train_other: bool | Callable = True, cosine: bool = True, log_every: int = 50,
        eval_fn: Callable[[QuantizedModel], dict] | None = None, eval_every: int | None = None,
        progress: Callable[[str], None] | None = print) -> FitResult:
    """Adam on all groups, cosine learning-rate decay, qm.step() after every
    optimizer step. Stops after `steps` steps or after `budget_s` seconds
    (then progress, which drives sign freezing and the learning rate, is
    elapsed / budget). batches: a function step -> batch, or an iterable
    (cycled). loss_fn(qm, batch) -> scalar."""
    if steps is None and budget_s is None:
        raise ValueError("fit: give steps or budget_s")
    opt = torch.optim.Adam(qm.param_groups(lr, train_other=train_other, **(lr_groups or {})))
    base = [g["lr"] for g in opt.param_groups]
    get = batches if callable(batches) else _cycle(batches)
    qm.train()
    t0 = time.perf_counter()
    log, step, run_loss = [], 0, None
    while True:
        el = time.perf_counter() - t0
        if steps is not None and budget_s is None:
            p = step / steps
        else:
            p = el / budget_s
            if steps is not None:
                p = max(p, step / steps)
        if p >= 1.0:
            break
        f = 0.5 * (1 + math.cos(math.pi * p)) if cosine else 1.0
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * f
        loss = loss_fn(qm, get(step))
        pen = qm.size_penalty()
        if pen is not None:
            loss = loss + pen
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        p_after = (step / steps if budget_s is None
                   else max((time.perf_counter() - t0) / budget_s,
                            step / steps if steps else 0.0))
        rec = qm.step(progress=min(p_after, 1.0))
        lv = float(loss.detach())
        run_loss = lv if run_loss is None else 0.95 * run_loss + 0.05 * lv
        rec = dict(rec, loss=lv, seconds=time.perf_counter() - t0)
        evaluated = eval_fn is not None and eval_every and step % eval_every == 0
        if evaluated:
            qm.eval()
            rec.update(eval_fn(qm))
            qm.train()
        log.append(rec)
        if progress and (step % log_every == 0 or evaluated):
            extra = "".join(f" {k} {v:.4f}" for k, v in rec.items()
                            if k not in ("step", "progress", "loss", "seconds", "newly_frozen",
                                         "codes_changed") and isinstance(v, float))
            progress(f"  step {step} ({100 * rec['progress']:.0f}%, {rec['seconds']:.0f}s) "
                     f"loss {run_loss:.4f}{extra}")
    qm.eval()
    return FitResult(step, time.perf_counter() - t0, log)


def _cycle(it):
    items = list(it)

    def get(i):
        return items[i % len(items)]
    return get
