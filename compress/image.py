"""The memory-image format: the one contract between compressor, golden model,
testbench and accelerator. docs/FORMAT.md describes the same thing in prose;
keep the two in step.

A layer image is one stream of BUS-bit beats, in exactly the order the
accelerator consumes them:

    header | codebook (vq, ssvq) | params | activations | weight blocks

Beats are little-endian bit strings: bit i of the section's bit stream is bit
(i mod BUS) of beat (i div BUS). On disk a beat is BUS/8 bytes, least
significant byte first (`stream.bin`), or one hex word per line, most
significant digit first (`stream.hex`, for `$readmemh`).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssvq.files import atomic_dir
from hw.config import MODE_ID, MODES, RECORD_BITS, AccelConfig, ConfigError

FORMAT_NAME = "ssvq-image"
FORMAT_VERSION = 1
HEADER_MAGIC = 0x315653          # "SV1", bits 63..40 of the header record
SECTIONS = ("header", "codebook", "params", "acts", "weights")
LAYER_FILES = ("stream.bin", "stream.hex", "arrays.npz")


class ImageError(ValueError):
    """A memory image that does not satisfy the format; the message names the
    file and field, and what was expected against what was found."""


@dataclass
class LayerImage:
    """One compressed layer in logical (unpacked) form.

    codes: (rows, ceil(cols/d)) for vq/ssvq; signs: (rows, cols) 0/1, 1 = negative
    (ssvq); weights: (rows, cols) int8 (int8 mode). bias/mult/shift: per-row
    requantization. act: (cols,) int8 activation vector fed with the layer.
    """
    name: str
    mode: str
    rows: int
    cols: int
    bias: np.ndarray
    mult: np.ndarray
    shift: np.ndarray
    act: np.ndarray
    codebook: np.ndarray | None = None
    codes: np.ndarray | None = None
    signs: np.ndarray | None = None
    weights: np.ndarray | None = None
    scales: dict = field(default_factory=dict)   # float metadata, not streamed

    def weight_matrix(self) -> np.ndarray:
        """Integer weights the accelerator multiplies with (rows, cols), int64."""
        if self.mode == "int8":
            return self.weights.astype(np.int64)
        w = self.codebook.astype(np.int64)[self.codes]            # rows, V, d
        w = w.reshape(self.rows, -1)[:, : self.cols]
        if self.mode == "ssvq":
            w = np.where(self.signs.astype(bool), -w, w)
        return w


# ---------------------------------------------------------------- bit packing
def _fields_to_bits(values: np.ndarray, width: int) -> np.ndarray:
    v = np.asarray(values).astype(np.uint64).reshape(-1)
    shifts = np.arange(width, dtype=np.uint64)
    return ((v[:, None] >> shifts) & np.uint64(1)).astype(np.uint8).reshape(-1)


def _bits_to_fields(bits: np.ndarray, width: int) -> np.ndarray:
    b = bits.reshape(-1, width).astype(np.uint64)
    return (b << np.arange(width, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)


def _bits_to_beats(bits: np.ndarray, bus: int) -> np.ndarray:
    pad = (-len(bits)) % bus
    if pad:
        bits = np.concatenate([bits, np.zeros(pad, np.uint8)])
    return np.packbits(bits, bitorder="little").reshape(-1, bus // 8)


def _beats_to_bits(beats: np.ndarray) -> np.ndarray:
    return np.unpackbits(beats.reshape(-1), bitorder="little")


def _to_unsigned(a: np.ndarray, width: int) -> np.ndarray:
    return np.asarray(a, dtype=np.int64) & ((1 << width) - 1)


def _to_signed(a: np.ndarray, width: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.int64)
    return np.where(a >= 1 << (width - 1), a - (1 << width), a)


# ------------------------------------------------------------------ validation
def _expect(cond: bool, where: str, field_: str, expected, found):
    if not cond:
        raise ImageError(f"{where}: {field_}: expected {expected}, found {found}")


def validate_layer(img: LayerImage, cfg: AccelConfig, where: str | None = None):
    where = where or f"layer {img.name}"
    _expect(img.mode in MODES, where, "mode", f"one of {MODES}", repr(img.mode))
    try:
        cfg.check_shape(img.rows, img.cols, where)
    except ConfigError as e:
        raise ImageError(str(e)) from None
    r, c, v = img.rows, img.cols, -(-img.cols // cfg.d)

    def arr(name, shape, lo, hi):
        a = getattr(img, name)
        _expect(a is not None, where, name, f"array of shape {shape}", "nothing")
        a = np.asarray(a)
        _expect(a.shape == shape, where, f"{name} shape", shape, a.shape)
        _expect(np.issubdtype(a.dtype, np.integer), where, f"{name} dtype", "integer", a.dtype)
        if a.size:
            _expect(int(a.min()) >= lo and int(a.max()) <= hi, where, f"{name} range",
                    f"{lo}..{hi}", f"{int(a.min())}..{int(a.max())}")

    arr("bias", (r,), -(1 << 31), (1 << 31) - 1)
    arr("mult", (r,), 0, (1 << 16) - 1)
    arr("shift", (r,), 1, 63)
    arr("act", (c,), -128, 127)
    if img.mode == "int8":
        arr("weights", (r, c), -128, 127)
    else:
        lo, hi = (0, 255) if img.mode == "ssvq" else (-128, 127)
        arr("codebook", (cfg.k, cfg.d), lo, hi)
        arr("codes", (r, v), 0, cfg.k - 1)
        if img.mode == "ssvq":
            arr("signs", (r, c), 0, 1)


# --------------------------------------------------------------------- packing
def header_record(mode: str, rows: int, cols: int) -> int:
    return MODE_ID[mode] | rows << 8 | cols << 24 | HEADER_MAGIC << 40


def pack_layer(img: LayerImage, cfg: AccelConfig) -> tuple[np.ndarray, dict]:
    """Returns (beats as uint8 array (n, bus/8), {section: (first_beat, count)})."""
    validate_layer(img, cfg)
    bus, g = cfg.bus, cfg.groups_per_row(img.cols)
    parts: dict[str, np.ndarray] = {}
    parts["header"] = _bits_to_beats(
        _fields_to_bits(np.array([header_record(img.mode, img.rows, img.cols)], np.uint64),
                        RECORD_BITS), bus)
    if img.mode != "int8":
        parts["codebook"] = _bits_to_beats(
            _fields_to_bits(_to_unsigned(img.codebook, cfg.cw), cfg.cw), bus)
    rec = (_to_unsigned(img.bias, 32) | img.mult.astype(np.int64) << 32
           | img.shift.astype(np.int64) << 48).astype(np.uint64)
    parts["params"] = _bits_to_beats(_fields_to_bits(rec, RECORD_BITS), bus)
    act = np.zeros(cfg.padded_cols(img.cols), np.int64)
    act[: img.cols] = img.act
    parts["acts"] = _bits_to_beats(_fields_to_bits(_to_unsigned(act, 8), 8), bus)
    parts["weights"] = _pack_weights(img, cfg, g)

    beats = np.concatenate([parts[s] for s in SECTIONS if s in parts])
    sections, first = {}, 0
    for s in SECTIONS:
        n = len(parts[s]) if s in parts else 0
        sections[s] = (first, n)
        first += n
    return beats, sections


def _padded_rows(a: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((a.shape[0], width), np.int64)
    out[:, : a.shape[1]] = a
    return out


def _pack_weights(img: LayerImage, cfg: AccelConfig, g: int) -> np.ndarray:
    geo = cfg.mode(img.mode)
    nb = cfg.weight_blocks(img.mode, img.rows, img.cols)
    total = nb * geo.groups
    if img.mode == "int8":
        prim = _fields_to_bits(_to_unsigned(_padded_rows(img.weights, g * cfg.mults), 8), 8)
    else:
        prim = _fields_to_bits(_padded_rows(img.codes, g * cfg.lanes), cfg.code_bits)
    prim = prim.reshape(img.rows * g, geo.primary_bits_per_group)
    blocks = [_group_blocks(prim, total, geo.groups)]
    if geo.sign_beats:
        sign = _padded_rows(img.signs, g * cfg.mults).astype(np.uint8)
        blocks.append(_group_blocks(sign.reshape(img.rows * g, cfg.mults), total, geo.groups))
    block_bits = np.concatenate(blocks, axis=1)
    return _bits_to_beats(block_bits.reshape(-1), cfg.bus)


def _group_blocks(per_group: np.ndarray, total: int, n: int) -> np.ndarray:
    out = np.zeros((total, per_group.shape[1]), np.uint8)
    out[: len(per_group)] = per_group
    return out.reshape(total // n, n * per_group.shape[1])


# ------------------------------------------------------------------- unpacking
def unpack_layer(beats: np.ndarray, cfg: AccelConfig, name: str = "?",
                 where: str = "stream") -> LayerImage:
    """Decodes a whole layer stream and checks every structural rule."""
    bus = cfg.bus
    _expect(beats.ndim == 2 and beats.shape[1] == bus // 8, where, "beat width",
            f"{bus // 8} bytes", beats.shape[1:] if beats.ndim == 2 else beats.shape)
    _expect(len(beats) >= 1, where, "beats", "at least a header", 0)
    hdr = int(_bits_to_fields(_beats_to_bits(beats[:1])[:RECORD_BITS], RECORD_BITS)[0])
    mode_id, rows, cols, magic = hdr & 0xFF, hdr >> 8 & 0xFFFF, hdr >> 24 & 0xFFFF, hdr >> 40
    _expect(magic == HEADER_MAGIC, where, "header magic", hex(HEADER_MAGIC), hex(magic))
    _expect(mode_id < len(MODES), where, "header mode", f"0..{len(MODES) - 1}", mode_id)
    _expect(not _beats_to_bits(beats[:1])[RECORD_BITS:].any(), where, "header padding",
            "zero", "non-zero bits")
    mode = MODES[mode_id]
    try:
        cfg.check_shape(rows, cols, f"{where}: header")
    except ConfigError as e:
        raise ImageError(str(e)) from None
    sections = layer_sections(cfg, mode, rows, cols)
    total = sum(n for _, n in sections.values())
    _expect(len(beats) == total, where, "beat count",
            f"{total} for {mode} {rows}x{cols}", len(beats))

    def sec(s):
        a, n = sections[s]
        return _beats_to_bits(beats[a:a + n])

    def zero_tail(bits, used, what):
        _expect(not bits[used:].any(), where, f"{what} padding", "zero", "non-zero bits")

    img = LayerImage(name=name, mode=mode, rows=rows, cols=cols, bias=None, mult=None,
                     shift=None, act=None)
    if mode != "int8":
        bits = sec("codebook")
        n = cfg.k * cfg.d * cfg.cw
        cb = _bits_to_fields(bits[:n], cfg.cw).astype(np.int64).reshape(cfg.k, cfg.d)
        img.codebook = (cb if mode == "ssvq" else _to_signed(cb, 8)).astype(
            np.uint8 if mode == "ssvq" else np.int8)
    bits = sec("params")
    rec = _bits_to_fields(bits[: rows * RECORD_BITS], RECORD_BITS)
    zero_tail(bits, rows * RECORD_BITS, "params")
    _expect(not (rec >> np.uint64(54)).any(), where, "params reserved bits 54..63", "zero",
            "non-zero")
    img.bias = _to_signed((rec & np.uint64(0xFFFFFFFF)).astype(np.int64), 32).astype(np.int32)
    img.mult = ((rec >> np.uint64(32)) & np.uint64(0xFFFF)).astype(np.uint16)
    img.shift = ((rec >> np.uint64(48)) & np.uint64(0x3F)).astype(np.uint8)
    _expect(int(img.shift.min()) >= 1, where, "params shift", "1..63", int(img.shift.min()))
    bits = sec("acts")
    act = _to_signed(_bits_to_fields(bits[: cfg.padded_cols(cols) * 8], 8).astype(np.int64), 8)
    _expect(not act[cols:].any(), where, "acts padding", "zero", "non-zero")
    zero_tail(bits, cfg.padded_cols(cols) * 8, "acts")
    img.act = act[:cols].astype(np.int8)
    _unpack_weights(img, sec("weights"), cfg, where)
    return img


def _unpack_weights(img: LayerImage, bits: np.ndarray, cfg: AccelConfig, where: str):
    geo = cfg.mode(img.mode)
    g = cfg.groups_per_row(img.cols)
    nb = cfg.weight_blocks(img.mode, img.rows, img.cols)
    blocks = bits.reshape(nb, geo.beats * cfg.bus)
    pb = geo.groups * geo.primary_bits_per_group
    used = img.rows * g

    def groups(block_bits, per_group):
        gb = block_bits.reshape(nb * geo.groups, per_group)
        _expect(not gb[used:].any(), where, "weights padding groups", "zero", "non-zero bits")
        return gb[:used]

    prim = groups(blocks[:, :pb], geo.primary_bits_per_group)
    if img.mode == "int8":
        w = _to_signed(_bits_to_fields(prim.reshape(-1), 8).astype(np.int64), 8)
        w = w.reshape(img.rows, g * cfg.mults)
        _expect(not w[:, img.cols:].any(), where, "weights padding columns", "zero", "non-zero")
        img.weights = w[:, : img.cols].astype(np.int8)
        return
    v = -(-img.cols // cfg.d)
    codes = _bits_to_fields(prim.reshape(-1), cfg.code_bits).astype(np.int64)
    codes = codes.reshape(img.rows, g * cfg.lanes)
    _expect(not codes[:, v:].any(), where, "codes padding vectors", "zero", "non-zero")
    img.codes = codes[:, :v].astype(np.int32)
    if img.mode == "ssvq":
        sb = groups(blocks[:, pb:], cfg.mults).reshape(img.rows, g * cfg.mults)
        _expect(not sb[:, img.cols:].any(), where, "signs padding columns", "zero", "non-zero")
        img.signs = sb[:, : img.cols].astype(np.uint8)


def layer_sections(cfg: AccelConfig, mode: str, rows: int, cols: int) -> dict:
    counts = {"header": 1, "codebook": cfg.codebook_beats(mode),
              "params": cfg.param_beats(rows), "acts": cfg.act_beats(cols),
              "weights": cfg.weight_blocks(mode, rows, cols) * cfg.mode(mode).beats}
    out, first = {}, 0
    for s in SECTIONS:
        out[s] = (first, counts[s])
        first += counts[s]
    return out


# ------------------------------------------------------------------ file forms
def beats_to_hex(beats: np.ndarray) -> str:
    return "".join(row[::-1].tobytes().hex() + "\n" for row in beats)


def hex_to_beats(text: str, bus: int, where: str) -> np.ndarray:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    digits = bus // 4
    out = np.zeros((len(lines), bus // 8), np.uint8)
    for i, line in enumerate(lines):
        _expect(len(line) == digits, where, f"line {i + 1} length", f"{digits} hex digits",
                len(line))
        try:
            out[i] = np.frombuffer(bytes.fromhex(line), np.uint8)[::-1]
        except ValueError:
            raise ImageError(f"{where}: line {i + 1}: expected hex digits, found {line[:20]!r}") from None
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no spaces), without the
    `manifest_sha256` field itself: catches edits the per-file digests cannot see."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


def _layer_dir(index: int, name: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)
    return f"layers/{index:03d}_{safe}"


def write_images(out_dir: str | os.PathLike, cfg: AccelConfig, layers: list[LayerImage],
                 meta: dict | None = None, progress=None) -> Path:
    """Writes all layers and the manifest atomically: into a sibling temporary
    folder first, then swapped into place, so a failure leaves no half image."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        entries = []
        for i, img in enumerate(layers):
            beats, sections = pack_layer(img, cfg)
            rel = _layer_dir(i, img.name)
            (tmp / rel).mkdir(parents=True)
            (tmp / rel / "stream.bin").write_bytes(beats.tobytes())
            (tmp / rel / "stream.hex").write_text(beats_to_hex(beats))
            arrays = {k: np.asarray(getattr(img, k)) for k in
                      ("bias", "mult", "shift", "act", "codebook", "codes", "signs", "weights")
                      if getattr(img, k) is not None}
            arrays.update({f"scale_{k}": np.asarray(v, np.float32) for k, v in img.scales.items()})
            with open(tmp / rel / "arrays.npz", "wb") as f:
                np.savez(f, **arrays)
            entries.append({
                "name": img.name, "mode": img.mode, "rows": img.rows, "cols": img.cols,
                "dir": rel, "beats": int(len(beats)),
                "sections": {s: list(v) for s, v in sections.items()},
                "files": {fn: {"sha256": _sha256(tmp / rel / fn),
                               "bytes": (tmp / rel / fn).stat().st_size} for fn in LAYER_FILES},
            })
            if progress:
                progress(i + 1, len(layers), img.name)
        manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": cfg.to_dict(),
                    "meta": meta or {}, "layers": entries}
        manifest["manifest_sha256"] = manifest_digest(manifest)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out_dir


