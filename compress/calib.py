"""Calibration: every layer's input activations, (n, cols) float32, and the rule
that turns them into a layer's quantization scales.

The rule (`choose_act`, `out_scales_per_row`, `layer_out_scale`; compress.quantize
builds every image with it, compress.intlinear and the host side quantize with
`quantize_act` and the image's `act_scale` / `act_zero`):

* input: int8 a = clip(rint(x / act_scale) + act_zero, -128, 127), the real value
  (a - act_zero) * act_scale. The zero point costs the accelerator nothing: the
  image's bias absorbs -act_zero * sum_c W_int[r, c] exactly (compress.quantize).
  The range is the data's, [m, M] = [min(0, min x), max(0, max x)] over all
  calibration rows, clipped at +-c: [lo, hi] = [max(m, -c), min(M, c)],
  act_scale = (hi - lo) / 255, act_zero = rint(-128 - lo / act_scale), so that a
  side the data does not reach costs no grid steps; c = r * max(-m, M) with r the
  candidate of CLIP_RATIOS (1 down to 1/32, 9% apart) with the least
  row-normalised output error
      sum_r  mean_t ((Q(x) - x) W^T)[t, r]^2  /  mean_t (x W^T)[t, r]^2
  on the search rows (every ceil(n / SEARCH_ROWS)-th calibration row), W the
  compressed layer's real weights; ties go to the widest range. Measured on
  MiniLM (held-out cosine, int8 weights, every layer on the integer path):
  one 99.9th percentile of |x| clips the outlier channels of LayerNorm and GELU
  outputs that attention and the residual stream depend on; the maximum wastes
  the grid on them; minimising the plain output MSE favours the few huge output
  rows (the residual's outlier dimension) over the rest, so every row's error
  counts relative to its own size. The zero point uses the grid on skewed inputs
  (LayerNorm outputs with a one-sided outlier channel, GELU outputs >= -0.17).
* output: per row, out_scale[r] = max_t |y[t, r]| / 127 over the calibration rows
  (y the compressed layer's output on the quantized inputs; no clipping): the
  row's own mult/shift carries it, so a row of outputs a hundred times larger
  than the others (MiniLM's output.dense, the residual's outlier dimension) no
  longer rounds every other row to a few levels. A layer whose int8 outputs are
  another layer's activations (a low-rank factor B, `input_from`) needs one
  scale: `layer_out_scale`, the CLIP_RATIOS clip of max|y| with the least MSE.

Measured, MiniLM int8 on the 576 held-out sentences of `ssvq quality` (mean cosine
to fp32; 0.9996 with float activations): 99.9th percentiles for input and output
(one scale each) 0.927; the input search without a zero point 0.977 and with it
0.980 (output still one 99.9th-percentile scale); with per-row output scales
0.990 and 0.993 (this rule).

Inputs:

* `capture_inputs`: forward hooks on the layers of a runnable nn.Module (MiniLM,
  digits, quantization-aware training).
* `capture_gram`: the same hooks summing X^T X over every input row instead of
  keeping the first rows (the input statistics of compress.gptvq's data-aware
  start: a few hundred sentences are more rows than MAX_ROWS keeps).
* `load_calibration(path, layers)`: what the user gives with `--calib`:
  - ``.npz`` / ``.safetensors``: one array per layer name, shape (n, cols) (leading
    dimensions beyond one are flattened, as a hook would see a (batch, tokens, cols)
    input);
  - ``.pt2``: a `torch.export` program saved with `torch.export.save` together with
    its example inputs. Its graph is run on those inputs (torch.fx.Interpreter on
    `ExportedProgram.module()`); every `aten.linear` (or mm/addmm with a transposed
    weight) and `aten.conv2d` (groups 1, patches unfolded to rows of in*kh*kw, the
    layout of a conv weight reshaped to out x in*kh*kw) whose weight parameter is
    `<layer>.weight` records its input. (Forward hooks cannot be used: the modules of
    an exported program hold the parameters but the graph calls the aten operators
    directly, so no submodule is ever called.)
  Nothing is unpickled: .npz with allow_pickle=False, safetensors, and the .pt2
  loaded with torch.load forced to weights_only=True and pickle refused (a program
  holding pickled objects is rejected with a UserError).
"""
from __future__ import annotations

import contextlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ssvq.errors import UserError

MAX_ROWS = 4096          # calibration vectors kept per layer (the first ones)
SUFFIXES = (".npz", ".safetensors", ".pt2")
ACT_MIN, ACT_MAX = -128, 127
CLIP_RATIOS = 2.0 ** (-np.arange(41) / 8)    # 1 .. 1/32, each 2**(1/8) below the last
SEARCH_ROWS = 512        # calibration rows the input-range search evaluates (module doc)


@dataclass
class Calibration:
    """data: {layer name: (n, cols) float32}. source: "real" (the model's own data
    through hooks), "random-normal" (seeded N(0, 1), a bare state dict) or "file".
    kind: npz | safetensors | pt2 for a file."""
    data: dict
    source: str
    description: str
    path: str | None = None
    kind: str | None = None

    def to_meta(self) -> dict:
        m = {"source": self.source, "description": self.description,
             "rows": {n: int(len(v)) for n, v in self.data.items()}}
        if self.path is not None:
            m.update(path=self.path, kind=self.kind)
        return m


# ------------------------------------------------------------------ the rule
def quantize_act(x, act_scale: float, act_zero: int = 0) -> np.ndarray:
    """int8 activations: clip(rint(x / act_scale) + act_zero) (float64 divide,
    half-to-even rounding); compress.intlinear does the same in torch."""
    q = np.rint(np.asarray(x, np.float64) / act_scale) + act_zero
    return np.clip(q, ACT_MIN, ACT_MAX).astype(np.int8)


def act_params(scales: dict) -> tuple[float, int]:
    """(act_scale, act_zero) of an image's scales; images written before zero
    points have none (0)."""
    return (float(np.asarray(scales["act_scale"])),
            int(np.asarray(scales.get("act_zero", 0))))


