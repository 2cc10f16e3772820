"""Independent decoder (and small encoder) for ``ssvq-image`` version 2.

Written from ``docs/FORMAT.md`` alone, as a clean-room check of that
document: nothing here was taken from the reference implementation
(``ssvq/``, ``hw/``, ``sim/``, ``compress/``).  Section numbers in the
comments are those of FORMAT.md.

Public entry points:

* ``decode_image_set(path)`` -> list of per-layer dicts (name, config, rows,
  cols, weights (the integer weight matrix W, int64), bias, mult, shift, act,
  outputs (int8), and the logical arrays and derived values);
* ``decode_stream(beats, build_config)`` -> one layer's dict (no name);
* ``encode_stream(build_config, config, rows, cols, arrays)`` -> bytes, the
  inverse, used to check the worked examples in both directions.

Every violation raises ``DocFormatError`` (a ``ValueError``) whose text
follows the messages the document quotes.
"""

import hashlib
import json
import os
import re

import numpy as np


class DocFormatError(ValueError):
    """A violation of FORMAT.md found by this decoder."""


# ---------------------------------------------------------------------------
# 2.1 constants

CW_BITS = 8
ACT_BITS = 8
OUT_BITS = 8
HEADER_BITS = 128
PARAM_BITS = 64
BIAS_BITS, MULT_BITS, SHIFT_BITS = 32, 16, 6
ACC_BITS = 40
INT_BITS = (1, 2, 3, 4, 5, 6, 8)
M_MAX = 2
COEF_BITS_MAX = 4
HEADER_MAGIC = 0x325653
HEADER_MAGIC_V1 = 0x315653
MAX_RECORD_BITS = 1024

MODES = ("int", "vq", "ssvq")
MODE_ID = {"int": 0, "vq": 1, "ssvq": 2}
MODE_OF_ID = {0: "int", 1: "vq", 2: "ssvq"}
SECTIONS = ("header", "codebook", "params", "acts", "weights")
STREAM_FILES = ("stream.bin", "stream.hex", "arrays.npz")

BUILD_FIELDS = ("kmax", "d_set", "int_bits", "modes", "m_max",
                "coef_bits_max", "mults", "bus", "max_rows", "max_cols")
BUILD_DEFAULTS = {"kmax": 256, "d_set": (4, 8), "int_bits": INT_BITS,
                  "modes": MODES, "m_max": 2, "coef_bits_max": 4,
                  "mults": 32, "bus": 64, "max_rows": 4096,
                  "max_cols": 4096}
LC_FIELDS = ("mode", "bits", "k", "d", "m", "coef_bits")

NAME_RE = re.compile(
    r"^(?:int(?P<bits>\d+)|(?P<mode>vq|ssvq)-k(?P<k>\d+)-d(?P<d>\d+)"
    r"(?:-m(?P<m>\d+))?(?:-c(?P<c>\d+))?)$")


# ---------------------------------------------------------------------------
# 1. conventions

def is_int(v):
    return type(v) is int


def is_pow2(v):
    return type(v) is int and v >= 1 and v & (v - 1) == 0


def bitlen(n):
    return n.bit_length()


def log2(x):
    assert is_pow2(x), x
    return x.bit_length() - 1