@dataclass
class ImageSet:
    root: Path
    config: AccelConfig
    manifest: dict

    @property
    def layer_names(self) -> list[str]:
        return [e["name"] for e in self.manifest["layers"]]

    def entry(self, name: str) -> dict:
        for e in self.manifest["layers"]:
            if e["name"] == name:
                return e
        raise ImageError(f"{self.root / 'manifest.json'}: layers: expected a layer named "
                         f"{name!r}, found {self.layer_names}")

    def beats(self, name: str) -> np.ndarray:
        """The layer's stream, after every check against the manifest."""
        e = self.entry(name)
        base = self.root / e["dir"]
        where = str(base)
        for fn in LAYER_FILES:
            p = base / fn
            if not p.is_file():
                raise ImageError(f"{p}: expected file listed in manifest, found nothing")
            size = p.stat().st_size
            _expect(size == e["files"][fn]["bytes"], str(p), "size in bytes",
                    e["files"][fn]["bytes"], size)
            digest = _sha256(p)
            _expect(digest == e["files"][fn]["sha256"], str(p), "sha256",
                    e["files"][fn]["sha256"], digest)
        raw = (base / "stream.bin").read_bytes()
        bpb = self.config.bus // 8
        _expect(len(raw) % bpb == 0, str(base / "stream.bin"), "size", f"a multiple of {bpb}",
                len(raw))
        beats = np.frombuffer(raw, np.uint8).reshape(-1, bpb)
        hexed = hex_to_beats((base / "stream.hex").read_text(), self.config.bus,
                             str(base / "stream.hex"))
        _expect(hexed.shape == beats.shape and bool((hexed == beats).all()),
                str(base / "stream.hex"), "contents", "the same beats as stream.bin",
                "different beats")
        _expect(len(beats) == e["beats"], where, "beats", e["beats"], len(beats))
        expect_sections = layer_sections(self.config, e["mode"], e["rows"], e["cols"])
        found = {s: tuple(v) for s, v in e["sections"].items()}
        _expect(found == expect_sections, f"{self.root / 'manifest.json'} layer {name}",
                "sections", expect_sections, found)
        return beats

    def layer(self, name: str) -> LayerImage:
        e = self.entry(name)
        where = str(self.root / e["dir"] / "stream.bin")
        img = unpack_layer(self.beats(name), self.config, name, where)
        for fld in ("mode", "rows", "cols"):
            _expect(getattr(img, fld) == e[fld], f"{self.root / 'manifest.json'} layer {name}",
                    fld, f"{getattr(img, fld)!r} (from the stream header)", repr(e[fld]))
        # Last, so that an edited shape or file is reported by its own field first.
        digest = manifest_digest(self.manifest)
        _expect(digest == self.manifest.get("manifest_sha256"), str(self.root / "manifest.json"),
                "manifest_sha256 (the manifest was edited after writing)",
                self.manifest.get("manifest_sha256"), digest)
        with np.load(self.root / e["dir"] / "arrays.npz", allow_pickle=False) as z:
            img.scales = {k[6:]: z[k] for k in z.files if k.startswith("scale_")}
        return img