def search_rows(x: np.ndarray) -> np.ndarray:
    """The calibration rows the input-range search evaluates: every
    ceil(n / SEARCH_ROWS)-th (evenly spread, at most SEARCH_ROWS)."""
    return x[:: -(-len(x) // SEARCH_ROWS)]


def act_candidates(x: np.ndarray) -> list[tuple[float, int]]:
    """(act_scale, act_zero) for every CLIP_RATIOS entry (module doc); [(1.0, 0)]
    for all-zero inputs."""
    m, big = min(0.0, float(np.min(x))), max(0.0, float(np.max(x)))
    if big == m:
        return [(1.0, 0)]
    out = []
    for r in CLIP_RATIOS:
        c = float(r) * max(-m, big)
        lo, hi = max(m, -c), min(big, c)
        s = (hi - lo) / 255.0
        out.append((s, int(np.clip(np.rint(-128.0 - lo / s), ACT_MIN, ACT_MAX))))
    return out


def choose_act(x: np.ndarray, w: np.ndarray) -> tuple[float, int]:
    """The input (act_scale, act_zero) of a layer with real weights w (rows, cols)
    for calibration inputs x (n, cols): the candidate with the least
    row-normalised output error on the search rows (module doc)."""
    x = np.asarray(x, np.float64)
    cands = act_candidates(x)
    if len(cands) == 1:
        return cands[0]
    xs = search_rows(x)
    wt = np.ascontiguousarray(np.asarray(w, np.float32).T)
    # float32 products (the search only ranks candidates), the error formed as
    # (Q(x) - x) W^T so that it does not cancel against the signal
    power = np.square(xs.astype(np.float32) @ wt).mean(axis=0, dtype=np.float64)
    weight = np.divide(1.0, power, out=np.zeros_like(power), where=power > 0)
    errs = []
    for s, z in cands:
        d = ((quantize_act(xs, s, z).astype(np.float64) - z) * s - xs).astype(np.float32)
        errs.append(float(np.square(d @ wt).mean(axis=0, dtype=np.float64) @ weight))
    return cands[int(np.argmin(errs))]


def out_scales_per_row(y: np.ndarray) -> np.ndarray:
    """out_scale[r] = max_t |y[t, r]| / 127 (module doc); a row that is zero on
    every calibration row takes the layer's largest output (or 1.0)."""
    m = np.abs(np.asarray(y, np.float64)).max(axis=0) / 127.0
    m[m == 0] = m.max() if m.max() > 0 else 1.0
    return m


def layer_out_scale(y: np.ndarray) -> float:
    """One output scale for a layer whose int8 outputs feed another layer: the
    CLIP_RATIOS clip of max|y| with the least mean squared error (ties: the
    widest)."""
    y = np.asarray(y, np.float64)
    a = float(np.abs(y).max()) if y.size else 0.0
    if a == 0:
        return 1.0
    errs = []
    for r in CLIP_RATIOS:
        s = float(r) * a / 127.0
        errs.append(float(((np.clip(np.rint(y / s), ACT_MIN, ACT_MAX) * s - y) ** 2).mean()))
    return float(CLIP_RATIOS[int(np.argmin(errs))]) * a / 127.0


# ------------------------------------------------------------------ hooks
def capture_inputs(root, modules: dict, run: Callable[[], object],
                   max_rows: int = MAX_ROWS) -> dict[str, np.ndarray]:
    """Runs `run()` (eval mode, no grad, one torch thread) with forward hooks on
    `modules` ({name: nn.Module inside root}) and returns each one's inputs
    flattened to (n, in_features), at most max_rows rows (the first ones)."""
    got: dict[str, list[np.ndarray]] = {n: [] for n in modules}
    counts = {n: 0 for n in modules}

    def make(name):
        def hook(_mod, inputs, _out):
            if counts[name] >= max_rows:
                return
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
            x = x[: max_rows - counts[name]].numpy().copy()
            got[name].append(x)
            counts[name] += len(x)
        return hook

    _run_hooked(root, modules, make, run)
    return {n: np.ascontiguousarray(np.concatenate(v), dtype=np.float32)
            for n, v in got.items() if v}


def capture_gram(root, modules: dict, run: Callable[[], object]) -> dict[str, np.ndarray]:
    """Runs `run()` (eval mode, no grad, one torch thread) with forward hooks on
    `modules` ({name: nn.Module inside root}) and returns each one's Gram matrix
    X^T X (in_features, in_features) float64 over all its input rows (inputs
    flattened to (n, in_features)); modules never called are left out."""
    import torch
    got: dict[str, torch.Tensor] = {}

    def make(name):
        def hook(_mod, inputs, _out):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
            # float32 product per batch (twice as fast), summed in float64
            g = (x.T @ x).double()
            got[name] = got[name] + g if name in got else g
        return hook

    _run_hooked(root, modules, make, run)
    return {n: g.numpy() for n, g in got.items()}


def _run_hooked(root, modules: dict, make: Callable, run: Callable[[], object]):
    """run() in eval mode, no grad, one torch thread, with the forward hook make(name)
    on each of `modules`; restores the mode, the thread count and removes the hooks."""
    import torch
    handles = [mod.register_forward_hook(make(n)) for n, mod in modules.items()]
    threads = torch.get_num_threads()
    was_training = root.training
    try:
        # the forwards are small: one thread is as fast and does not collapse when
        # the machine is shared
        torch.set_num_threads(1)
        root.eval()
        with torch.no_grad():
            run()
    finally:
        root.train(was_training)
        torch.set_num_threads(threads)
        for h in handles:
            h.remove()


# ------------------------------------------------------------------ files
def _as_rows(a, path: Path, name: str, cols: int) -> np.ndarray:
    a = np.asarray(a)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)) \
            or a.dtype == np.bool_:
        raise UserError(f"{path}: layer {name}: expected a float array (n, {cols}), found "
                        f"dtype {a.dtype}")
    if a.ndim < 2 or a.shape[-1] != cols or a.size == 0:
        raise UserError(f"{path}: layer {name}: expected an array of shape (n, {cols}) "
                        f"(n >= 1), found shape {tuple(a.shape)}")
    x = a.reshape(-1, cols)[:MAX_ROWS].astype(np.float32)
    if not np.isfinite(x).all():
        raise UserError(f"{path}: layer {name}: expected finite values, found NaN or inf")
    return np.ascontiguousarray(x)


