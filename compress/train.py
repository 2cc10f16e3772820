"""Quantization-aware training: SSVQ with learnable signs, VQ, and uniform
int-b fake quantization, as a PyTorch-style wrapper that exports memory images.

Usage (your own loop)::

    qm = QuantizedModel(model, SSVQ(k=256, d=8), skip_below=4096)
    opt = torch.optim.Adam(qm.param_groups(lr=1e-3))
    for i, (x, y) in enumerate(loader):
        loss = F.cross_entropy(qm(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        qm.step(progress=i / total)          # sign freezing, codebook projection
    images = qm.export(cfg, calibration)     # list of compress.image.LayerImage
    qm.write_images("out/", cfg, calibration)

or the provided loop: ``fit(qm, loss_fn, batches, steps=... | budget_s=...)``.

Layers (every nn.Linear unless `layers` names them; per-layer `overrides`;
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
  post-training image of compress.quantize.quantize_layer (faiss k-means on
  |w| / rms(row)); latents start at w / rms(row).
* ``VQLinear``: W = C[code] * s, signed C (cb_scale = max|C| / 127). The
  codeword gradient is the sum of its assigned weights' gradients times s,
  which autograd produces through the gather C[code].
* ``UniformLinear`` (int8/int4/int3): per-output-channel symmetric fake
  quantization W = s * clamp(round(w / s), -2^(b-1), 2^(b-1)-1) with a
  straight-through round, a float shadow weight w and a learnable per-row
  scale (LSQ-style gradient). int8 starts from max|w_r| / 127 (as the
  post-training int8 image); int4/int3 from the per-row clipping ratio that
  minimises the squared error.

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
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from compress.image import LayerImage, write_images
from compress.quantize import (bits_breakdown, dequantize, image_from_fields,
                               quantize_layer)
from hw.config import ROW_SCALE_BITS, AccelConfig

UNIFORM = {"int8": 8, "int4": 4, "int3": 3}
METHODS = ("ssvq", "vq") + tuple(UNIFORM)


# ------------------------------------------------------------------ specs
@dataclass(frozen=True)
class QuantSpec:
    """How one layer is quantized and trained.

    method: ssvq | vq | int8 | int4 | int3. k, d: codebook entries and vector
    length (ssvq, vq). codes: "fixed" or "reassign" (ssvq). flip_threshold,
    freeze_start, freeze_end: the sign-freezing rule (module docstring).
    ste_clip: None for the identity straight-through estimator, or c to pass
    the gradient only where |latent| <= c.
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

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"QuantSpec: method must be one of {METHODS}, found {self.method!r}")
        if self.codes not in ("fixed", "reassign"):
            raise ValueError(f"QuantSpec: codes must be 'fixed' or 'reassign', found {self.codes!r}")
        if not 0.0 <= self.freeze_start <= self.freeze_end <= 1.0:
            raise ValueError("QuantSpec: need 0 <= freeze_start <= freeze_end <= 1, found "
                             f"{self.freeze_start}, {self.freeze_end}")
        if self.method in ("ssvq", "vq"):
            AccelConfig(k=self.k, d=self.d)          # k, d must be accelerator-legal

    @property
    def bits(self) -> int | None:
        return UNIFORM.get(self.method)


def SSVQ(k: int = 256, d: int = 8, **kw) -> QuantSpec:
    return QuantSpec("ssvq", k=k, d=d, **kw)


def VQ(k: int = 256, d: int = 4, **kw) -> QuantSpec:
    return QuantSpec("vq", k=k, d=d, **kw)


def Uniform(bits: int = 8, **kw) -> QuantSpec:
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


def _layer_config(spec: QuantSpec, rows: int, cols: int) -> AccelConfig:
    return AccelConfig(k=spec.k, d=spec.d, max_rows=max(4096, 1 << (rows - 1).bit_length()),
                       max_cols=max(4096, 1 << (cols - 1).bit_length()))


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

    def bits(self, cfg: AccelConfig | None = None) -> int:
        raise NotImplementedError

    def image_fields(self) -> tuple[str, dict, np.ndarray, float]:
        """(mode, integer fields, row_scale float64 (rows,), cb_scale)."""
        raise NotImplementedError

    def extra_repr(self):
        return f"{self.in_features} -> {self.out_features}, {self.spec.method}"


