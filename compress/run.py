"""Whole models: model -> calibration -> plan resolution -> per-layer quantization ->
memory images (`ssvq compress`, the demo and the quality runs call these).

    compress_model("digits", "ssvq-k16-d4", "out/")                # a layer-config name
    compress_model("minilm", "ssvq", "out/")                       # a method: K=256, D=8
    compress_model("m.pt", CompressionPlan.from_file("plan.json"), "out/",
                   calib="acts.npz", mults=32, bus=64)

The image set's accelerator config is AccelConfig.covering(every layer's (LayerConfig,
rows, cols), base mults/bus); the manifest says how each layer was made (`meta` below).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compress.calib import Calibration, load_calibration
from compress.models import LoadedModel, load_model
from compress.plan import CompressionPlan, Resolved
from compress.quantize import (dequantize, float_outputs, layer_bits, quantize_layer,
                               relative_error, stream_base)
from ssvq.config import AccelConfig, LayerConfig
from ssvq.errors import ConfigError, UserError
from ssvq.image import FORMAT_NAME, LayerImage, write_images


# ------------------------------------------------------------------ output folder
def is_image_set(path: str | Path) -> bool:
    """A folder with a manifest.json whose format is "ssvq-image" (any version)."""
    m = Path(path) / "manifest.json"
    try:
        d = json.loads(m.read_bytes().decode("utf-8-sig"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(d, dict) and d.get("format") == FORMAT_NAME


def check_out_path(out: str | Path, force: bool = False, flag: str = "--out"):
    """Refuses (UserError, nothing touched) an output path that exists and is a file,
    or a folder that is neither empty nor an image set written by ssvq, unless force."""
    p = Path(out)
    if p.parent.exists() and not p.parent.is_dir():
        raise UserError(f"{flag} {p}: expected a folder path, found that {p.parent} is a file")
    if not (p.exists() or p.is_symlink()) or force:
        return
    if p.is_dir():
        if is_image_set(p):
            return
        entries = sorted(x.name for x in p.iterdir())
        if not entries:
            return
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise UserError(f"{flag} {p}: expected a new path or an image set written by ssvq "
                        f"(manifest.json of format {FORMAT_NAME!r}), found a folder that is "
                        f"not one ({len(entries)} entries: {shown}); nothing was touched "
                        f"(--force replaces it)")
    raise UserError(f"{flag} {p}: expected a new path or an image set written by ssvq, found "
                    f"{'a file' if p.is_file() else 'something that is not a folder'}; "
                    f"nothing was touched (--force replaces it)")


# ------------------------------------------------------------------ configs
def accel_config_for(layers: list[tuple[str, LayerConfig, int, int]], mults: int = 32,
                     bus: int = 64) -> AccelConfig:
    """AccelConfig.covering of [(name, config, rows, cols)] with this mults/bus; a
    layer no build can run is a ConfigError naming it."""
    try:
        base = AccelConfig(mults=mults, bus=bus)    # its kmax / d_set stand in for int-only sets
    except ConfigError:
        base = stream_base(mults, bus)               # e.g. mults 4: the default d_set is too wide
    for name, lc, rows, cols in layers:
        try:
            AccelConfig.covering([(lc, rows, cols)], base=base).check_layer(lc, rows, cols)
        except ConfigError as e:
            raise ConfigError(f"layer {name} ({lc.name}, {rows} x {cols}): {e}") from None
    return AccelConfig.covering([(lc, r, c) for _, lc, r, c in layers], base=base)


def write_model_images(out: str | Path, images: list[LayerImage], meta: dict | None = None,
                       layer_meta: dict | None = None, mults: int = 32, bus: int = 64,
                       cfg: AccelConfig | None = None) -> Path:
    """Writes images (post-training or trained) with the covering accelerator config,
    or with build `cfg` when given (e.g. the build a search costed its candidates on;
    a layer it cannot run is a ConfigError naming it)."""
    if cfg is None:
        cfg = accel_config_for([(im.name, im.config, im.rows, im.cols) for im in images],
                               mults, bus)
    for im in images:
        cfg.check_layer(im.config, im.rows, im.cols, f"layer {im.name}")
    return Path(write_images(out, cfg, images, meta=meta, layer_meta=layer_meta))


# ------------------------------------------------------------------ layers
def select_layers(model: LoadedModel, layers: list[str] | None):
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


def model_calibration(model: LoadedModel, chosen, calib=None) -> Calibration:
    """The user's calibration (a .npz/.safetensors/.pt2 path, a {name: array} dict or
    a Calibration) or else the model's own (real, or random-normal for a state dict)."""
    if isinstance(calib, Calibration):
        return calib
    if isinstance(calib, dict):
        return Calibration({n: np.asarray(calib[n], np.float32) for n, _, _ in chosen},
                           "given", "activations passed to compress_model")
    if calib is not None:
        return load_calibration(calib, [(n, w.shape[1]) for n, w, _ in chosen])
    return Calibration(model.calibration(), model.calibration_source,
                       model.calibration_description or model.calibration_source)