def _check_missing(path: Path, layers, have: list[str], what: str, shown=None):
    missing = [n for n, _ in layers if n not in have]
    if missing:
        shown = list(have if shown is None else shown)
        text = ", ".join(shown[:8]) + (", ..." if len(shown) > 8 else "") or "nothing"
        raise UserError(f"{path}: expected {what} for every layer compressed; missing "
                        f"{missing[:8]}{' ...' if len(missing) > 8 else ''} "
                        f"(found {len(shown)}: {text})")


def _load_npz(path: Path, layers) -> dict:
    import zipfile
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            _check_missing(path, layers, names, "an array named after the layer")
            return {n: _as_rows(z[n], path, n, cols) for n, cols in layers}
    except UserError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise UserError(f"{path}: expected a NumPy .npz of plain arrays, found a file that "
                        f"does not load ({type(e).__name__}: {str(e)[:160]})") from None


def _load_safetensors(path: Path, layers) -> dict:
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt", device="cpu") as f:
            names = list(f.keys())
            _check_missing(path, layers, names, "a tensor named after the layer")
            return {n: _as_rows(f.get_tensor(n).float().numpy(), path, n, cols)
                    for n, cols in layers}
    except UserError:
        raise
    except Exception as e:          # safetensors raises its own error types
        raise UserError(f"{path}: expected a safetensors file, found one that does not load "
                        f"({type(e).__name__}: {str(e)[:160]})") from None


class _Refused(Exception):
    pass


@contextlib.contextmanager
def _no_unpickling():
    """torch.export.load falls back to pickle for tensor subclasses, custom objects
    and odd example inputs; here every such path raises _Refused instead."""
    import torch
    real_load = torch.load

    def safe_load(f, *args, weights_only=None, **kw):
        if weights_only is False:
            raise _Refused("a pickled object (torch.load with weights_only=False)")
        return real_load(f, *args, weights_only=True, **kw)

    def refuse(*_a, **_k):
        raise _Refused("a pickled object")

    patches = [(torch, "load", safe_load), (pickle, "loads", refuse), (pickle, "load", refuse)]
    if hasattr(torch._C, "_pickle_load_obj"):
        patches.append((torch._C, "_pickle_load_obj", refuse))
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    try:
        for obj, name, new in patches:
            setattr(obj, name, new)
        yield
    finally:
        for obj, name, old in saved:
            setattr(obj, name, old)


def load_exported(path: Path):
    """A torch.export program, loaded without unpickling anything."""
    import torch
    try:
        with _no_unpickling():
            return torch.export.load(str(path))
    except _Refused as e:
        raise UserError(f"{path}: expected a torch.export program of plain tensors, found "
                        f"{e}; it is not loaded (nothing is unpickled)") from None
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"{path}: expected a program saved with torch.export.save, found a "
                        f"file that does not load ({type(e).__name__}: {msg[:160]})") from None


def _weight_param(node, transposed: bool = False):
    """(parameter FQN, transposed) a graph value comes from, or (None, _)."""
    import torch
    aten = torch.ops.aten
    if node is None or not hasattr(node, "op"):
        return None, transposed
    if node.op == "get_attr":
        return node.target, transposed
    if node.op == "call_function" and node.target in (aten.t.default, aten.transpose.int,
                                                       aten.permute.default):
        return _weight_param(node.args[0], not transposed)
    return None, transposed