class _CodebookLinear(QuantLinear):
    signed = True

    def __init__(self, linear: nn.Linear, spec: QuantSpec, name: str):
        super().__init__(linear, spec, name)
        w = linear.weight.detach().float().cpu().numpy()
        rows, cols = w.shape
        cfg = _layer_config(spec, rows, cols)
        img = quantize_layer(name, w, None, np.zeros((1, cols), np.float32), self.method,
                             cfg, seed=spec.seed)
        cb = torch.from_numpy(np.asarray(img.codebook, np.float32) * np.float32(img.scales["cb_scale"]))
        self.codebook = nn.Parameter(cb)                                    # (K, D)
        rs = np.asarray(img.scales["row_scale"], np.float64)
        self.log_scale = nn.Parameter(torch.from_numpy(np.log(rs).astype(np.float32)))
        self.register_buffer("codes", torch.from_numpy(np.asarray(img.codes, np.int64)))
        self.v = self.codes.shape[1]
        self._init_img = img

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

    def bits(self, cfg: AccelConfig | None = None) -> int:
        cfg = cfg or _layer_config(self.spec, self.out_features, self.in_features)
        return bits_breakdown(cfg, self.method, self.out_features, self.in_features)["total"]

    def _fields(self, cfg: AccelConfig | None):
        q, cs = self.int_codebook()
        k, d = q.shape
        if cfg is not None:
            if cfg.d != d:
                raise ValueError(f"layer {self.name}: trained with D={d}, the accelerator "
                                 f"config has D={cfg.d}")
            if cfg.k < k:
                raise ValueError(f"layer {self.name}: trained with K={k}, the accelerator "
                                 f"config has only K={cfg.k}")
            if cfg.k > k:                               # unused entries, zero
                q = np.concatenate([q, np.zeros((cfg.k - k, d), np.int64)])
        dtype = np.int8 if self.signed else np.uint8
        fields = {"codebook": q.astype(dtype),
                  "codes": self.codes.numpy().astype(np.int32)}
        rs = self.scale().detach().double().numpy()
        return fields, rs, cs


class VQLinear(_CodebookLinear):
    method = "vq"
    signed = True

    def weight_q(self):
        return self.magnitudes() * self.scale()[:, None]

    def image_fields(self, cfg=None):
        fields, rs, cs = self._fields(cfg)
        return "vq", fields, rs, cs


class SSVQLinear(_CodebookLinear):
    method = "ssvq"
    signed = False

    def __init__(self, linear: nn.Linear, spec: QuantSpec, name: str):
        super().__init__(linear, spec, name)
        w = linear.weight.detach().float()
        rms = w.pow(2).mean(dim=1, keepdim=True).sqrt()
        rms = torch.where(rms > 0, rms, torch.ones_like(rms))
        self.latent = nn.Parameter(w / rms)
        neg = self.latent.detach() < 0
        self.register_buffer("frozen", torch.zeros_like(neg))
        self.register_buffer("frozen_sign", torch.ones_like(w))
        self.register_buffer("frozen_latent", torch.zeros_like(w))
        self.register_buffer("prev_neg", neg.clone())
        self.register_buffer("flips", torch.zeros(w.shape, dtype=torch.int32))
        assert bool((neg.numpy().astype(np.uint8) == self._init_img.signs).all())

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

    def image_fields(self, cfg=None):
        fields, rs, cs = self._fields(cfg)
        fields["signs"] = self.negative().numpy().astype(np.uint8)
        return "ssvq", fields, rs, cs