def factor_shapes(name: str, rows: int, cols: int, rank: int) -> list[tuple[str, int, int]]:
    """The image layers a model layer becomes: itself, or its low-rank pair B then A."""
    if not rank:
        return [(name, rows, cols)]
    return [(f"{name}#B", rank, cols), (f"{name}#A", rows, rank)]


def low_rank_pair(name: str, w: np.ndarray, bias, calib_x: np.ndarray, lc: LayerConfig,
                  rank: int, seed: int = 0) -> tuple[list[LayerImage], float]:
    """W ~ A.B from the truncated SVD (B = sqrt(S_r) V_r^T, A = U_r sqrt(S_r)), each factor
    compressed with `lc`; A is calibrated on B's dequantized integer outputs and chained
    behind B (input_from). Returns ([B, A], ||W - A'.B'|| / ||W||) with A', B' the
    dequantized factors."""
    w = np.asarray(w, np.float64)
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    root = np.sqrt(s[:rank])
    wb, wa = (root[:, None] * vt[:rank]).astype(np.float32), (u[:, :rank] * root).astype(np.float32)
    # B's int8 outputs are A's activations, at one scale (A's act_scale)
    img_b = quantize_layer(f"{name}#B", wb, None, calib_x, lc, seed=seed, out_per_row=False)
    img_a = quantize_layer(f"{name}#A", wa, bias, float_outputs(img_b, calib_x), lc,
                           seed=seed, source=img_b)
    approx = dequantize(img_a).astype(np.float64) @ dequantize(img_b).astype(np.float64)
    n = np.linalg.norm(w)
    return [img_b, img_a], float(np.linalg.norm(w - approx) / n) if n > 0 else 0.0


@dataclass
class Compressed:
    """What compress_layers made: images in model order, how each was resolved,
    and the manifest's meta / per-layer meta."""
    images: list[LayerImage]
    resolved: dict[str, Resolved]
    meta: dict
    layer_meta: dict
    config: AccelConfig
    errors: dict = field(default_factory=dict)


