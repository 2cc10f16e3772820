"""The memory-image format, version 2: the one contract between compressor, golden
model, testbench and accelerator. docs/FORMAT.md describes the same thing in
prose; keep the two in step.

A layer image is one stream of BUS-bit beats, in the order the accelerator
consumes them:

    header | codebook (vq, ssvq) | params | acts | weights

Each section is a bit string of equal-width records laid end to end (a record
may straddle beats), zero-padded to a whole beat. Bit i of a section is bit
(i mod BUS) of its beat (i div BUS). On disk a beat is BUS/8 bytes, least
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

from ssvq.config import (HEADER_BITS, HEADER_FIELDS, HEADER_MAGIC, HEADER_MAGIC_V1, MODES,
                         PARAM_BITS, PARAM_FIELDS, SECTIONS, AccelConfig, Field, LayerConfig,
                         header_values, layer_config_of_header)
from ssvq.errors import ConfigError, ImageError
from ssvq.files import atomic_dir, load_json

FORMAT_NAME = "ssvq-image"
FORMAT_VERSION = 2
LAYER_FILES = ("stream.bin", "stream.hex", "arrays.npz")
ARRAYS = ("bias", "mult", "shift", "act", "codebook", "codes", "coefs", "signs", "weights")


@dataclass
class LayerImage:
    """One compressed layer in logical (unpacked) form, with the activation vector
    it is run with (a layer job).

    int:  weights (rows, cols) in -2^(b-1)..2^(b-1)-1 (b = 1: -1 or +1).
    vq/ssvq: codebook (m*k, d) (vq: -128..127; ssvq: 0..255; codebook j of the m is
          rows j*k..j*k+k-1), codes (rows, V, m) in 0..k-1, coefs (rows, V, m) signed
          coef_bits-bit (only when coef_bits > 0), signs (rows, cols) 0/1, 1 = negative
          (ssvq only).
    bias/mult/shift: per-row requantization; act: (cols,) int8 input vector.
    input_from: the earlier layer this one's activations come from (or None).
    """
    name: str
    config: LayerConfig
    rows: int
    cols: int
    bias: np.ndarray
    mult: np.ndarray
    shift: np.ndarray
    act: np.ndarray
    codebook: np.ndarray | None = None
    codes: np.ndarray | None = None
    coefs: np.ndarray | None = None
    signs: np.ndarray | None = None
    weights: np.ndarray | None = None
    scales: dict = field(default_factory=dict)   # float metadata, not streamed
    # name of an earlier layer whose int8 outputs are this layer's activations (a chain:
    # a low-rank W = A.B runs as B then A); `act` must equal those outputs
    input_from: str | None = None

    @property
    def mode(self) -> str:
        return self.config.mode


# ---------------------------------------------------------------- bit packing
def fields_to_bits(values, width: int) -> np.ndarray:
    """Unsigned fields -> their bits, each field's least significant bit first."""
    v = np.asarray(values).astype(np.uint64).reshape(-1)
    shifts = np.arange(width, dtype=np.uint64)
    return ((v[:, None] >> shifts) & np.uint64(1)).astype(np.uint8).reshape(-1)


