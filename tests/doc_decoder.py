"""Clean-room decoder of the `ssvq-image` memory-image format.

Written only from docs/FORMAT.md (and the README), without reading or importing
the project's implementation: standard library plus NumPy. It checks a
manifest's files (sizes, SHA-256), parses stream.bin and stream.hex, decodes the
header, codebook, params, activations and weight blocks (with the structural
checks of FORMAT.md section 7), rebuilds the integer weight matrix (section 8)
and computes the int8 outputs (section 9); it also packs / unpacks the output
stream of section 10.

Section numbers in comments refer to docs/FORMAT.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

MAGIC = 0x315653
MODES = {0: "int8", 1: "vq", 2: "ssvq"}
MODE_IDS = {v: k for k, v in MODES.items()}
CONFIG_DEFAULTS = {"k": 256, "d": 8, "cw": 8, "mults": 32, "bus": 64,
                   "max_rows": 4096, "max_cols": 4096}
SECTION_NAMES = ("header", "codebook", "params", "acts", "weights")
FILES = ("stream.bin", "stream.hex", "arrays.npz")


class DocFormatError(ValueError):
    """A violation of docs/FORMAT.md found by this decoder."""


def _fail(where, what, expected, found):
    raise DocFormatError(f"{where}: {what}: expected {expected}, found {found}")


def _is_pow2(x):
    return isinstance(x, int) and x >= 1 and (x & (x - 1)) == 0


def _ceil(a, b):
    return -(-a // b)


def _log2(x):
    assert _is_pow2(x)
    return x.bit_length() - 1


# --------------------------------------------------------------------------
# Section 1: configuration


@dataclass(frozen=True)
class Config:
    k: int = 256
    d: int = 8
    cw: int = 8
    mults: int = 32
    bus: int = 64
    max_rows: int = 4096
    max_cols: int = 4096

    def validate(self):
        for name in ("k", "d", "mults", "bus"):
            if not _is_pow2(getattr(self, name)):
                raise DocFormatError(f"config: {name} must be a power of two, found {getattr(self, name)}")
        if self.cw != 8:
            raise DocFormatError(f"config: cw must be 8, found {self.cw}")
        if self.k < 2 or self.bus < 64 or self.d > self.mults:
            raise DocFormatError(f"config: invalid k/bus/d: {self}")
        if not (1 <= self.max_rows <= 65535 and 1 <= self.max_cols <= 65535):
            raise DocFormatError(f"config: max_rows/max_cols out of range: {self}")
        if self.k * self.d * self.cw < self.bus:
            raise DocFormatError(f"config: codebook smaller than one beat: {self}")
        pc = _ceil(self.max_cols, self.mults) * self.mults
        if 17 + math.ceil(math.log2(pc)) + 1 > 32:
            raise DocFormatError(f"config: accumulator wider than 32 bits: {self}")
        return self

    @classmethod
    def from_manifest(cls, obj):
        unknown = set(obj) - set(CONFIG_DEFAULTS) - {"lanes"}
        if unknown:
            raise DocFormatError(f"config: unknown keys {sorted(unknown)}")
        vals = dict(CONFIG_DEFAULTS)
        for key in CONFIG_DEFAULTS:
            if key in obj:
                vals[key] = int(obj[key])
        return cls(**vals).validate()


# --------------------------------------------------------------------------
# Section 2: derived quantities


@dataclass(frozen=True)
class Geometry:
    mode: str
    rows: int
    cols: int
    L: int
    code_bits: int
    G: int
    padded_cols: int
    V: int
    vectors_per_row: int
    P: int
    S: int
    N: int
    primary_beats: int
    sign_beats: int
    B: int
    codebook_beats: int
    param_beats: int
    act_beats: int
    weight_blocks: int
    weight_beats: int
    out_beats: int
    total_beats: int

    def sections(self):
        cb_first = 1
        par_first = cb_first + self.codebook_beats
        act_first = par_first + self.param_beats
        w_first = act_first + self.act_beats
        return {"header": [0, 1], "codebook": [cb_first, self.codebook_beats],
                "params": [par_first, self.param_beats],
                "acts": [act_first, self.act_beats],
                "weights": [w_first, self.weight_beats]}


def geometry(cfg: Config, mode: str, rows: int, cols: int) -> Geometry:
    if mode not in MODE_IDS:
        raise DocFormatError(f"mode: expected one of {tuple(MODE_IDS)}, found {mode}")
    L = cfg.mults // cfg.d
    code_bits = _log2(cfg.k)
    G = _ceil(cols, cfg.mults)
    padded_cols = G * cfg.mults
    V = _ceil(cols, cfg.d)
    P = 8 * cfg.mults if mode == "int8" else L * code_bits
    S = cfg.mults if mode == "ssvq" else 0
    # smallest N >= 1 with N*P and N*S multiples of bus (by search: the doc's
    # definition, not its closed form)
    N = 1
    while (N * P) % cfg.bus or (N * S) % cfg.bus:
        N += 1
    primary_beats = N * P // cfg.bus
    sign_beats = N * S // cfg.bus
    B = primary_beats + sign_beats
    if mode == "int8":
        codebook_beats = 0
    else:
        assert (cfg.k * cfg.d * 8) % cfg.bus == 0
        codebook_beats = cfg.k * cfg.d * 8 // cfg.bus
    param_beats = _ceil(rows * 64, cfg.bus)
    act_beats = _ceil(padded_cols * 8, cfg.bus)
    weight_blocks = _ceil(rows * G, N)
    weight_beats = weight_blocks * B
    out_beats = _ceil(rows * 8, cfg.bus)
    total = 1 + codebook_beats + param_beats + act_beats + weight_beats
    return Geometry(mode, rows, cols, L, code_bits, G, padded_cols, V, G * L, P, S, N,
                    primary_beats, sign_beats, B, codebook_beats, param_beats, act_beats,
                    weight_blocks, weight_beats, out_beats, total)


# --------------------------------------------------------------------------
# Section 5: beats, stream.bin, stream.hex


def beats_from_bin(data: bytes, bus: int, where="stream.bin") -> list[int]:
    nb = bus // 8
    if len(data) == 0 or len(data) % nb:
        _fail(where, "size", f"a non-zero multiple of {nb} bytes", len(data))
    return [int.from_bytes(data[i:i + nb], "little") for i in range(0, len(data), nb)]


def beats_from_hex(text: str, bus: int, where="stream.hex") -> list[int]:
    # universal newlines: treat CRLF / CR as LF
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    width = bus // 4
    out = []
    for n, line in enumerate(lines, 1):
        if len(line) != width or any(ch not in "0123456789abcdefABCDEF" for ch in line):
            _fail(where, f"line {n}", f"{width} hex digits", repr(line))
        out.append(int(line, 16))
    return out


def beats_to_bin(beats, bus: int) -> bytes:
    return b"".join(int(b).to_bytes(bus // 8, "little") for b in beats)


def beats_to_hex(beats, bus: int) -> str:
    return "".join(f"{int(b):0{bus // 4}x}\n" for b in beats)


class _Bits:
    """The stream as one little-endian bit string (stream bit n = beat n//bus, bit n%bus)."""

    def __init__(self, data: bytes):
        self.bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")

    def fields(self, start: int, count: int, width: int) -> np.ndarray:
        """`count` consecutive unsigned fields of `width` bits from stream bit `start` (int64)."""
        assert width <= 62
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        chunk = self.bits[start:start + count * width]
        assert chunk.size == count * width
        w = (np.int64(1) << np.arange(width, dtype=np.int64))
        return chunk.reshape(count, width).astype(np.int64) @ w

    def any_set(self, start: int, stop: int) -> bool:
        return bool(self.bits[start:stop].any())


# --------------------------------------------------------------------------
# Sections 6 and 7: decode a layer stream


@dataclass
class Layer:
    cfg: Config
    geo: Geometry
    mode: str
    rows: int
    cols: int
    bias: np.ndarray
    mult: np.ndarray
    shift: np.ndarray
    act: np.ndarray
    codebook: np.ndarray | None = None   # (k, d), signed (vq) or unsigned (ssvq)
    codes: np.ndarray | None = None      # (rows, V)
    signs: np.ndarray | None = None      # (rows, cols) 0/1
    weights: np.ndarray | None = None    # int8 mode: (rows, cols)
    extra: dict = field(default_factory=dict)


def decode_stream(data: bytes, cfg: Config, where="stream") -> Layer:
    """Decode one layer stream (the bytes of stream.bin) with the checks of section 7."""
    bus = cfg.bus
    beats = beats_from_bin(data, bus, where)           # check 1
    header = beats[0]
    rec = header & ((1 << 64) - 1)
    if (rec >> 40) != MAGIC:                            # check 2
        _fail(where, "header magic", hex(MAGIC), hex(rec >> 40))
    mode_id = rec & 0xFF
    if mode_id not in MODES:                            # check 3
        _fail(where, "mode id", "0..2", mode_id)
    if header >> 64:                                    # check 4
        _fail(where, "header bits above 63", "zero", "non-zero")
    rows = (rec >> 8) & 0xFFFF
    cols = (rec >> 24) & 0xFFFF
    if not 1 <= rows <= cfg.max_rows:                   # check 5
        _fail(where, "rows", f"1..{cfg.max_rows}", rows)
    if not 1 <= cols <= cfg.max_cols:
        _fail(where, "cols", f"1..{cfg.max_cols}", cols)
    mode = MODES[mode_id]
    g = geometry(cfg, mode, rows, cols)
    if len(beats) != g.total_beats:                     # check 6
        _fail(where, "beat count", f"{g.total_beats} for {mode} {rows}x{cols}", len(beats))
    sec = g.sections()
    bits = _Bits(data)

    def sbit(name):
        return sec[name][0] * bus

    # codebook (6.2)
    codebook = None
    if mode != "int8":
        raw = bits.fields(sbit("codebook"), cfg.k * cfg.d, 8).reshape(cfg.k, cfg.d)
        codebook = raw - 256 * (raw >= 128) if mode == "vq" else raw

    # params (6.3) -- check 7
    p0 = sbit("params")
    recs_lo = bits.fields(p0, 2 * rows, 32).reshape(rows, 2)   # [bits 31..0, bits 63..32]
    bias = recs_lo[:, 0] - (1 << 32) * (recs_lo[:, 0] >= (1 << 31))
    hi = recs_lo[:, 1]
    mult = hi & 0xFFFF
    shift = (hi >> 16) & 0x3F
    reserved = hi >> 22
    if bits.any_set(p0 + rows * 64, p0 + g.param_beats * bus):
        _fail(where, "params padding", "zero", "non-zero")
    if (reserved != 0).any():
        _fail(where, "params reserved bits 54..63", "zero", "non-zero")
    if (shift == 0).any():
        _fail(where, "params shift", "1..63", 0)

    # acts (6.4) -- check 8
    a0 = sbit("acts")
    raw = bits.fields(a0, g.padded_cols, 8)
    act_all = raw - 256 * (raw >= 128)
    if (act_all[cols:] != 0).any():
        _fail(where, "acts padding columns", "zero", "non-zero")
    if bits.any_set(a0 + g.padded_cols * 8, a0 + g.act_beats * bus):
        _fail(where, "acts padding bits", "zero", "non-zero")
    act = act_all[:cols]

    # weights (6.5) -- check 9. Flat view: primary parts concatenated, sign parts concatenated.
    w0 = sbit("weights")
    ngroups = rows * g.G
    nslots = g.weight_blocks * g.N
    prim_bits = g.primary_beats * bus        # == N*P
    sign_bits = g.sign_beats * bus           # == N*S
    blk_bits = g.B * bus
    blocks = bits.bits[w0:w0 + g.weight_blocks * blk_bits].reshape(g.weight_blocks, blk_bits)
    primary = blocks[:, :prim_bits].reshape(-1)          # nslots * P bits
    signpart = blocks[:, prim_bits:prim_bits + sign_bits].reshape(-1)  # nslots * S bits
    if primary[ngroups * g.P:].any():
        _fail(where, "weights padding groups (primary)", "zero", "non-zero")
    pb = _Bits(b"")
    pb.bits = primary
    codes = weights = signs = None
    if mode == "int8":
        raw = pb.fields(0, ngroups * cfg.mults, 8).reshape(rows, g.padded_cols)
        wpad = raw - 256 * (raw >= 128)
        if (wpad[:, cols:] != 0).any():
            _fail(where, "weights padding columns", "zero", "non-zero")
        weights = wpad[:, :cols]
    else:
        cpad = pb.fields(0, ngroups * g.L, g.code_bits).reshape(rows, g.vectors_per_row)
        if (cpad[:, g.V:] != 0).any():
            _fail(where, "codes padding vectors", "zero", "non-zero")
        codes = cpad[:, :g.V]
    if mode == "ssvq":
        if signpart[ngroups * g.S:].any():
            _fail(where, "signs padding groups", "zero", "non-zero")
        spad = signpart[:ngroups * g.S].reshape(rows, g.padded_cols).astype(np.int64)
        if (spad[:, cols:] != 0).any():
            _fail(where, "signs padding columns", "zero", "non-zero")
        signs = spad[:, :cols]

    return Layer(cfg, g, mode, rows, cols, bias, mult, shift, act,
                 codebook=codebook, codes=codes, signs=signs, weights=weights)


def decode_hex_text(text: str, cfg: Config) -> Layer:
    """Decode a layer given as stream.hex text (used for the worked examples)."""
    beats = beats_from_hex(text, cfg.bus)
    return decode_stream(beats_to_bin(beats, cfg.bus), cfg)


# --------------------------------------------------------------------------
# Sections 8 and 9: weights and compute


def weight_matrix(layer: Layer) -> np.ndarray:
    if layer.mode == "int8":
        return layer.weights.astype(np.int64)
    d = layer.cfg.d
    cols = layer.cols
    c = np.arange(cols)
    code_per_col = layer.codes[:, c // d]                    # (rows, cols)
    W = layer.codebook[code_per_col, c % d].astype(np.int64)
    if layer.mode == "ssvq":
        W = np.where(layer.signs == 1, -W, W)
    return W


def accumulate(layer: Layer) -> list[int]:
    W = weight_matrix(layer)
    act = [int(a) for a in layer.act]
    # exact: int64 is enough per the doc, but use Python ints to be safe
    return [sum(int(w) * a for w, a in zip(row, act)) for row in W.tolist()]


def requantize(acc, bias, mult, shift) -> list[int]:
    out = []
    for a, b, m, s in zip(acc, bias, mult, shift):
        a, b, m, s = int(a), int(b), int(m), int(s)
        v = ((a + b) * m + (1 << (s - 1))) >> s      # Python >> floors (toward -inf)
        out.append(max(-128, min(127, v)))
    return out


def outputs(layer: Layer) -> np.ndarray:
    acc = accumulate(layer)
    return np.array(requantize(acc, layer.bias, layer.mult, layer.shift), dtype=np.int8)


# --------------------------------------------------------------------------
# Section 10: output stream


def output_beats(y, bus: int) -> list[int]:
    nb = bus // 8
    y = [int(v) & 0xFF for v in y]
    n = _ceil(len(y), nb)
    return [int.from_bytes(bytes(y[i * nb:(i + 1) * nb]) + bytes(nb - len(y[i * nb:(i + 1) * nb])),
                           "little") for i in range(n)]


def outputs_from_beats(beats, rows: int, bus: int) -> np.ndarray:
    data = b"".join(int(b).to_bytes(bus // 8, "little") for b in beats)
    return np.frombuffer(data[:rows], dtype=np.int8).copy()


# --------------------------------------------------------------------------
# Sections 3 and 4: an image folder


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Image:
    """An image set opened following section 4's checks."""

    def __init__(self, root):
        self.root = os.fspath(root)
        mpath = os.path.join(self.root, "manifest.json")
        self.mpath = mpath
        if not os.path.isfile(mpath):
            _fail(mpath, "manifest", "a manifest", "no such file")
        with open(mpath, "rb") as f:
            raw = f.read()
        m = json.loads(raw.decode("ascii"))
        if not isinstance(m, dict) or m.get("format") != "ssvq-image":
            _fail(mpath, "format", "ssvq-image", m.get("format") if isinstance(m, dict) else type(m))
        if m.get("version") != 1:
            _fail(mpath, "version", 1, m.get("version"))
        self.cfg = Config.from_manifest(m.get("config", {}))
        layers = m.get("layers")
        if not isinstance(layers, list) or not layers:
            _fail(mpath, "layers", "a non-empty array", layers)
        for i, e in enumerate(layers):
            for key, typ in (("name", str), ("mode", str), ("rows", int), ("cols", int),
                             ("dir", str), ("beats", int), ("sections", dict), ("files", dict)):
                if not isinstance(e.get(key), typ):
                    _fail(mpath, f"layers[{i}].{key}", typ.__name__, e.get(key))
            if e["mode"] not in MODE_IDS:
                _fail(mpath, f"layers[{i}].mode", tuple(MODE_IDS), e["mode"])
            parts = e["dir"].split("/")
            if e["dir"].startswith("/") or ".." in parts:
                _fail(mpath, f"layers[{i}].dir", "a relative path", e["dir"])
            for fn in FILES:
                if fn not in e["files"]:
                    _fail(mpath, f"layers[{i}].files", fn, "missing")
            if not 1 <= e["rows"] <= self.cfg.max_rows:
                _fail(mpath, f"layers[{i}].rows", f"1..{self.cfg.max_rows}", e["rows"])
            if not 1 <= e["cols"] <= self.cfg.max_cols:
                _fail(mpath, f"layers[{i}].cols", f"1..{self.cfg.max_cols}", e["cols"])
        self.manifest = m
        self.layers = layers
        self.names = [e["name"] for e in layers]

    def entry(self, name):
        for e in self.layers:
            if e["name"] == name:
                return e
        raise KeyError(name)

    def layer(self, name) -> Layer:
        e = self.entry(name)
        cfg = self.cfg
        ldir = os.path.join(self.root, *e["dir"].split("/"))
        contents = {}
        for fn in FILES:                                           # check 1
            p = os.path.join(ldir, fn)
            if not os.path.isfile(p):
                _fail(p, "file", "file listed in manifest", "nothing")
            size = os.path.getsize(p)
            if size != e["files"][fn]["bytes"]:
                _fail(p, "bytes", e["files"][fn]["bytes"], size)
            digest = _sha256(p)
            if digest != e["files"][fn]["sha256"]:
                _fail(p, "sha256", e["files"][fn]["sha256"], digest)
            if fn != "arrays.npz":
                with open(p, "rb") as f:
                    contents[fn] = f.read()
        data = contents["stream.bin"]
        binpath = os.path.join(ldir, "stream.bin")
        if len(data) % (cfg.bus // 8):                              # check 2
            _fail(binpath, "size", f"multiple of {cfg.bus // 8}", len(data))
        beats = beats_from_bin(data, cfg.bus, binpath)
        hexbeats = beats_from_hex(contents["stream.hex"].decode("ascii"), cfg.bus,
                                  os.path.join(ldir, "stream.hex"))
        if hexbeats != beats:                                       # check 3
            _fail(os.path.join(ldir, "stream.hex"), "contents",
                  "the same beats as stream.bin", "different beats")
        # the writer's exact hex bytes
        if contents["stream.hex"] != beats_to_hex(beats, cfg.bus).encode("ascii"):
            _fail(os.path.join(ldir, "stream.hex"), "bytes", "writer's canonical form", "other")
        if len(beats) != e["beats"]:                                # check 4
            _fail(ldir, "beats", e["beats"], len(beats))
        g = geometry(cfg, e["mode"], e["rows"], e["cols"])
        if e["sections"] != g.sections():                           # check 5
            _fail(f"{self.mpath} layer {name}", "sections", g.sections(), e["sections"])
        layer = decode_stream(data, cfg, binpath)                   # check 6
        for key in ("mode", "rows", "cols"):                        # check 7
            if getattr(layer, key) != e[key]:
                _fail(f"{self.mpath} layer {name}", key, getattr(layer, key), e[key])
        with np.load(os.path.join(ldir, "arrays.npz")) as z:
            layer.extra = {k: z[k] for k in z.files}
        return layer

    def outputs(self, name) -> np.ndarray:
        return outputs(self.layer(name))


def layer_outputs(image_dir, name) -> np.ndarray:
    """The int8 output vector of layer `name` of the image at `image_dir`."""
    return Image(image_dir).outputs(name)