def compress_layers(model: LoadedModel, plan, calib=None, *, seed: int = 0,
                    layers: list[str] | None = None, mults: int = 32, bus: int = 64,
                    progress=None) -> Compressed:
    """Resolves and compresses every (or the named) layer of `model` (in memory).
    plan: CompressionPlan, plan dict, LayerConfig, or method / layer-config name."""
    say = progress or (lambda *_: None)
    plan = CompressionPlan.coerce(plan)
    chosen = select_layers(model, layers)
    resolved = {n: plan.explain(n, *w.shape) for n, w, _ in chosen}
    cfg = accel_config_for([(f, resolved[n].config, r, c) for n, w, _ in chosen
                            for f, r, c in factor_shapes(n, *w.shape, resolved[n].rank)],
                           mults, bus)
    unused = plan.unused_patterns(n for n, _, _ in chosen)
    if unused:
        say(f"plan: pattern(s) {unused} match no layer")
    t = time.perf_counter()
    cal = model_calibration(model, chosen, calib)
    rows = sorted({len(cal.data[n]) for n, _, _ in chosen})
    say(f"calibration: {cal.source}: {cal.description}; {rows[0]}"
        f"{'' if len(rows) == 1 else '..' + str(rows[-1])} vectors per layer "
        f"({time.perf_counter() - t:.1f}s)")
    if cal.source == "random-normal":
        say("calibration: NOT real activations - every layer is calibrated with seeded "
            "standard-normal inputs")
    imgs, layer_meta, bpw, err = [], {}, {}, {}
    total_bits = total_w = 0
    for i, (name, w, b) in enumerate(chosen):
        t = time.perf_counter()
        r = resolved[name]
        if r.rank:
            pair, err[name] = low_rank_pair(name, w, b, cal.data[name], r.config, r.rank, seed)
        else:
            pair = [quantize_layer(name, w, b, cal.data[name], r.config, seed=seed)]
            err[name] = relative_error(w, pair[0])
        bits = [layer_bits(r.config, img.rows, img.cols, mults, bus) for img in pair]
        layer_total = sum(x["total"] for x in bits)
        bpw[name] = layer_total / w.size
        total_bits += layer_total
        total_w += w.size
        imgs += pair
        for img, bt in zip(pair, bits):
            layer_meta[img.name] = {"plan": r.to_meta(), "bits": bt,
                                    "bits_per_weight": bt["total"] / (img.rows * img.cols),
                                    "rel_weight_error": err[name],
                                    "calibration_rows": int(len(cal.data[name]))}
            if r.rank:
                layer_meta[img.name]["factor_of"] = {"layer": name, "rank": r.rank,
                                                     "rows": int(w.shape[0]),
                                                     "cols": int(w.shape[1])}
        rk = f" rank {r.rank} (B, A)" if r.rank else ""
        say(f"[{i + 1}/{len(chosen)}] {name} {w.shape[0]} x {w.shape[1]} {r.config.name}{rk} "
            f"({r.rule})  rel.err {err[name]:.4f}  bits/weight {bpw[name]:.3f}  "
            f"({time.perf_counter() - t:.2f}s)")
    norms = {n: float(np.linalg.norm(w)) for n, w, _ in chosen}
    den = sum(v * v for v in norms.values())
    total_err = float(np.sqrt(sum((err[n] * norms[n]) ** 2 for n in err) / den)) if den else 0.0
    meta = {
        "model": model.name, "seed": seed, "plan": plan.to_dict(),
        "configs": {n: resolved[n].config.name for n, _, _ in chosen},
        "calibration": cal.to_meta(), "mults": mults, "bus": bus,
        "bits_per_weight": {"total": total_bits / total_w, "layers": bpw},
        "rel_weight_error": {"total": total_err, "layers": err},
    }
    return Compressed(imgs, resolved, meta, layer_meta, cfg)


def compress_model(spec: str | LoadedModel, plan, out: str | Path, *,
                   seed: int = 0, layers: list[str] | None = None, calib=None,
                   mults: int = 32, bus: int = 64, force: bool = False,
                   progress=print) -> Path:
    """Compresses a model (minilm | digits | state-dict path | LoadedModel) with a plan
    and writes the image folder `out` (refused by check_out_path unless force);
    returns its path. `progress` gets one line per step (or None)."""
    say = progress or (lambda *_: None)
    check_out_path(out, force)
    stream_base(mults, bus)
    plan = CompressionPlan.coerce(plan)
    t0 = time.perf_counter()
    model = spec if isinstance(spec, LoadedModel) else load_model(spec, seed=seed)
    say(f"model {model.name}: {model.description}")
    c = compress_layers(model, plan, calib, seed=seed, layers=layers, mults=mults, bus=bus,
                        progress=say)
    c.meta["model_spec"] = spec if isinstance(spec, str) else model.name
    t = time.perf_counter()
    path = write_images(out, c.config, c.images, meta=c.meta, layer_meta=c.layer_meta)
    say(f"wrote {len(c.images)} layers to {path} ({time.perf_counter() - t:.1f}s); "
        f"{c.meta['bits_per_weight']['total']:.3f} bits/weight, rel.err "
        f"{c.meta['rel_weight_error']['total']:.4f}, total {time.perf_counter() - t0:.1f}s")
    return Path(path)