class UniformLinear(QuantLinear):
    """Per-output-channel symmetric int-b fake quantization (QAT) with a
    straight-through round and a learnable per-row scale."""

    def __init__(self, linear: nn.Linear, spec: QuantSpec, name: str):
        super().__init__(linear, spec, name)
        self.method = spec.method
        b = spec.bits
        self.qmin, self.qmax = -(1 << (b - 1)), (1 << (b - 1)) - 1
        if b == 8:
            self.qmin = -127                      # the post-training int8 image's range
        w = linear.weight.detach().float()
        self.shadow = nn.Parameter(w.clone())
        s = init_uniform_scale(w, b)
        self.log_scale = nn.Parameter(s.log())

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

    def bits(self, cfg=None) -> int:
        return self.spec.bits * self.out_features * self.in_features \
            + ROW_SCALE_BITS * self.out_features

    def image_fields(self, cfg=None):
        with torch.no_grad():
            q = self.int_weights().numpy().astype(np.int8)
        rs = self.scale().detach().double().numpy()
        return "int8", {"weights": q}, rs, 1.0


def init_uniform_scale(w: torch.Tensor, bits: int, grid: int = 40) -> torch.Tensor:
    """Per-row scale: max|w_r| / 127 for 8 bits; for fewer bits the clipping
    ratio (of max|w_r| / qmax) in [0.2, 1] minimising the row's squared error."""
    amax = w.abs().amax(dim=1).clamp_min(1e-12)
    if bits == 8:
        return amax / 127.0
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    best = amax / qmax
    best_err = torch.full_like(amax, float("inf"))
    for r in torch.linspace(0.2, 1.0, grid):
        s = amax * r / qmax
        q = torch.clamp(torch.round(w / s[:, None]), qmin, qmax) * s[:, None]
        err = (q - w).pow(2).sum(1)
        better = err < best_err
        best, best_err = torch.where(better, s, best), torch.where(better, err, best_err)
    return best


LAYER_TYPES = {"ssvq": SSVQLinear, "vq": VQLinear, "int8": UniformLinear,
               "int4": UniformLinear, "int3": UniformLinear}


# ------------------------------------------------------------------ images
# ------------------------------------------------------------------ the wrapper
SpecLike = QuantSpec | None
SpecFn = Callable[[str, nn.Linear], SpecLike]