def bits_to_fields(bits: np.ndarray, width: int) -> np.ndarray:
    b = bits.reshape(-1, width).astype(np.uint64)
    return (b << np.arange(width, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)


def bits_to_beats(bits: np.ndarray, bus: int) -> np.ndarray:
    pad = (-len(bits)) % bus
    if pad:
        bits = np.concatenate([bits, np.zeros(pad, np.uint8)])
    return np.packbits(bits, bitorder="little").reshape(-1, bus // 8)


def beats_to_bits(beats: np.ndarray) -> np.ndarray:
    return np.unpackbits(np.ascontiguousarray(beats).reshape(-1), bitorder="little")


def to_unsigned(a, width: int) -> np.ndarray:
    return np.asarray(a, dtype=np.int64) & ((1 << width) - 1)


def to_signed(a, width: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.int64)
    return np.where(a >= 1 << (width - 1), a - (1 << width), a)


def pack_records(table: tuple[Field, ...], width: int, values: dict) -> np.ndarray:
    """Records (one per row of the value arrays) -> bits, from a field table."""
    n = len(np.atleast_1d(next(iter(values.values()))))
    rec = np.zeros((n, width), np.uint8)
    for f in table:
        v = to_unsigned(np.atleast_1d(values[f.name]), f.width)
        rec[:, f.offset:f.offset + f.width] = fields_to_bits(v, f.width).reshape(n, f.width)
    return rec.reshape(-1)


def unpack_records(table: tuple[Field, ...], width: int, bits: np.ndarray) -> tuple[dict, bool]:
    """bits -> ({field: int64 array}, whether every reserved bit is zero)."""
    rec = bits.reshape(-1, width)
    out, used = {}, np.zeros(width, bool)
    for f in table:
        v = bits_to_fields(rec[:, f.offset:f.offset + f.width].reshape(-1), f.width).astype(np.int64)
        out[f.name] = to_signed(v, f.width) if f.signed else v
        used[f.offset:f.offset + f.width] = True
    return out, not rec[:, ~used].any()


def int_weight_fields(w: np.ndarray, bits: int) -> np.ndarray:
    """int-b weights -> field values (b = 1: +1 -> 0, -1 -> 1)."""
    w = np.asarray(w, np.int64)
    return (w < 0).astype(np.int64) if bits == 1 else to_unsigned(w, bits)


def int_weight_values(f: np.ndarray, bits: int) -> np.ndarray:
    f = np.asarray(f, np.int64)
    return 1 - 2 * f if bits == 1 else to_signed(f, bits)


# ------------------------------------------------------------------ validation
def _expect(cond, where: str, field_: str, expected, found):
    if not cond:
        raise ImageError(f"{where}: {field_}: expected {expected}, found {found}")


def validate_layer(img: LayerImage, cfg: AccelConfig, where: str | None = None):
    where = where or f"layer {img.name}"
    _expect(isinstance(img.config, LayerConfig), where, "config", "a LayerConfig",
            type(img.config).__name__)
    try:
        cfg.check_layer(img.config, img.rows, img.cols, where)
    except ConfigError as e:
        raise ImageError(str(e)) from None
    lc, r, c = img.config, img.rows, img.cols

    def arr(name, shape, lo, hi):
        a = getattr(img, name)
        _expect(a is not None, where, name, f"array of shape {shape}", "nothing")
        a = np.asarray(a)
        _expect(a.shape == shape, where, f"{name} shape", shape, a.shape)
        _expect(np.issubdtype(a.dtype, np.integer), where, f"{name} dtype", "integer", a.dtype)
        if a.size:
            _expect(int(a.min()) >= lo and int(a.max()) <= hi, where, f"{name} range",
                    f"{lo}..{hi}", f"{int(a.min())}..{int(a.max())}")

    def absent(name):
        _expect(getattr(img, name) is None, where, name, f"none for {lc.name}", "an array")

    arr("bias", (r,), -(1 << 31), (1 << 31) - 1)
    arr("mult", (r,), 0, (1 << 16) - 1)
    arr("shift", (r,), 1, 63)
    arr("act", (c,), -128, 127)
    if lc.mode == "int":
        lo = -1 if lc.bits == 1 else -(1 << (lc.bits - 1))
        arr("weights", (r, c), lo, (1 << (lc.bits - 1)) - 1 if lc.bits > 1 else 1)
        if lc.bits == 1:
            _expect(not (np.asarray(img.weights) == 0).any(), where, "weights values",
                    "-1 or +1 for int1", "0")
        for n in ("codebook", "codes", "coefs", "signs"):
            absent(n)
        return
    v = -(-c // lc.d)
    lo, hi = (0, 255) if lc.mode == "ssvq" else (-128, 127)
    arr("codebook", (lc.m * lc.k, lc.d), lo, hi)
    arr("codes", (r, v, lc.m), 0, lc.k - 1)
    if lc.coef_bits:
        half = 1 << (lc.coef_bits - 1)
        arr("coefs", (r, v, lc.m), -half, half - 1)
    else:
        absent("coefs")
    if lc.mode == "ssvq":
        arr("signs", (r, c), 0, 1)
    else:
        absent("signs")
    absent("weights")


# --------------------------------------------------------------------- packing
def _pad_cols(a: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((a.shape[0], n) + a.shape[2:], np.int64)
    out[:, : a.shape[1]] = a
    return out


def weight_group_bits(img: LayerImage, cfg: AccelConfig) -> np.ndarray:
    """(rows*G, group_bits) bits of every weight-group record.

    int: mults fields of b bits. vq/ssvq: the signs first (ssvq: mults bits), then
    L*m slots s = l*m + i, each the code (code_bits) followed by its coefficient
    (coef_bits): every slot field starts at a multiple of code_bits + coef_bits,
    so the decoder picks fields by one stride."""
    lc, geo = img.config, cfg.geometry(img.config, img.rows, img.cols)
    n = img.rows * geo.groups_per_row
    if lc.mode == "int":
        w = _pad_cols(int_weight_fields(img.weights, lc.bits), geo.padded_cols)
        return fields_to_bits(w, lc.bits).reshape(n, geo.group_bits)
    nv = geo.groups_per_row * geo.lanes
    slot = _pad_cols(img.codes, nv)
    if lc.coef_bits:
        slot = slot | to_unsigned(_pad_cols(img.coefs, nv), lc.coef_bits) << lc.code_bits
    parts = [fields_to_bits(slot, lc.code_bits + lc.coef_bits).reshape(n, -1)]
    if lc.mode == "ssvq":
        parts.insert(0, _pad_cols(img.signs, geo.padded_cols).astype(np.uint8).reshape(n, -1))
    return np.concatenate(parts, axis=1)


def section_bits(img: LayerImage, cfg: AccelConfig) -> dict[str, np.ndarray]:
    """Each section's records as one bit string (before padding to beats)."""
    lc, geo = img.config, cfg.geometry(img.config, img.rows, img.cols)
    out = {"header": pack_records(HEADER_FIELDS, HEADER_BITS,
                                  header_values(lc, img.rows, img.cols)),
           "codebook": (fields_to_bits(to_unsigned(img.codebook, 8), 8)
                        if lc.mode != "int" else np.zeros(0, np.uint8)),
           "params": pack_records(PARAM_FIELDS, PARAM_BITS,
                                  {"bias": img.bias, "mult": img.mult, "shift": img.shift})}
    act = np.zeros(geo.padded_cols, np.int64)
    act[: img.cols] = img.act
    out["acts"] = fields_to_bits(to_unsigned(act, 8), 8)
    out["weights"] = weight_group_bits(img, cfg).reshape(-1)
    return out


def pack_layer(img: LayerImage, cfg: AccelConfig) -> tuple[np.ndarray, dict]:
    """Returns (beats as uint8 array (n, bus/8), {section: (first_beat, count)})."""
    validate_layer(img, cfg)
    bits = section_bits(img, cfg)
    parts = [bits_to_beats(bits[s], cfg.bus) for s in SECTIONS]
    return np.concatenate(parts), layer_sections(cfg, img.config, img.rows, img.cols)


def layer_sections(cfg: AccelConfig, lc: LayerConfig, rows: int, cols: int) -> dict:
    geo = cfg.geometry(lc, rows, cols)
    return {s: (geo.first_beat(s), geo.beats[s]) for s in SECTIONS}


# ------------------------------------------------------------------- unpacking
def read_header(beats: np.ndarray, cfg: AccelConfig, where: str) -> tuple[LayerConfig, int, int]:
    hb = -(-HEADER_BITS // cfg.bus)
    _expect(len(beats) >= hb, where, "beats", f"at least the {hb}-beat header", len(beats))
    bits = beats_to_bits(beats[:hb])
    h, clean = unpack_records(HEADER_FIELDS, HEADER_BITS, bits[:HEADER_BITS])
    h = {k: int(v[0]) for k, v in h.items()}
    if h["magic"] == HEADER_MAGIC_V1:
        raise ImageError(f"{where}: header magic: expected {hex(HEADER_MAGIC)} (format version "
                         f"2), found {hex(HEADER_MAGIC_V1)}: a version 1 stream, which this "
                         f"accelerator no longer reads; recompress with `ssvq compress`")
    _expect(h["magic"] == HEADER_MAGIC, where, "header magic", hex(HEADER_MAGIC), hex(h["magic"]))
    _expect(h["mode"] < len(MODES), where, "header mode", f"0..{len(MODES) - 1}", h["mode"])
    _expect(clean and not bits[HEADER_BITS:].any(), where, "header reserved bits", "zero",
            "non-zero bits")
    if h["mode"] == 0:
        _expect(h["code_bits"] == h["log2_d"] == h["m"] == h["coef_bits"] == 0, where,
                "header code_bits/log2_d/m/coef_bits", "0 for an int layer",
                [h["code_bits"], h["log2_d"], h["m"], h["coef_bits"]])
    else:
        _expect(h["bits"] == 0, where, "header bits", "0 for a vq/ssvq layer", h["bits"])
        _expect(1 <= h["code_bits"] <= 12, where, "header code_bits", "1..12", h["code_bits"])
        _expect(h["log2_d"] <= 6, where, "header log2_d", "0..6", h["log2_d"])
    try:
        lc = layer_config_of_header(h)
    except ConfigError as e:
        raise ImageError(f"{where}: header: {e}") from None
    try:
        cfg.check_layer(lc, h["rows"], h["cols"], f"{where}: header")
    except ConfigError as e:
        raise ImageError(str(e)) from None
    return lc, h["rows"], h["cols"]


def unpack_layer(beats: np.ndarray, cfg: AccelConfig, name: str = "?",
                 where: str = "stream") -> LayerImage:
    """Decodes a whole layer stream and checks every structural rule."""
    _expect(beats.ndim == 2 and beats.shape[1] == cfg.bus // 8, where, "beat width",
            f"{cfg.bus // 8} bytes", beats.shape[1:] if beats.ndim == 2 else beats.shape)
    lc, rows, cols = read_header(beats, cfg, where)
    geo = cfg.geometry(lc, rows, cols)
    secs = layer_sections(cfg, lc, rows, cols)
    _expect(len(beats) == geo.total_beats, where, "beat count",
            f"{geo.total_beats} for {lc.name} {rows}x{cols}", len(beats))

    def sec(s):
        a, n = secs[s]
        bits = beats_to_bits(beats[a:a + n])
        used = geo.records[s] * geo.record_bits[s]
        _expect(not bits[used:].any(), where, f"{s} padding", "zero", "non-zero bits")
        return bits[:used]

    img = LayerImage(name=name, config=lc, rows=rows, cols=cols, bias=None, mult=None,
                     shift=None, act=None)
    if lc.mode != "int":
        cb = bits_to_fields(sec("codebook"), 8).astype(np.int64).reshape(geo.codewords, lc.d)
        img.codebook = (cb.astype(np.uint8) if lc.mode == "ssvq"
                        else to_signed(cb, 8).astype(np.int8))
    p, clean = unpack_records(PARAM_FIELDS, PARAM_BITS, sec("params"))
    _expect(clean, where, "params reserved bits 54..63", "zero", "non-zero")
    _expect(int(p["shift"].min()) >= 1, where, "params shift", "1..63", int(p["shift"].min()))
    img.bias, img.mult, img.shift = (p["bias"].astype(np.int32), p["mult"].astype(np.uint16),
                                     p["shift"].astype(np.uint8))
    act = to_signed(bits_to_fields(sec("acts"), 8).astype(np.int64), 8)
    _expect(not act[cols:].any(), where, "acts padding columns", "zero", "non-zero")
    img.act = act[:cols].astype(np.int8)
    _unpack_weights(img, sec("weights").reshape(rows * geo.groups_per_row, geo.group_bits),
                    cfg, geo, where)
    return img


def _unpack_weights(img: LayerImage, gb: np.ndarray, cfg: AccelConfig, geo, where: str):
    lc, rows, cols = img.config, img.rows, img.cols
    if lc.mode == "int":
        f = bits_to_fields(gb.reshape(-1), lc.bits).astype(np.int64).reshape(rows, -1)
        _expect(not f[:, cols:].any(), where, "weights padding columns", "zero", "non-zero bits")
        img.weights = int_weight_values(f[:, :cols], lc.bits).astype(np.int8)
        return
    nv, v = geo.groups_per_row * geo.lanes, geo.vectors
    sb = geo.sign_field_bits
    f = bits_to_fields(gb[:, sb:].reshape(-1), lc.code_bits + lc.coef_bits).astype(np.int64)
    f = f.reshape(rows, nv, lc.m)
    codes = f & ((1 << lc.code_bits) - 1)
    _expect(not codes[:, v:].any(), where, "codes padding vectors", "zero", "non-zero")
    img.codes = codes[:, :v].astype(np.int32)
    if lc.coef_bits:
        co = to_signed(f >> lc.code_bits, lc.coef_bits)
        _expect(not co[:, v:].any(), where, "coefs padding vectors", "zero", "non-zero")
        img.coefs = co[:, :v].astype(np.int8)
    if lc.mode == "ssvq":
        s = gb[:, :sb].reshape(rows, geo.padded_cols)
        _expect(not s[:, cols:].any(), where, "signs padding columns", "zero", "non-zero")
        img.signs = s[:, :cols].astype(np.uint8)


# ------------------------------------------------------------------ file forms
def beats_to_hex(beats: np.ndarray) -> str:
    return "".join(row[::-1].tobytes().hex() + "\n" for row in beats)


def hex_to_beats(data: bytes | str, bus: int, where: str) -> np.ndarray:
    if isinstance(data, bytes):
        try:
            data = data.decode("ascii")
        except UnicodeDecodeError as e:
            raise ImageError(f"{where}: byte {e.start}: expected ASCII hex digits, found "
                             f"byte 0x{data[e.start]:02x}") from None
    lines = data.split("\n")
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
            raise ImageError(f"{where}: line {i + 1}: expected hex digits, found "
                             f"{line[:20]!r}") from None
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


def layer_arrays(img: LayerImage) -> dict:
    arrays = {k: np.asarray(getattr(img, k)) for k in ARRAYS if getattr(img, k) is not None}
    arrays.update({f"scale_{k}": np.asarray(v, np.float32) for k, v in img.scales.items()})
    return arrays


def check_chains(layers: list[LayerImage], where: str):
    """Every `input_from` names an earlier layer whose rows are this layer's cols and
    whose int8 outputs (ssvq.reference) are exactly this layer's activations."""
    from ssvq.reference import outputs      # reference builds on this module

    seen = {}
    for img in layers:
        src = img.input_from
        if src is not None:
            _expect(isinstance(src, str) and src in seen, where, f"{img.name}.input_from",
                    f"the name of an earlier layer (one of {sorted(seen)})", repr(src))
            s = seen[src]
            _expect(s.rows == img.cols, where, f"{img.name}.input_from",
                    f"a layer with {img.cols} rows (this layer's cols)",
                    f"{src} with {s.rows} rows")
            y = outputs(s)
            diff = int((np.asarray(img.act, np.int64) != y.astype(np.int64)).sum())
            _expect(diff == 0, where, f"{img.name}.act",
                    f"the int8 outputs of {src} (input_from)", f"{diff} of {len(y)} differ")
        seen[img.name] = img


def write_images(out_dir: str | os.PathLike, cfg: AccelConfig, layers: list[LayerImage],
                 meta: dict | None = None, progress=None, layer_meta: dict | None = None) -> Path:
    """Writes all layers and the manifest atomically: into a sibling temporary
    folder first, then swapped into place, so a failure leaves no half image.
    `layer_meta` maps a layer name to extra free-form manifest fields (`meta`)."""
    out_dir = Path(out_dir)
    names = [img.name for img in layers]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ImageError(f"{out_dir}: layers: expected unique names, found duplicates {dup}")
    check_chains(layers, f"{out_dir}: layers")
    with atomic_dir(out_dir) as tmp:
        entries = []
        for i, img in enumerate(layers):
            beats, sections = pack_layer(img, cfg)
            rel = _layer_dir(i, img.name)
            (tmp / rel).mkdir(parents=True)
            (tmp / rel / "stream.bin").write_bytes(beats.tobytes())
            (tmp / rel / "stream.hex").write_text(beats_to_hex(beats))
            with open(tmp / rel / "arrays.npz", "wb") as f:
                np.savez(f, **layer_arrays(img))
            entry = {
                "name": img.name, "config": img.config.to_dict(), "rows": img.rows,
                "cols": img.cols, "dir": rel, "beats": int(len(beats)),
                "sections": {s: list(v) for s, v in sections.items()},
                "files": {fn: {"sha256": _sha256(tmp / rel / fn),
                               "bytes": (tmp / rel / fn).stat().st_size} for fn in LAYER_FILES},
                "meta": (layer_meta or {}).get(img.name, {}),
            }
            if img.input_from is not None:
                entry["input_from"] = img.input_from
            entries.append(entry)
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

    def layer_config(self, name: str) -> LayerConfig:
        return LayerConfig.from_dict(self.entry(name)["config"])

    def beats(self, name: str) -> np.ndarray:
        """The layer's stream, after every check against the manifest."""
        e = self.entry(name)
        base = self.root / e["dir"]
        try:
            return self._beats(name, e, base)
        except OSError as err:      # e.g. a `dir` too long for the file system, unreadable
            raise ImageError(f"{err.filename or base}: expected a readable file listed in "
                             f"manifest, found an error ({err.strerror})") from None

    def _beats(self, name: str, e: dict, base: Path) -> np.ndarray:
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
        hexed = hex_to_beats((base / "stream.hex").read_bytes(), self.config.bus,
                             str(base / "stream.hex"))
        _expect(hexed.shape == beats.shape and bool((hexed == beats).all()),
                str(base / "stream.hex"), "contents", "the same beats as stream.bin",
                "different beats")
        _expect(len(beats) == e["beats"], str(base), "beats", e["beats"], len(beats))
        lc = self.layer_config(name)
        expect_sections = layer_sections(self.config, lc, e["rows"], e["cols"])
        found = {s: tuple(v) for s, v in e["sections"].items()}
        _expect(found == expect_sections, f"{self.root / 'manifest.json'} layer {name}",
                "sections", expect_sections, found)
        return beats

    def layer(self, name: str) -> LayerImage:
        """The decoded layer, after every check: files, stream, manifest, arrays."""
        e = self.entry(name)
        where = str(self.root / e["dir"] / "stream.bin")
        img = unpack_layer(self.beats(name), self.config, name, where)
        mwhere = f"{self.root / 'manifest.json'} layer {name}"
        _expect(img.config == self.layer_config(name), mwhere, "config",
                f"{img.config.to_dict()} (from the stream header)", e["config"])
        for fld in ("rows", "cols"):
            _expect(getattr(img, fld) == e[fld], mwhere, fld,
                    f"{getattr(img, fld)!r} (from the stream header)", repr(e[fld]))
        # Last, so that an edited shape or file is reported by its own field first.
        digest = manifest_digest(self.manifest)
        _expect(digest == self.manifest.get("manifest_sha256"), str(self.root / "manifest.json"),
                "manifest_sha256 (the manifest was edited after writing)",
                self.manifest.get("manifest_sha256"), digest)
        img.scales = self._arrays(img, self.root / e["dir"] / "arrays.npz")
        src = e.get("input_from")
        if src is not None:
            img.input_from = src
            check_chains([self.layer(src), img], mwhere)
        return img

    @staticmethod
    def _arrays(img: LayerImage, path: Path) -> dict:
        """arrays.npz must hold exactly the stream's logical arrays (plus float scales)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:      # noqa: BLE001 - any way the file fails to load is bad input
            # (zipfile raises BadZipFile, RuntimeError for an encrypted member,
            # NotImplementedError for an unknown compression method, zlib.error ...)
            raise ImageError(f"{path}: expected a NumPy .npz of plain arrays, found "
                             f"{type(e).__name__}: {str(e)[:120]}") from None
        for k, a in arrays.items():     # a member that is not a .npy file loads as bytes
            if not isinstance(a, np.ndarray):
                raise ImageError(f"{path}: {k}: expected a .npy array, found a member of "
                                 f"{len(a)} bytes that is not one")
        want = {k: np.asarray(v) for k, v in layer_arrays(img).items()
                if not k.startswith("scale_")}
        _expect(set(want) <= set(arrays), str(path), "arrays", sorted(want), sorted(arrays))
        for k, v in want.items():
            a = arrays[k]
            # (uint64 values above the int64 range must not wrap around onto the stream's)
            _expect(np.issubdtype(a.dtype, np.integer) and a.shape == v.shape
                    and not (a.dtype == np.uint64 and a.size and int(a.max()) >= 1 << 63)
                    and bool((a.astype(np.int64) == v.astype(np.int64)).all()), str(path), k,
                    f"the stream's values ({v.shape})", f"{a.dtype} {a.shape}, different values")
        scales = {}
        for k, a in arrays.items():
            if k in want:
                continue
            _expect(k.startswith("scale_") and np.issubdtype(a.dtype, np.floating), str(path),
                    k, "a scale_* float array", f"{a.dtype} array {k!r}")
            scales[k[6:]] = a
        return scales


def read_images(root: str | os.PathLike) -> ImageSet:
    root = Path(root)
    mpath = root / "manifest.json"
    m = load_json(mpath, ImageError, "a manifest")
    where = str(mpath)
    _expect(isinstance(m, dict) and m.get("format") == FORMAT_NAME, where, "format",
            FORMAT_NAME, repr(m.get("format")) if isinstance(m, dict) else type(m).__name__)
    if type(m.get("version")) is int and m["version"] == 1:
        raise ImageError(f"{mpath}: version: expected {FORMAT_VERSION}, found 1 (a version 1 "
                         f"image set, which this accelerator no longer reads; recompress it "
                         f"with `ssvq compress`)")
    _expect(type(m.get("version")) is int and m["version"] == FORMAT_VERSION, where,
            "version", FORMAT_VERSION, repr(m.get("version")))
    try:
        cfg = AccelConfig.from_dict(m.get("config"), f"{mpath}: config")
    except ConfigError as e:
        raise ImageError(str(e)) from None
    layers = m.get("layers")
    _expect(isinstance(layers, list) and layers, where, "layers", "a non-empty list",
            type(layers).__name__ if not isinstance(layers, list) else "an empty list")
    for i, e in enumerate(layers):
        for key, typ in (("name", str), ("config", dict), ("rows", int), ("cols", int),
                         ("dir", str), ("beats", int), ("sections", dict), ("files", dict)):
            _expect(isinstance(e, dict) and type(e.get(key)) is typ, where,
                    f"layers[{i}].{key}", typ.__name__,
                    repr(e.get(key) if isinstance(e, dict) else e)[:80])
        try:
            lc = LayerConfig.from_dict(e["config"], f"{mpath}: layers[{i}].config")
            cfg.check_layer(lc, e["rows"], e["cols"], f"{mpath}: layers[{i}] ({e['name']})")
        except ConfigError as err:
            raise ImageError(str(err)) from None
        _expect(".." not in Path(e["dir"]).parts and not Path(e["dir"]).is_absolute(),
                where, f"layers[{i}].dir", "a relative path inside the image", e["dir"])
        for fn in LAYER_FILES:
            f = e["files"].get(fn)
            _expect(isinstance(f, dict) and isinstance(f.get("sha256"), str)
                    and type(f.get("bytes")) is int, where, f"layers[{i}].files.{fn}",
                    "{sha256: str, bytes: int}", f)
        _expect(set(e["sections"]) == set(SECTIONS), where, f"layers[{i}].sections",
                f"exactly {list(SECTIONS)}", sorted(e["sections"]))
        for s in SECTIONS:
            v = e["sections"][s]
            _expect(isinstance(v, list) and len(v) == 2 and all(type(x) is int for x in v),
                    where, f"layers[{i}].sections.{s}", "[first_beat, count]", v)
        src = e.get("input_from")
        if src is not None:
            earlier = {x["name"]: x for x in layers[:i]}
            _expect(isinstance(src, str) and src in earlier, where, f"layers[{i}].input_from",
                    "the name of an earlier layer", repr(src)[:80])
            _expect(earlier[src]["rows"] == e["cols"], where, f"layers[{i}].input_from",
                    f"a layer with {e['cols']} rows (this layer's cols)",
                    f"{src} with {earlier[src]['rows']} rows")
    names = [e["name"] for e in layers]
    dup = sorted({n for n in names if names.count(n) > 1})
    _expect(not dup, where, "layers[].name", "unique names", f"duplicates {dup}")
    return ImageSet(root, cfg, m)