def _run_program(path: Path, layers, max_rows: int) -> tuple[dict, list]:
    import torch
    import torch.fx
    import torch.nn.functional as F
    ep = load_exported(path)
    ex = getattr(ep, "example_inputs", None)
    if not ex:
        raise UserError(f"{path}: expected a program saved with its example inputs "
                        f"(torch.export.export(model, args)), found none")
    args, kwargs = ex
    gm = ep.module()
    aten = torch.ops.aten
    want = {}
    for name, cols in layers:
        want[f"{name}.weight"] = (name, cols)
        want.setdefault(name, (name, cols))
    got: dict[str, list] = {}
    counts: dict[str, int] = {}
    seen_params: list[str] = []
    problems: list[str] = []

    def record(fqn, x):
        if fqn not in want:
            return
        name, cols = want[fqn]
        if x.shape[-1] != cols:
            problems.append(f"layer {name}: expected inputs of {cols} columns (the weight's "
                            f"cols), found {x.shape[-1]}")
            return
        n = counts.get(name, 0)
        if n >= max_rows:
            return
        x = x.detach().reshape(-1, cols).float()[: max_rows - n].numpy().copy()
        got.setdefault(name, []).append(x)
        counts[name] = n + len(x)

    class Capture(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.op != "call_function":
                return out
            t = n.target
            if t == aten.linear.default:
                fqn, tr = _weight_param(n.args[1])
                if fqn is not None and not tr:
                    seen_params.append(fqn)
                    record(fqn, self.env[n.args[0]])
            elif t in (aten.mm.default, aten.matmul.default):
                fqn, tr = _weight_param(n.args[1])
                if fqn is not None and tr:
                    seen_params.append(fqn)
                    record(fqn, self.env[n.args[0]])
            elif t == aten.addmm.default:
                fqn, tr = _weight_param(n.args[2])
                if fqn is not None and tr:
                    seen_params.append(fqn)
                    record(fqn, self.env[n.args[1]])
            elif t == aten.conv2d.default:
                fqn, _ = _weight_param(n.args[1])
                if fqn is None:
                    return out
                seen_params.append(fqn)
                if fqn not in want:
                    return out
                a = list(n.args) + [None] * (7 - len(n.args))
                w = self.env[n.args[1]]
                stride, padding, dilation, groups = (a[3] or 1, a[4] or 0, a[5] or 1,
                                                     a[6] or 1)
                if groups != 1 or isinstance(padding, str):
                    problems.append(f"layer {want[fqn][0]}: a conv2d with groups={groups}, "
                                    f"padding={padding!r} is not captured (groups 1 and "
                                    f"numeric padding only); give its inputs in an .npz")
                    return out
                x = self.env[n.args[0]]
                if x.dim() == 3:
                    x = x.unsqueeze(0)
                cols = F.unfold(x.float(), w.shape[2:], dilation=dilation, padding=padding,
                                stride=stride)                    # (N, C*kh*kw, L)
                record(fqn, cols.transpose(1, 2))
            return out

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.no_grad():
            Capture(gm).run(*args, **kwargs)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{path}: the program does not run on its example inputs "
                        f"({type(e).__name__}: {str(e)[:160]})") from None
    finally:
        torch.set_num_threads(threads)
    if problems:
        raise UserError(f"{path}: {problems[0]}")
    data = {n: np.ascontiguousarray(np.concatenate(v), dtype=np.float32) for n, v in got.items()}
    have = sorted({p[: -len(".weight")] if p.endswith(".weight") else p for p in seen_params})
    _check_missing(path, layers, sorted(data), "captured inputs (a linear, mm/addmm or "
                   "conv2d whose weight is the parameter <layer>.weight)", shown=have)
    return data, have


def load_calibration(path: str | Path, layers: list[tuple[str, int]],
                     max_rows: int = MAX_ROWS) -> Calibration:
    """The user's calibration file for the layers [(name, cols), ...] (module doc).
    Missing layers and wrong widths are UserErrors naming the file and the layer."""
    path = Path(path).expanduser()
    check_calibration_path(path)
    if path.suffix == ".npz":
        data, kind = _load_npz(path, layers), "npz"
    elif path.suffix == ".safetensors":
        data, kind = _load_safetensors(path, layers), "safetensors"
    else:
        data, kind = _run_program(path, layers, max_rows)[0], "pt2"
    n = sorted({len(v) for v in data.values()})
    rng = f"{n[0]}" if len(n) == 1 else f"{n[0]}..{n[-1]}"
    how = ("the program run on its example inputs" if kind == "pt2"
           else "one array per layer")
    return Calibration(data, "file", f"{path} ({kind}: {how}; {rng} vectors per layer)",
                       str(path), kind)


def check_calibration_path(path: str | Path):
    """Cheap checks before anything is loaded: exists, is a file, known suffix."""
    path = Path(path).expanduser()
    if path.suffix not in SUFFIXES:
        raise UserError(f"--calib {path}: expected a .npz, .safetensors or .pt2 file, found "
                        f"suffix {path.suffix or '(none)'!r}")
    if not path.exists():
        raise UserError(f"--calib {path}: expected a calibration file, found no such file")
    if not path.is_file():
        raise UserError(f"--calib {path}: expected a calibration file, found a directory or "
                        f"special file")