def read_images(root: str | os.PathLike) -> ImageSet:
    root = Path(root)
    mpath = root / "manifest.json"
    if not mpath.is_file():
        raise ImageError(f"{mpath}: expected a manifest, found no such file")
    try:
        m = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ImageError(f"{mpath}: expected JSON, found a parse error ({e})") from None
    _expect(isinstance(m, dict) and m.get("format") == FORMAT_NAME, str(mpath), "format",
            FORMAT_NAME, m.get("format") if isinstance(m, dict) else type(m).__name__)
    _expect(type(m.get("version")) is int and m["version"] == FORMAT_VERSION, str(mpath),
            "version", FORMAT_VERSION, m.get("version"))
    conf = m.get("config")
    required = set(AccelConfig().to_dict())
    _expect(isinstance(conf, dict) and required <= set(conf), str(mpath), "config",
            f"all of {sorted(required)}", sorted(conf) if isinstance(conf, dict) else conf)
    try:
        cfg = AccelConfig.from_dict(conf, f"{mpath}: config")
    except ConfigError as e:
        raise ImageError(str(e)) from None
    layers = m.get("layers")
    _expect(isinstance(layers, list) and layers, str(mpath), "layers", "a non-empty list", layers)
    names = [e.get("name") for e in layers if isinstance(e, dict)]
    dup = sorted({n for n in names if names.count(n) > 1}, key=str)
    _expect(not dup, str(mpath), "layers[].name", "unique names", f"duplicates {dup}")
    for i, e in enumerate(layers):
        for key, typ in (("name", str), ("mode", str), ("rows", int), ("cols", int),
                         ("dir", str), ("beats", int), ("sections", dict), ("files", dict)):
            _expect(isinstance(e, dict) and type(e.get(key)) is typ, str(mpath),
                    f"layers[{i}].{key}", typ.__name__, repr(e.get(key) if isinstance(e, dict) else e))
        _expect(e["mode"] in MODES, str(mpath), f"layers[{i}].mode", MODES, e["mode"])
        _expect(".." not in Path(e["dir"]).parts and not Path(e["dir"]).is_absolute(),
                str(mpath), f"layers[{i}].dir", "a relative path inside the image", e["dir"])
        for fn in LAYER_FILES:
            f = e["files"].get(fn)
            _expect(isinstance(f, dict) and isinstance(f.get("sha256"), str)
                    and type(f.get("bytes")) is int, str(mpath), f"layers[{i}].files.{fn}",
                    "{sha256: str, bytes: int}", f)
        for s in SECTIONS:
            v = e["sections"].get(s)
            _expect(isinstance(v, list) and len(v) == 2 and all(type(x) is int for x in v),
                    str(mpath), f"layers[{i}].sections.{s}", "[first_beat, count]", v)
        try:
            cfg.check_shape(e["rows"], e["cols"], f"{mpath}: layers[{i}]")
        except ConfigError as err:
            raise ImageError(str(err)) from None
    return ImageSet(root, cfg, m)
