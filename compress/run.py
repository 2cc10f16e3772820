"""`ssvq compress`: model -> calibration -> per-layer quantization -> memory images."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from compress.image import write_images
from compress.models import MAX_DIM, LoadedModel, load_model
from compress.quantize import bits_breakdown, quantize_layer, relative_error
from hw.config import AccelConfig, ConfigError
from ssvq.cli import UserError

DEFAULT_MAX_DIM = 4096


def _round_up_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def config_for(model: LoadedModel, k: int = 256, d: int = 8, mults: int = 32, bus: int = 64,
               layers: list[str] | None = None) -> AccelConfig:
    """AccelConfig whose max_rows/max_cols hold every selected layer: 4096, or
    the largest dimension rounded up to a power of two (at most 65535)."""
    sel = [(n, w) for n, w, _ in _select(model, layers)]
    rows = max(w.shape[0] for _, w in sel)
    cols = max(w.shape[1] for _, w in sel)
    max_rows = min(MAX_DIM, max(DEFAULT_MAX_DIM, _round_up_pow2(rows)))
    max_cols = min(MAX_DIM, max(DEFAULT_MAX_DIM, _round_up_pow2(cols)))
    AccelConfig(k=k, d=d, mults=mults, bus=bus)      # a bad k/d/mults/bus is reported as such
    try:
        return AccelConfig(k=k, d=d, mults=mults, bus=bus, max_rows=max_rows, max_cols=max_cols)
    except ConfigError as e:
        name, w = max(sel, key=lambda t: t[1].shape[1])
        raise UserError(f"{model.name}: layer {name} ({w.shape[0]} x {w.shape[1]}) does not "
                        f"fit the accelerator: {e}") from None


def _select(model: LoadedModel, layers: list[str] | None):
    if not layers:
        return list(model.layers)
    names = model.layer_names
    missing = [n for n in layers if n not in names]
    if missing:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise UserError(f"{model.name}: --layers: expected names from the model ({shown}), "
                        f"found unknown {missing}")
    want = set(layers)
    return [t for t in model.layers if t[0] in want]


def compress_model(spec: str | LoadedModel, method: str, cfg: AccelConfig,
                   out: str | Path, seed: int = 0, layers: list[str] | None = None,
                   progress=print) -> Path:
    """Compresses every (or the named) layer of `spec` and writes the image
    folder `out`; returns its path. `progress` gets one line per step (or None)."""
    say = progress or (lambda *_: None)
    t0 = time.perf_counter()
    model = spec if isinstance(spec, LoadedModel) else load_model(spec, seed=seed)
    chosen = _select(model, layers)
    for n, w, _ in chosen:
        try:
            cfg.check_shape(*w.shape, f"{model.name}: layer {n}")
        except ConfigError as e:
            raise UserError(str(e)) from None
    say(f"model {model.name}: {model.description}")
    if model.calibration_source != "real":
        say("calibration: NOT real activations - a bare state dict cannot be run, so every "
            "layer is calibrated with seeded standard-normal inputs")
    t = time.perf_counter()
    calib = model.calibration()
    say(f"calibration: {len(next(iter(calib.values())))} vectors per layer "
        f"({model.calibration_source}, {time.perf_counter() - t:.1f}s)")

    imgs, bpw, err, total_bits, total_w = [], {}, {}, 0, 0
    for i, (name, w, b) in enumerate(chosen):
        t = time.perf_counter()
        img = quantize_layer(name, w, b, calib[name], method, cfg, seed=seed)
        bits = bits_breakdown(cfg, method, img.rows, img.cols)["total"]
        bpw[name] = bits / (img.rows * img.cols)
        err[name] = relative_error(w, img)
        total_bits += bits
        total_w += img.rows * img.cols
        imgs.append(img)
        say(f"[{i + 1}/{len(chosen)}] {name} {img.rows} x {img.cols}  rel.err {err[name]:.4f}"
            f"  bits/weight {bpw[name]:.3f}  ({time.perf_counter() - t:.2f}s)")
    total_err = float(np.sqrt(sum((err[n] * np.linalg.norm(w)) ** 2 for n, w, _ in chosen)
                              / sum(np.linalg.norm(w) ** 2 for _, w, _ in chosen)))
    meta = {
        "model": model.name, "model_spec": spec if isinstance(spec, str) else model.name,
        "method": method, "k": cfg.k, "d": cfg.d, "seed": seed,
        "calibration": model.calibration_source,
        "bits_per_weight": {"total": total_bits / total_w, "layers": bpw},
        "rel_weight_error": {"total": total_err, "layers": err},
    }
    t = time.perf_counter()
    path = write_images(out, cfg, imgs, meta=meta)
    say(f"wrote {len(imgs)} layers to {path} ({time.perf_counter() - t:.1f}s); "
        f"{total_bits / total_w:.3f} bits/weight, rel.err {total_err:.4f}, "
        f"total {time.perf_counter() - t0:.1f}s")
    return Path(path)


def compress_cmd(args) -> int:
    AccelConfig(k=args.k, d=args.d, mults=args.mults, bus=args.bus)   # fail before loading
    model = load_model(args.model, seed=args.seed)
    cfg = config_for(model, args.k, args.d, args.mults, args.bus, args.layers)
    compress_model(model, args.method, cfg, args.out, seed=args.seed, layers=args.layers)
    return 0