class QuantizedModel(nn.Module):
    """Wraps a model; chosen nn.Linear layers become quantized layers.

    spec: the default QuantSpec; overrides: {layer name: QuantSpec or None
    (None = keep float)}, or a function (name, linear) -> QuantSpec | None
    taking precedence over everything. layers: only these names (default: all
    nn.Linear). skip_below: keep layers with fewer weights in float.
    """

    def __init__(self, model: nn.Module, spec: QuantSpec = QuantSpec(), *,
                 layers: Iterable[str] | None = None,
                 overrides: dict[str, SpecLike] | SpecFn | None = None,
                 skip_below: int = 0, inplace: bool = False, progress=None):
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
                continue
            t = time.perf_counter()
            q = LAYER_TYPES[s.method](lin, s, name)
            _set_submodule(self.model, name, q)
            self._q[name] = q
            if progress:
                progress(f"  init {name} {lin.out_features}x{lin.in_features} {s.method} "
                         f"({time.perf_counter() - t:.2f}s)")
        self.global_step = 0
        self.total_steps: int | None = None
        self.history: list[dict] = []

    # -------- access
    @property
    def qlayers(self) -> dict[str, QuantLinear]:
        return dict(self._q)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def param_groups(self, lr: float = 1e-3, *, latent_lr: float | None = None,
                     codebook_lr: float | None = None, scale_lr: float | None = None,
                     shadow_lr: float | None = None, other_lr: float | None = None,
                     train_other: bool | Callable[[str, nn.Parameter], bool] = True) -> list[dict]:
        """Optimizer parameter groups (each with a "name"): latent, codebook,
        scale, shadow (uniform QAT weights) and other (every remaining
        parameter of the model for which train_other says yes)."""
        lrs = {"latent": latent_lr, "codebook": codebook_lr, "scale": scale_lr,
               "shadow": shadow_lr, "other": other_lr}
        groups: dict[str, list] = {k: [] for k in lrs}
        seen = set()
        for q in self._q.values():
            for g, ps in q.groups().items():
                groups[g] += ps
                seen.update(id(p) for p in ps)
        for n, p in self.model.named_parameters():
            if id(p) in seen or not p.requires_grad:
                continue
            ok = train_other(n, p) if callable(train_other) else bool(train_other)
            if ok:
                groups["other"].append(p)
            else:
                p.requires_grad_(False)
        return [{"params": ps, "lr": lrs[g] if lrs[g] is not None else lr, "name": g}
                for g, ps in groups.items() if ps]

    # -------- schedule
    def configure(self, total_steps: int | None):
        """Total optimizer steps, so step() without `progress` knows where it is."""
        self.total_steps = total_steps

    def progress_at(self, step: int) -> float | None:
        if self.total_steps:
            return min(1.0, step / self.total_steps)
        return None

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
        """Call after every optimizer step. progress in [0, 1] (default:
        global_step / total_steps when configure() was called)."""
        self.global_step += 1
        p = progress if progress is not None else self.progress_at(self.global_step)
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
            elif isinstance(q, VQLinear):
                pass
        rec = {"step": self.global_step, "progress": p}
        if signs:
            rec.update(flip_rate=flips / signs, frozen_fraction=frozen / signs,
                       newly_frozen=newly, codes_changed=changed)
        self.history.append(rec)
        return rec

    # -------- size
    def bits(self, cfg: AccelConfig | None = None, float_bits: int = 32) -> dict:
        """Weight storage of every Linear the wrapper saw: quantized layers as
        their images stream them (codebook, codes, signs, padding, 16-bit row
        scales), skipped layers at `float_bits` per weight."""
        total, n, per = 0, 0, {}
        for name, q in self._q.items():
            c = cfg if (cfg is not None and isinstance(q, _CodebookLinear)) else None
            b = q.bits(c)
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
        got = {n: [] for n in self._q}
        count = {n: 0 for n in self._q}

        def make(name):
            def hook(_m, inputs, _o):
                if count[name] >= max_rows:
                    return
                x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
                x = x[: max_rows - count[name]].numpy().copy()
                got[name].append(x)
                count[name] += len(x)
            return hook

        hs = [q.register_forward_hook(make(n)) for n, q in self._q.items()]
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                run(self)
        finally:
            for h in hs:
                h.remove()
            self.train(was)
        return {n: np.concatenate(v) for n, v in got.items() if v}

    def export(self, cfg: AccelConfig | None = None,
               calibration: dict[str, np.ndarray] | Callable[[nn.Module], object] | None = None
               ) -> list[LayerImage]:
        """One LayerImage per quantized layer. calibration: {name: (n, cols)}
        inputs, or a function run(model) whose forward passes are hooked. cfg:
        the accelerator config (vq/ssvq layers must have its D and at most its
        K; smaller codebooks are zero-padded)."""
        if callable(calibration):
            calibration = self.capture(calibration)
        imgs = []
        for name, q in self._q.items():
            mode, fields, rs, cs = q.image_fields(cfg if mode_needs_cfg(q) else None)
            x = None if calibration is None else calibration.get(name)
            if x is None:
                x = np.zeros((1, q.in_features), np.float32)
            b = None if q.bias is None else q.bias.detach().numpy().astype(np.float32)
            imgs.append(image_from_fields(name, mode, fields, rs, cs, b, x))
        return imgs

    def write_images(self, out_dir, cfg: AccelConfig, calibration=None, meta: dict | None = None):
        imgs = self.export(cfg, calibration)
        m = {"trained": True, "bits": self.bits(cfg)["bits_per_weight"]}
        m.update(meta or {})
        return write_images(out_dir, cfg, imgs, meta=m)

    def to_float(self) -> nn.Module:
        """A plain copy of the model with every quantized layer back as an
        nn.Linear holding the exported (dequantized) weights: what the
        compressed model computes with float activations."""
        m = copy.deepcopy(self.model)
        for name, q in self._q.items():
            mode, fields, rs, cs = q.image_fields(None)
            tmp = LayerImage(name=name, mode=mode, rows=q.out_features, cols=q.in_features,
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
        tot = fro = fl = 0
        for q in self._q.values():
            if isinstance(q, SSVQLinear):
                tot += q.frozen.numel()
                fro += int(q.frozen.sum())
                fl += int(q.flips.sum())
        return {"signs": tot, "frozen": fro, "flips": fl,
                "frozen_fraction": fro / tot if tot else None}


def mode_needs_cfg(q: QuantLinear) -> bool:
    return isinstance(q, _CodebookLinear)


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