def ceil_div(a, b):
    return -(-a // b)


def signed(u, n):
    """Two's complement read of an n-bit pattern (scalar or array)."""
    if n == 0:
        return u * 0
    return np.where(u >= (1 << (n - 1)), u - (1 << n), u) \
        if isinstance(u, np.ndarray) else (u - (1 << n) if u >= (1 << (n - 1)) else u)


# ---------------------------------------------------------------------------
# 2. build configuration

def group_bits_of(build, lc):
    """2.3: width of one weight-group record of layer configuration lc."""
    mults = build["mults"]
    if lc["mode"] == "int":
        return mults * lc["bits"]
    lanes = mults // lc["d"]
    slots = lanes * lc["m"] * (log2(lc["k"]) + lc["coef_bits"])
    return slots + (mults if lc["mode"] == "ssvq" else 0)


def _derived(b):
    """2.3 derived quantities (only for a build that passed (a)-(i))."""
    codebook_modes = tuple(x for x in b["modes"] if x != "int")
    w = 8 if "int" in b["modes"] else 0
    if codebook_modes:
        w = max(w, 9 + b["coef_bits_max"] + bitlen(b["m_max"] - 1))
    padded = ceil_div(b["max_cols"], b["mults"]) * b["mults"]
    acc_needed = w + 8 + bitlen(padded - 1) + 1
    groups = [0]
    if "int" in b["modes"]:
        groups += [b["mults"] * x for x in b["int_bits"]]
    for mode in codebook_modes:
        lc = {"mode": mode, "bits": 0, "k": b["kmax"], "d": min(b["d_set"]),
              "m": b["m_max"], "coef_bits": b["coef_bits_max"]}
        groups.append(group_bits_of(b, lc))
    max_group_bits = max(groups)
    d_max = max(b["d_set"])
    return {
        "codebook_modes": codebook_modes,
        "code_bits_max": log2(b["kmax"]),
        "lanes_max": b["mults"] // min(b["d_set"]),
        "d_max": d_max,
        "weight_bits": w,
        "acc_needed": acc_needed,
        "max_group_bits": max_group_bits,
        "max_record_bits": max(HEADER_BITS, PARAM_BITS, b["mults"] * 8,
                               d_max * 8, max_group_bits),
    }


def _contains(container, x):
    """Python ``x in container``; False where that is not defined."""
    try:
        return x in container
    except TypeError:
        return False


def make_build(fields=None, **kw):
    """2.2: validate a build given as field values (missing: defaults).

    Returns a dict of the ten fields (tuples for the lists) plus ``derived``.
    """
    b = dict(BUILD_DEFAULTS)
    if fields is not None:
        b.update(fields)
    b.update(kw)
    unknown = sorted(set(b) - set(BUILD_FIELDS))
    if unknown:
        raise DocFormatError(f"accelerator config: unknown field(s) {unknown}")
    for key in ("d_set", "int_bits", "modes"):
        if isinstance(b[key], list):
            b[key] = tuple(b[key])
    errs = []
    for key in ("kmax", "mults", "bus"):                           # (a)
        if not is_pow2(b[key]):
            errs.append(f"{key}: expected a power of two, found {b[key]!r}")
    if is_pow2(b["kmax"]) and not 2 <= b["kmax"] <= 4096:          # (b)
        errs.append(f"kmax: expected 2..4096, found {b['kmax']}")
    if is_pow2(b["bus"]) and b["bus"] < 64:                        # (c)
        errs.append(f"bus: expected at least 64 bits, found {b['bus']}")
    modes = b["modes"]                                             # (d)
    if not (isinstance(modes, tuple) and modes
            and all(isinstance(x, str) for x in modes)
            and len(set(modes)) == len(modes)
            and all(x in MODES for x in modes)):
        errs.append(f"modes: expected distinct names from {MODES!r}, "
                    f"found {modes!r}")
    ib = b["int_bits"]                                             # (e)
    e_ok = False
    try:
        e_ok = (isinstance(ib, tuple) and len(set(ib)) == len(ib)
                and all(x in INT_BITS for x in ib))
    except TypeError:
        e_ok = False
    if not e_ok:
        errs.append(f"int_bits: expected distinct widths from {INT_BITS!r}, "
                    f"found {ib!r}")
    elif _contains(modes, "int") and not ib:                       # (e')
        errs.append("int_bits: expected at least one width when the int "
                    "mode is built")
    ds = b["d_set"]                                                # (f)
    f_ok = (isinstance(ds, tuple) and ds and all(is_pow2(x) and x <= 64
                                                  for x in ds)
            and len(set(ds)) == len(ds))
    if not f_ok:
        errs.append(f"d_set: expected distinct powers of two up to 64, "
                    f"found {ds!r}")
    elif is_pow2(b["mults"]) and max(ds) > b["mults"]:              # (f')
        errs.append(f"d_set: every d must be at most mults ({b['mults']}), "
                    f"found {ds!r}")
    if not (is_int(b["m_max"]) and 1 <= b["m_max"] <= 2):          # (g)
        errs.append(f"m_max: expected 1..2, found {b['m_max']!r}")
    if not (is_int(b["coef_bits_max"]) and 0 <= b["coef_bits_max"] <= 4):
        errs.append(f"coef_bits_max: expected 0..4, "                # (h)
                    f"found {b['coef_bits_max']!r}")
    for key in ("max_rows", "max_cols"):                           # (i)
        if not (is_int(b[key]) and 1 <= b[key] <= 65535):
            errs.append(f"{key}: expected 1..65535, found {b[key]!r}")
    if errs:
        raise DocFormatError("accelerator config: " + "; ".join(errs))
    der = _derived(b)
    if der["acc_needed"] > ACC_BITS:                               # (j)
        raise DocFormatError(
            f"accelerator config: max_cols={b['max_cols']} with "
            f"{der['weight_bits']}-bit weights needs a {der['acc_needed']}-bit "
            f"accumulator, have {ACC_BITS}")
    if der["max_record_bits"] > MAX_RECORD_BITS:                   # (k)
        raise DocFormatError(
            f"accelerator config: the widest record (header, codeword, activation word or "
            f"weight group) is {der['max_record_bits']} bits, more than {MAX_RECORD_BITS} "
            f"(lower mults, m_max or kmax, or raise the smallest d)")
    out = {k: b[k] for k in BUILD_FIELDS}
    out["derived"] = der
    return out


def build_to_dict(build):
    return {k: (list(build[k]) if isinstance(build[k], tuple) else build[k])
            for k in BUILD_FIELDS}


def build_from_dict(d, where, partial=False):
    """2.5 ``AccelConfig.from_dict``."""
    if not isinstance(d, dict):
        raise DocFormatError(f"{where}: expected an object of config fields, "
                             f"found {type(d).__name__}")
    unknown = sorted(set(d) - set(BUILD_FIELDS))
    if unknown:
        raise DocFormatError(f"{where}: unknown field(s) {unknown}; expected "
                             f"{list(BUILD_FIELDS)}")
    if not partial:
        missing = [k for k in BUILD_FIELDS if k not in d]
        if missing:
            raise DocFormatError(f"{where}: missing field(s) {missing}")
    for key, v in d.items():
        if key in ("d_set", "int_bits"):
            if not (isinstance(v, list) and all(is_int(x) for x in v)):
                raise DocFormatError(
                    f"{where}: {key}: expected a list of integers, found {v!r}")
        elif key == "modes":
            if not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
                raise DocFormatError(
                    f"{where}: modes: expected a list of names, found {v!r}")
        elif not is_int(v):
            raise DocFormatError(
                f"{where}: {key}: expected an integer, found {v!r}")
    try:
        return make_build(d)
    except DocFormatError as e:
        raise DocFormatError(f"{where}: {e}") from None


def as_build(build_config):
    if isinstance(build_config, dict) and "derived" in build_config:
        return build_config
    return make_build(build_config)


# ---------------------------------------------------------------------------
# 3. layer configuration

def layer_config(mode, bits=0, k=0, d=0, m=0, coef_bits=0):
    """3.2: a validated layer configuration (a dict of the six fields)."""
    if not (isinstance(mode, str) and mode in MODES):
        raise DocFormatError(f"layer config: mode: expected one of {MODES!r}, "
                             f"found {mode!r}")
    vals = {"bits": bits, "k": k, "d": d, "m": m, "coef_bits": coef_bits}
    errs = [f"{f}: expected an integer, found {v!r}"
            for f, v in vals.items() if not is_int(v)]
    if errs:
        raise DocFormatError("layer config: " + "; ".join(errs))
    errs = []
    if mode == "int":
        if bits not in INT_BITS:
            errs.append(f"bits: expected one of {INT_BITS!r}, found {bits}")
        if k or d or m or coef_bits:
            errs.append("k, d, m, coef_bits: expected 0 for an int layer")
    else:
        if bits != 0:
            errs.append(f"bits: expected 0 for a {mode} layer, found {bits}")
        if not (is_pow2(k) and k >= 2):
            errs.append(f"k: expected a power of two >= 2, found {k}")
        if not is_pow2(d):
            errs.append(f"d: expected a power of two, found {d}")
        if not 1 <= m <= 2:
            errs.append(f"m: expected 1..2, found {m}")
        if not 0 <= coef_bits <= 4:
            errs.append(f"coef_bits: expected 0..4, found {coef_bits}")
    if errs:
        raise DocFormatError(f"layer config {mode}: " + "; ".join(errs))
    return {"mode": mode, **vals}


def lc_to_dict(lc):
    if lc["mode"] == "int":
        return {"mode": "int", "bits": lc["bits"]}
    return {"mode": lc["mode"], "k": lc["k"], "d": lc["d"], "m": lc["m"],
            "coef_bits": lc["coef_bits"]}


def lc_name(lc):
    if lc["mode"] == "int":
        return f"int{lc['bits']}"
    s = f"{lc['mode']}-k{lc['k']}-d{lc['d']}"
    if lc["m"] != 1:
        s += f"-m{lc['m']}"
    if lc["coef_bits"] != 0:
        s += f"-c{lc['coef_bits']}"
    return s


def lc_parse(name, where="layer config"):
    """3.3 ``LayerConfig.parse``."""
    mt = NAME_RE.match(name) if isinstance(name, str) else None
    if mt is None:
        raise DocFormatError(
            f"{where}: expected a name like int4, vq-k256-d4, ssvq-k256-d8 or "
            f"vq-k16-d8-m2-c4, found {name!r}")
    if mt.group("bits") is not None:
        return layer_config("int", bits=int(mt.group("bits")))
    return layer_config(mt.group("mode"), k=int(mt.group("k")),
                        d=int(mt.group("d")),
                        m=int(mt.group("m")) if mt.group("m") else 1,
                        coef_bits=int(mt.group("c")) if mt.group("c") else 0)


def lc_from_dict(d, where="layer config"):
    """3.4 ``LayerConfig.from_dict``."""
    if not isinstance(d, dict):
        raise DocFormatError(f"{where}: expected an object, found "
                             f"{type(d).__name__}")
    unknown = sorted(set(d) - set(LC_FIELDS))
    if unknown:
        raise DocFormatError(f"{where}: unknown field(s) {unknown}; expected "
                             f"{sorted(LC_FIELDS)}")
    if "mode" not in d:
        raise DocFormatError(f"{where}: LayerConfig.__init__() missing 1 "
                             f"required positional argument: 'mode'")
    try:
        return layer_config(**d)
    except DocFormatError as e:
        raise DocFormatError(f"{where}: {e}") from None


def check_layer(build, lc, rows, cols, where="layer"):
    """2.4 ``check_layer``."""
    b = build
    if lc["mode"] not in b["modes"]:
        raise DocFormatError(f"{where}: mode '{lc['mode']}' is not built into "
                             f"this accelerator (built: {list(b['modes'])})")
    if lc["mode"] == "int":
        if lc["bits"] not in b["int_bits"]:
            raise DocFormatError(f"{where}: int{lc['bits']}: bits {lc['bits']} "
                                 f"not built (int_bits {list(b['int_bits'])})")
    else:
        if lc["k"] > b["kmax"]:
            raise DocFormatError(f"{where}: k={lc['k']} is above "
                                 f"kmax={b['kmax']} of this build")
        if lc["d"] not in b["d_set"]:
            raise DocFormatError(f"{where}: d={lc['d']} is not in this build's "
                                 f"d_set {list(b['d_set'])}")
        if lc["m"] > b["m_max"]:
            raise DocFormatError(f"{where}: m={lc['m']} is above "
                                 f"m_max={b['m_max']} of this build")
        if lc["coef_bits"] > b["coef_bits_max"]:
            raise DocFormatError(
                f"{where}: coef_bits={lc['coef_bits']} is above "
                f"coef_bits_max={b['coef_bits_max']} of this build")
    if not (is_int(rows) and 1 <= rows <= b["max_rows"]):
        raise DocFormatError(f"{where}: rows={rows} outside "
                             f"1..{b['max_rows']} (max_rows)")
    if not (is_int(cols) and 1 <= cols <= b["max_cols"]):
        raise DocFormatError(f"{where}: cols={cols} outside "
                             f"1..{b['max_cols']} (max_cols)")


# ---------------------------------------------------------------------------
# 4. geometry

def geometry(build, lc, rows, cols):
    b = build
    mults, bus = b["mults"], b["bus"]
    G = ceil_div(cols, mults)
    g = {"G": G, "padded_cols": G * mults, "rows": rows, "cols": cols}
    if lc["mode"] == "int":
        g.update(L=0, V=0, code_bits=0, S=0, B=0,
                 group_bits=mults * lc["bits"], codewords=0, codeword_bits=0)
    else:
        L = mults // lc["d"]
        cb = log2(lc["k"])
        S = cb + lc["coef_bits"]
        B = mults if lc["mode"] == "ssvq" else 0
        g.update(L=L, V=ceil_div(cols, lc["d"]), code_bits=cb, S=S, B=B,
                 group_bits=B + L * lc["m"] * S, codewords=lc["m"] * lc["k"],
                 codeword_bits=lc["d"] * 8)
    assert g["group_bits"] == group_bits_of(b, lc)
    records = {"header": (1, HEADER_BITS),
               "codebook": (g["codewords"], g["codeword_bits"]),
               "params": (rows, PARAM_BITS),
               "acts": (G, mults * ACT_BITS),
               "weights": (rows * G, g["group_bits"])}
    first = 0
    sections = {}
    for s in SECTIONS:
        n, w = records[s]
        nb = ceil_div(n * w, bus)
        sections[s] = (first, nb)
        first += nb
    g["records"] = records
    g["sections"] = sections
    g["total"] = first
    g["out_beats"] = ceil_div(rows * OUT_BITS, bus)
    return g


def header_record(lc, rows, cols):
    """5.2 / 3.5 header as a 128-bit integer."""
    if lc["mode"] == "int":
        vals = (lc["bits"], 0, 0, 0, 0)
    else:
        vals = (0, log2(lc["k"]), log2(lc["d"]), lc["m"], lc["coef_bits"])
    bits, code_bits, log2_d, m, coef_bits = vals
    return (MODE_ID[lc["mode"]] | rows << 8 | cols << 24 | HEADER_MAGIC << 40
            | bits << 64 | code_bits << 72 | log2_d << 80 | m << 88
            | coef_bits << 96)


# ---------------------------------------------------------------------------
# bit strings

def _to_bits(data):
    return np.unpackbits(np.frombuffer(bytes(data), np.uint8), bitorder="little")


def _fields(bits, starts, width):
    """Unsigned fields of ``width`` bits at the given bit offsets (int64)."""
    starts = np.asarray(starts, dtype=np.int64)
    if width == 0:
        return np.zeros(starts.shape, np.int64)
    assert width <= 62
    idx = starts[..., None] + np.arange(width, dtype=np.int64)
    return (bits[idx].astype(np.int64) << np.arange(width, dtype=np.int64)).sum(-1)


def _put(bits, starts, width, values):
    starts = np.asarray(starts, dtype=np.int64).ravel()
    if width == 0 or starts.size == 0:
        return
    vals = np.asarray(values, dtype=np.int64).ravel() & ((1 << width) - 1)
    idx = starts[:, None] + np.arange(width, dtype=np.int64)
    bits[idx] = (vals[:, None] >> np.arange(width, dtype=np.int64)) & 1


def section_bits(bits, build, sections, name):
    first, nb = sections[name]
    bus = build["bus"]
    return bits[first * bus:(first + nb) * bus]


# ---------------------------------------------------------------------------
# 6. decoding a layer stream

def _fail(where, text):
    raise DocFormatError(f"{where}: {text}")


def _slot_layout(g, lc):
    """Offsets (section bits) of codes, coefficients of every vector slot
    (rows, G*L, m) and of every sign bit (rows, padded_cols)."""
    rows, G, L, m = g["rows"], g["G"], g["L"], lc["m"]
    r = np.arange(rows)[:, None, None]
    v = np.arange(G * L)[None, :, None]
    i = np.arange(m)[None, None, :]
    q, l = v // L, v % L
    start = (r * G + q) * g["group_bits"] + g["B"] + (l * m + i) * g["S"]
    return start, start + g["code_bits"]


def _sign_layout(build, g):
    mults = build["mults"]
    r = np.arange(g["rows"])[:, None]
    c = np.arange(g["padded_cols"])[None, :]
    return (r * g["G"] + c // mults) * g["group_bits"] + c % mults


def decode_stream(beats, build_config, where="stream"):
    """Decode one layer stream (6) and compute its outputs (7).

    ``beats``: the stream's bytes (``stream.bin`` contents), or a 2-D uint8
    array of ``bus/8`` bytes per beat.  ``build_config``: a dict of build
    fields (missing ones take the defaults of 2.1) or a ``make_build`` result.
    """
    build = as_build(build_config)
    bus = build["bus"]
    bw = bus // 8
    if isinstance(beats, np.ndarray):                                # 1
        if beats.ndim != 2 or beats.shape[1] != bw:
            _fail(where, f"beat width: expected {bw} bytes, found {beats.shape}")
        data = beats.astype(np.uint8).tobytes()
    else:
        data = bytes(beats)
        if len(data) % bw:
            _fail(where, f"beat width: expected {bw} bytes, found ({len(data)},)")
    n = len(data) // bw
    hb = ceil_div(HEADER_BITS, bus)
    if n < hb:                                                       # 2
        _fail(where, f"beats: expected at least the {hb}-beat header, found {n}")
    bits = _to_bits(data)
    header = int.from_bytes(data[:16], "little")
    magic = (header >> 40) & 0xFFFFFF
    if magic == HEADER_MAGIC_V1:                                     # 3
        _fail(where, "header magic: expected 0x325653 (format version 2), "
              "found 0x315653: a version 1 stream, which this accelerator no "
              "longer reads; recompress with `ssvq compress`")
    if magic != HEADER_MAGIC:                                        # 4
        _fail(where, f"header magic: expected 0x325653, found 0x{magic:x}")
    mode_id = header & 0xFF
    if mode_id > 2:                                                  # 5
        _fail(where, f"header mode: expected 0..2, found {mode_id}")
    if (header >> 104) or bits[HEADER_BITS:hb * bus].any():          # 6
        _fail(where, "header reserved bits: expected zero, found non-zero bits")
    rows = (header >> 8) & 0xFFFF
    cols = (header >> 24) & 0xFFFF
    hbits = (header >> 64) & 0xFF
    code_bits = (header >> 72) & 0xFF
    log2_d = (header >> 80) & 0xFF
    m = (header >> 88) & 0xFF
    coef_bits = (header >> 96) & 0xFF
    mode = MODE_OF_ID[mode_id]
    if mode == "int":
        rest = [code_bits, log2_d, m, coef_bits]
        if any(rest):                                                # 7
            _fail(where, "header code_bits/log2_d/m/coef_bits: expected 0 for "
                  f"an int layer, found {rest}")
        lc = layer_config("int", bits=hbits)                         # 11
    else:
        if hbits != 0:                                               # 8
            _fail(where, f"header bits: expected 0 for a vq/ssvq layer, "
                  f"found {hbits}")
        if not 1 <= code_bits <= 12:                                 # 9
            _fail(where, f"header code_bits: expected 1..12, found {code_bits}")
        if log2_d > 6:                                               # 10
            _fail(where, f"header log2_d: expected 0..6, found {log2_d}")
        lc = layer_config(mode, k=1 << code_bits, d=1 << log2_d, m=m,  # 11
                          coef_bits=coef_bits)
    check_layer(build, lc, rows, cols, f"{where}: header")           # 12
    g = geometry(build, lc, rows, cols)
    if n != g["total"]:                                              # 13
        _fail(where, f"beat count: expected {g['total']} for {lc_name(lc)} "
              f"{rows}x{cols}, found {n}")
    secs = g["sections"]

    def sec(name):
        return section_bits(bits, build, secs, name)

    def tail_nonzero(name):
        nrec, w = g["records"][name]
        return sec(name)[nrec * w:].any()

    out = {"config": lc_to_dict(lc), "name_of_config": lc_name(lc),
           "rows": rows, "cols": cols, "sections": dict(secs),
           "header": header, "geometry": g}

    # 14 codebook
    if mode != "int":
        if tail_nonzero("codebook"):
            _fail(where, "codebook padding: expected zero, found non-zero bits")
        d, k = lc["d"], lc["k"]
        w = np.arange(m * k)[:, None]
        e = np.arange(d)[None, :]
        raw = _fields(sec("codebook"), (w * d + e) * 8, 8)
        if mode == "vq":
            out["codebook"] = signed(raw, 8).astype(np.int8)
        else:
            out["codebook"] = raw.astype(np.uint8)

    # 15 params
    if tail_nonzero("params"):
        _fail(where, "params padding: expected zero, found non-zero bits")
    pb = sec("params")
    r0 = np.arange(rows) * PARAM_BITS
    if _fields(pb, r0 + 54, 10).any():
        _fail(where, "params reserved bits 54..63: expected zero, found non-zero")
    bias = signed(_fields(pb, r0, 32), 32)
    mult = _fields(pb, r0 + 32, 16)
    shift = _fields(pb, r0 + 48, 6)
    if (shift == 0).any():
        _fail(where, "params shift: expected 1..63, found 0")
    out["bias"] = bias.astype(np.int32)
    out["mult"] = mult.astype(np.uint16)
    out["shift"] = shift.astype(np.uint8)

    # 16 acts
    if tail_nonzero("acts"):
        _fail(where, "acts padding: expected zero, found non-zero bits")
    acts_all = signed(_fields(sec("acts"), np.arange(g["padded_cols"]) * 8, 8), 8)
    if acts_all[cols:].any():
        _fail(where, "acts padding columns: expected zero, found non-zero")
    out["act"] = acts_all[:cols].astype(np.int8)

    # 17 weights tail
    if tail_nonzero("weights"):
        _fail(where, "weights padding: expected zero, found non-zero bits")
    wb = sec("weights")
    if mode == "int":                                                # 18
        b = lc["bits"]
        r = np.arange(rows)[:, None]
        c = np.arange(g["padded_cols"])[None, :]
        raw = _fields(wb, (r * g["padded_cols"] + c) * b, b)
        if raw[:, cols:].any():
            _fail(where, "weights padding columns: expected zero, found "
                  "non-zero bits")
        raw = raw[:, :cols]
        ints = (1 - 2 * raw) if b == 1 else signed(raw, b)
        out["int_weights"] = ints.astype(np.int8)
        W = ints.astype(np.int64)
    else:                                                            # 19
        code_at, coef_at = _slot_layout(g, lc)
        codes_all = _fields(wb, code_at, g["code_bits"])
        coefs_all = signed(_fields(wb, coef_at, coef_bits), coef_bits)
        V = g["V"]
        if codes_all[:, V:].any():
            _fail(where, "codes padding vectors: expected zero, found non-zero")
        if coef_bits and coefs_all[:, V:].any():
            _fail(where, "coefs padding vectors: expected zero, found non-zero")
        if mode == "ssvq":
            signs_all = _fields(wb, _sign_layout(build, g), 1)
            if signs_all[:, cols:].any():
                _fail(where, "signs padding columns: expected zero, found "
                      "non-zero")
            out["signs"] = signs_all[:, :cols].astype(np.uint8)
        out["codes"] = codes_all[:, :V].astype(np.int32)
        if coef_bits:
            out["coefs"] = coefs_all[:, :V].astype(np.int8)
        W = weight_matrix(lc, cols, out["codebook"], out["codes"],
                          out.get("coefs"), out.get("signs"))
    out["weights"] = W
    res = compute(W, out["act"], out["bias"], out["mult"], out["shift"])
    out.update(res)
    out["out_beats"] = output_beats(out["outputs"], bus)
    assert len(out["out_beats"]) == g["out_beats"]
    return out


# ---------------------------------------------------------------------------
# 7. compute rule

def weight_matrix(lc, cols, codebook, codes, coefs=None, signs=None,
                  int_weights=None):
    """7.1: the integer weight matrix W (rows, cols) as int64."""
    if lc["mode"] == "int":
        return np.asarray(int_weights, dtype=np.int64)
    k, d, m = lc["k"], lc["d"], lc["m"]
    cb = np.asarray(codebook).astype(np.int64)    # vq signed, ssvq 0..255
    codes = np.asarray(codes, dtype=np.int64)
    rows, V, _ = codes.shape
    a = (np.asarray(coefs, dtype=np.int64) if lc["coef_bits"] > 0
         else np.ones(codes.shape, np.int64))
    u = np.zeros((rows, V, d), np.int64)
    for i in range(m):
        u += a[:, :, i, None] * cb[i * k + codes[:, :, i]]
    u = u.reshape(rows, V * d)[:, :cols]
    if lc["mode"] == "ssvq":
        u = np.where(np.asarray(signs) == 1, -u, u)
    return u


def compute(W, act, bias, mult, shift):
    """7.2, 7.3 with exact (Python) integers for the requantization."""
    W = np.asarray(W, dtype=np.int64)
    act = np.asarray(act, dtype=np.int64)
    acc = W @ act                          # |acc| < 2^35: exact in int64
    y = []
    for r in range(W.shape[0]):
        s = int(shift[r])
        x = ((int(acc[r]) + int(bias[r])) * int(mult[r]) + (1 << (s - 1))) >> s
        y.append(min(127, max(-128, x)))
    return {"acc": acc, "outputs": np.array(y, dtype=np.int8)}


def output_beats(y, bus):
    """7.4: output stream beats as non-negative integers."""
    bw = bus // 8
    n = ceil_div(len(y) * 8, bus)
    raw = np.zeros(n * bw, np.uint8)
    raw[:len(y)] = np.asarray(y, dtype=np.int8).view(np.uint8)
    return [int.from_bytes(raw[i * bw:(i + 1) * bw].tobytes(), "little")
            for i in range(n)]


# ---------------------------------------------------------------------------
# 5. encoder (used to check the worked examples in both directions)

def encode_stream(build_config, config, rows, cols, arrays):
    """Pack logical arrays into stream bytes following section 5.

    ``config``: a layer-config dict, name or a ``layer_config`` result.
    ``arrays``: bias, mult, shift, act, and weights (int) or codebook, codes
    (+coefs, +signs).  Only minimal checks: this is a test helper.
    """
    build = as_build(build_config)
    if isinstance(config, str):
        lc = lc_parse(config)
    elif "bits" in config and "k" in config and "coef_bits" in config:
        lc = config
    else:
        lc = lc_from_dict(config)
    check_layer(build, lc, rows, cols)
    g = geometry(build, lc, rows, cols)
    bus = build["bus"]
    bits = np.zeros(g["total"] * bus, np.uint8)

    def off(name):
        return g["sections"][name][0] * bus

    hdr = header_record(lc, rows, cols)
    bits[:HEADER_BITS] = [(hdr >> i) & 1 for i in range(HEADER_BITS)]
    r0 = off("params") + np.arange(rows) * PARAM_BITS
    _put(bits, r0, 32, arrays["bias"])
    _put(bits, r0 + 32, 16, arrays["mult"])
    _put(bits, r0 + 48, 6, arrays["shift"])
    _put(bits, off("acts") + np.arange(cols) * 8, 8, arrays["act"])
    wo = off("weights")
    if lc["mode"] == "int":
        b = lc["bits"]
        w = np.asarray(arrays["weights"], dtype=np.int64)
        f = (1 - w) // 2 if b == 1 else w
        r = np.arange(rows)[:, None]
        c = np.arange(cols)[None, :]
        _put(bits, wo + (r * g["padded_cols"] + c) * b, b, f)
    else:
        d, k, m = lc["d"], lc["k"], lc["m"]
        w = np.arange(m * k)[:, None]
        e = np.arange(d)[None, :]
        _put(bits, off("codebook") + (w * d + e) * 8, 8, arrays["codebook"])
        code_at, coef_at = _slot_layout(g, lc)
        V = g["V"]
        _put(bits, wo + code_at[:, :V], g["code_bits"], arrays["codes"])
        if lc["coef_bits"]:
            _put(bits, wo + coef_at[:, :V], lc["coef_bits"], arrays["coefs"])
        if lc["mode"] == "ssvq":
            _put(bits, wo + _sign_layout(build, g)[:, :cols], 1, arrays["signs"])
    return np.packbits(bits, bitorder="little").tobytes()


# ---------------------------------------------------------------------------
# 9. file forms

def beats_to_hex(data, bus):
    bw = bus // 8
    return "".join(data[i:i + bw][::-1].hex() + "\n"
                   for i in range(0, len(data), bw)).encode("ascii")


def hex_to_beats(raw, bus, where):
    """9: parse ``stream.hex`` bytes into stream bytes."""
    for i, byte in enumerate(raw):
        if byte >= 0x80:
            _fail(where, f"byte {i}: expected ASCII hex digits, found byte "
                  f"0x{byte:02x}")
    lines = raw.decode("ascii").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out = bytearray()
    for n, line in enumerate(lines, 1):
        if len(line) != bus // 4:
            _fail(where, f"line {n} length: expected {bus // 4} hex digits, "
                  f"found {len(line)}")
        try:
            b = bytes.fromhex(line)
        except ValueError:
            b = b""
        if len(b) != bus // 8:
            _fail(where, f"line {n}: expected hex digits, found '{line[:20]}'")
        out += b[::-1]
    return bytes(out)


def manifest_digest(obj):
    """8.3."""
    body = {k: v for k, v in obj.items() if k != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------
# 8. image folder

LOGICAL_ORDER = ("bias", "mult", "shift", "act", "codebook", "codes", "coefs",
                 "signs", "weights")


def logical_arrays(layer):
    """The logical arrays of a decoded layer (section 10's table)."""
    lc = layer["config"]
    names = ["bias", "mult", "shift", "act"]
    if lc["mode"] == "int":
        names.append("weights")
    else:
        names += ["codebook", "codes"]
        if lc["coef_bits"] > 0:
            names.append("coefs")
        if lc["mode"] == "ssvq":
            names.append("signs")
    src = {n: layer[n] for n in names if n != "weights"}
    if "weights" in names:
        src["weights"] = layer["int_weights"]
    return {n: src[n] for n in LOGICAL_ORDER if n in src}


TOO_DEEP = object()


def _json_depth(v):
    """How deep arrays and objects nest (0 for a scalar), without recursion."""
    deepest, todo = 0, [(v, 1)]
    while todo:
        x, d = todo.pop()
        if isinstance(x, (dict, list)):
            deepest = max(deepest, d)
            todo += [(y, d + 1) for y in (x.values() if isinstance(x, dict) else x)]
    return deepest


def read_manifest(root):
    """8.4 checks; returns (manifest object, build)."""
    m = os.path.join(root, "manifest.json")
    if not os.path.isfile(m):                                        # 1
        raise DocFormatError(f"{m}: expected a manifest, found no such file")
    with open(m, "rb") as f:
        raw = f.read()
    try:                                                             # 2
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DocFormatError(f"{m}: expected UTF-8 JSON, found undecodable "
                             f"byte at {e.start}") from None
    try:                                                             # 3
        man = json.loads(text)
    except RecursionError:
        man = TOO_DEEP
    except ValueError as e:
        raise DocFormatError(f"{m}: expected JSON, found a parse error ({e})") \
            from None
    if man is TOO_DEEP or _json_depth(man) > 100:
        raise DocFormatError(f"{m}: expected JSON of ordinary depth, found "
                             f"nesting too deep to parse")
    if not isinstance(man, dict):                                    # 4
        raise DocFormatError(f"{m}: format: expected ssvq-image, found "
                             f"{type(man).__name__}")
    if man.get("format") != "ssvq-image":
        raise DocFormatError(f"{m}: format: expected ssvq-image, found "
                             f"{man.get('format')!r}")
    version = man.get("version")
    if version == 1:                                                 # 5
        raise DocFormatError(
            f"{m}: version: expected 2, found 1 (a version 1 image set, which "
            f"this accelerator no longer reads; recompress it with "
            f"`ssvq compress`)")
    if not (is_int(version) and version == 2):                       # 6
        raise DocFormatError(f"{m}: version: expected 2, found {version!r}")
    build = build_from_dict(man.get("config"), f"{m}: config")       # 7
    layers = man.get("layers")                                       # 8
    if not isinstance(layers, list):
        raise DocFormatError(f"{m}: layers: expected a non-empty list, found "
                             f"{type(layers).__name__}")
    if not layers:
        raise DocFormatError(f"{m}: layers: expected a non-empty list, found "
                             f"an empty list")
    types = (("name", str), ("config", dict), ("rows", int), ("cols", int),
             ("dir", str), ("beats", int), ("sections", dict), ("files", dict))
    for i, ent in enumerate(layers):                                 # 9
        for key, t in types:                                         # 9.1
            v = ent.get(key) if isinstance(ent, dict) else ent
            if type(v) is not t:
                raise DocFormatError(f"{m}: layers[{i}].{key}: expected "
                                     f"{t.__name__}, found {repr(v)[:80]}")
        lc = lc_from_dict(ent["config"], f"{m}: layers[{i}].config")  # 9.2
        check_layer(build, lc, ent["rows"], ent["cols"],             # 9.3
                    f"{m}: layers[{i}] ({ent['name']})")
        parts = ent["dir"].replace("\\", "/").split("/")             # 9.4
        if ".." in parts or os.path.isabs(ent["dir"]) or ent["dir"].startswith("/"):
            raise DocFormatError(f"{m}: layers[{i}].dir: expected a relative "
                                 f"path inside the image, found {ent['dir']}")
        for fn in STREAM_FILES:                                      # 9.5
            fe = ent["files"].get(fn)
            if not (isinstance(fe, dict) and isinstance(fe.get("sha256"), str)
                    and is_int(fe.get("bytes"))):
                raise DocFormatError(f"{m}: layers[{i}].files.{fn}: expected "
                                     f"{{sha256: str, bytes: int}}, found {fe}")
        if set(ent["sections"]) != set(SECTIONS):                    # 9.6
            raise DocFormatError(f"{m}: layers[{i}].sections: expected exactly "
                                 f"{list(SECTIONS)}, found "
                                 f"{sorted(ent['sections'])}")
        for s in SECTIONS:                                           # 9.7
            v = ent["sections"][s]
            if not (isinstance(v, list) and len(v) == 2
                    and all(is_int(x) for x in v)):
                raise DocFormatError(f"{m}: layers[{i}].sections.{s}: expected "
                                     f"[first_beat, count], found {v}")
        src = ent.get("input_from")                                  # 9.8
        if src is not None:
            earlier = {e["name"]: e for e in layers[:i]}
            if not (isinstance(src, str) and src in earlier):
                raise DocFormatError(f"{m}: layers[{i}].input_from: expected the name of "
                                     f"an earlier layer, found {repr(src)[:80]}")
            if earlier[src]["rows"] != ent["cols"]:
                raise DocFormatError(f"{m}: layers[{i}].input_from: expected a layer with "
                                     f"{ent['cols']} rows (this layer's cols), found {src} "
                                     f"with {earlier[src]['rows']} rows")
    names = [e["name"] for e in layers]                              # 10
    dups = sorted({x for x in names if names.count(x) > 1})
    if dups:
        raise DocFormatError(f"{m}: layers[].name: expected unique names, "
                             f"found duplicates {dups}")
    return man, build


def decode_layer(root, man, build, ent):
    """8.5 checks 1-10 for one manifest entry, then decode and compute."""
    m = os.path.join(root, "manifest.json")
    name = ent["name"]
    d = os.path.join(root, ent["dir"])
    contents = {}
    for fn in STREAM_FILES:                                          # 1
        p = os.path.join(d, fn)
        if not os.path.isfile(p):
            _fail(p, "expected file listed in manifest, found nothing")
        with open(p, "rb") as f:
            data = f.read()
        if len(data) != ent["files"][fn]["bytes"]:
            _fail(p, f"size in bytes: expected {ent['files'][fn]['bytes']}, "
                  f"found {len(data)}")
        digest = hashlib.sha256(data).hexdigest()
        if digest != ent["files"][fn]["sha256"]:
            _fail(p, f"sha256: expected {ent['files'][fn]['sha256']}, "
                  f"found {digest}")
        contents[fn] = data
    bus = build["bus"]
    binp = os.path.join(d, "stream.bin")
    data = contents["stream.bin"]
    if len(data) % (bus // 8):                                       # 2
        _fail(binp, f"size: expected a multiple of {bus // 8}, found {len(data)}")
    hexp = os.path.join(d, "stream.hex")
    if hex_to_beats(contents["stream.hex"], bus, hexp) != data:      # 3
        _fail(hexp, "contents: expected the same beats as stream.bin, found "
              "different beats")
    n = len(data) // (bus // 8)
    if n != ent["beats"]:                                            # 4
        _fail(d, f"beats: expected {ent['beats']}, found {n}")
    lc_entry = lc_from_dict(ent["config"])
    computed = geometry(build, lc_entry, ent["rows"], ent["cols"])["sections"]
    given = {s: tuple(ent["sections"][s]) for s in SECTIONS}
    if computed != given:                                            # 5
        raise DocFormatError(f"{m} layer {name}: sections: expected "
                             f"{computed}, found {given}")
    layer = decode_stream(data, build, binp)                         # 6
    if layer["config"] != lc_to_dict(lc_entry):                      # 7
        raise DocFormatError(f"{m} layer {name}: config: expected "
                             f"{layer['config']} (from the stream header), "
                             f"found {ent['config']}")
    for key in ("rows", "cols"):                                     # 8
        if layer[key] != ent[key]:
            raise DocFormatError(f"{m} layer {name}: {key}: expected "
                                 f"{layer[key]} (from the stream header), "
                                 f"found {ent[key]}")
    digest = manifest_digest(man)                                    # 9
    if man.get("manifest_sha256") != digest:
        raise DocFormatError(
            f"{m}: manifest_sha256 (the manifest was edited after writing): "
            f"expected {man.get('manifest_sha256')}, found {digest}")
    npz = os.path.join(d, "arrays.npz")                              # 10
    try:
        with np.load(npz, allow_pickle=False) as z:
            stored = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - any failure to read is refused
        _fail(npz, f"expected a NumPy .npz of plain arrays, found "
              f"{type(e).__name__}: {str(e)[:120]}")
    for key, s in stored.items():
        if not isinstance(s, np.ndarray):       # a member that is not a .npy file
            _fail(npz, f"{key}: expected a .npy array, found a member of {len(s)} "
                  f"bytes that is not one")
    logical = logical_arrays(layer)
    if not set(logical) <= set(stored):
        _fail(npz, f"arrays: expected {sorted(logical)}, found {sorted(stored)}")
    for key, val in logical.items():
        s = stored[key]
        if not (np.issubdtype(s.dtype, np.integer) and s.shape == val.shape
                and [int(x) for x in s.reshape(-1)] == [int(x) for x in val.reshape(-1)]):
            _fail(npz, f"{key}: expected the stream's values ({val.shape}), "
                  f"found {s.dtype} {s.shape}, different values")
    scales = {}
    for key, s in stored.items():
        if key in logical:
            continue
        if not (key.startswith("scale_") and np.issubdtype(s.dtype, np.floating)):
            _fail(npz, f"{key}: expected a scale_* float array, found {s.dtype} "
                  f"array '{key}'")
        scales[key[len("scale_"):]] = s
    layer["scales"] = scales
    layer["name"] = name
    layer["dir"] = ent["dir"]
    layer["stream"] = data
    return layer


def decode_image_set(path):
    """Read an image folder with every check of 8.4 and 8.5; decode every
    layer and compute its outputs.  Returns a list of dicts in manifest
    order."""
    root = os.fspath(path)
    man, build = read_manifest(root)
    out, by_name = [], {}
    for ent in man["layers"]:
        layer = decode_layer(root, man, build, ent)
        layer["build"] = build_to_dict(build)
        src = ent.get("input_from")                                  # 8.5 check 11
        if src is not None:
            y = by_name[src]["outputs"].astype(np.int64)
            n = int((np.asarray(layer["act"], np.int64) != y).sum())
            if n:
                name = ent["name"]
                raise DocFormatError(f"{os.path.join(root, 'manifest.json')} layer {name}: "
                                     f"{name}.act: expected the int8 outputs of {src} "
                                     f"(input_from), found {n} of {len(y)} differ")
        layer["input_from"] = src
        by_name[ent["name"]] = layer
        out.append(layer)
    return out
