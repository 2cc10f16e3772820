"""Accelerator build configuration, per-layer configuration, record field tables
and the stream geometry derived from them.

Pure Python (no Amaranth, no other project import): the compressor, the image
format, the golden and cost models and the RTL all take their numbers from here.
docs/FORMAT.md states the same rules in prose.
"""
from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field

from ssvq.errors import ConfigError


class Mode(enum.IntEnum):
    """Decode family of a layer, as the header's `mode` field holds it."""
    INT = 0      # uniform b-bit weights
    VQ = 1       # signed 8-bit codewords (M of them per vector, optional coefficients)
    SSVQ = 2     # non-negative 8-bit magnitudes and one sign bit per weight


MODES = tuple(m.name.lower() for m in Mode)          # ("int", "vq", "ssvq")
INT_BITS = (1, 2, 3, 4, 5, 6, 8)                      # widths the int family can have
COEF_BITS_MAX = 4
M_MAX = 2
# Performance counters, as the RTL names them (cnt_<name>) and the timing model predicts
# them: busy cycles, stall cycles, then the beats accepted in each section, output beats.
COUNTERS = ("cycles", "stall", "header", "codebook", "params", "acts", "weights", "out")
SECTIONS = ("header", "codebook", "params", "acts", "weights")

CW_BITS = 8           # codeword element
ACT_BITS = 8          # activation
OUT_BITS = 8          # one int8 output per row
PARAM_BITS = 64       # per-row requantization record
HEADER_BITS = 128     # layer header record
MULT_BITS = 16        # requantization multiplier (unsigned)
SHIFT_BITS = 6        # requantization shift
BIAS_BITS = 32
ACC_BITS = 40         # accumulator; checked against the build in AccelConfig.validate
# Bits charged per row for its scale in bits-per-weight accounting: the scale is folded
# into the requantization multiplier, but a float model would store it.
ROW_SCALE_BITS = 16

HEADER_MAGIC = 0x325653      # "SV2" (bits 63..40 of the header); version 1 had 0x315653
HEADER_MAGIC_V1 = 0x315653


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    width: int
    signed: bool = False


# One field table per record; the packer, the unpacker and the RTL's StructLayouts
# (hw/records.py) are all generated from these. Bits not covered are reserved (zero).
HEADER_FIELDS = (
    Field("mode", 0, 8),
    Field("rows", 8, 16),
    Field("cols", 24, 16),
    Field("magic", 40, 24),
    Field("bits", 64, 8),         # int: weight width b; vq/ssvq: 0
    Field("code_bits", 72, 8),    # vq/ssvq: log2(K); int: 0
    Field("log2_d", 80, 8),       # vq/ssvq: log2(D); int: 0
    Field("m", 88, 8),            # vq/ssvq: codewords per vector, 1..2; int: 0
    Field("coef_bits", 96, 8),    # vq/ssvq: coefficient width, 0 = no coefficients; int: 0
)
PARAM_FIELDS = (
    Field("bias", 0, BIAS_BITS, signed=True),
    Field("mult", 32, MULT_BITS),
    Field("shift", 48, SHIFT_BITS),
)


def _pow2(x) -> bool:
    return type(x) is int and x >= 1 and (x & (x - 1)) == 0


def log2(x: int) -> int:
    return x.bit_length() - 1


# ------------------------------------------------------------------ layer config
_NAME = re.compile(r"^(?:int(?P<bits>\d+)|(?P<mode>vq|ssvq)-k(?P<k>\d+)-d(?P<d>\d+)"
                   r"(?:-m(?P<m>\d+))?(?:-c(?P<c>\d+))?)$")


@dataclass(frozen=True)
class LayerConfig:
    """What one layer is, chosen per layer at run time (the header says it).

    int:  `bits` in INT_BITS (two's complement; 1 bit means +1/-1).
    vq:   K = `k` codewords per codebook (a power of two), vector length `d`, `m`
          codebooks and codes per vector (the vector is the sum of m codewords), each
          scaled by a signed `coef_bits`-bit coefficient (0: no coefficient, i.e. 1).
    ssvq: as vq with non-negative magnitudes and one sign bit per weight.
    """
    mode: str
    bits: int = 0
    k: int = 0
    d: int = 0
    m: int = 0
    coef_bits: int = 0

    def __post_init__(self):
        problems = []
        if self.mode not in MODES:
            raise ConfigError(f"layer config: mode: expected one of {MODES}, found {self.mode!r}")
        for f in ("bits", "k", "d", "m", "coef_bits"):
            if type(getattr(self, f)) is not int:
                problems.append(f"{f}: expected an integer, found {getattr(self, f)!r}")
        if problems:
            raise ConfigError("layer config: " + "; ".join(problems))
        if self.mode == "int":
            if self.bits not in INT_BITS:
                problems.append(f"bits: expected one of {INT_BITS}, found {self.bits}")
            if self.k or self.d or self.m or self.coef_bits:
                problems.append("k, d, m, coef_bits: expected 0 for an int layer")
        else:
            if self.bits:
                problems.append(f"bits: expected 0 for a {self.mode} layer, found {self.bits}")
            if not (_pow2(self.k) and self.k >= 2):
                problems.append(f"k: expected a power of two >= 2, found {self.k}")
            if not _pow2(self.d):
                problems.append(f"d: expected a power of two, found {self.d}")
            if not 1 <= self.m <= M_MAX:
                problems.append(f"m: expected 1..{M_MAX}, found {self.m}")
            if not 0 <= self.coef_bits <= COEF_BITS_MAX:
                problems.append(f"coef_bits: expected 0..{COEF_BITS_MAX}, found {self.coef_bits}")
        if problems:
            raise ConfigError(f"layer config {self.mode}: " + "; ".join(problems))

    @property
    def mode_id(self) -> Mode:
        return Mode[self.mode.upper()]

    @property
    def code_bits(self) -> int:
        return log2(self.k) if self.mode != "int" else 0

    @property
    def name(self) -> str:
        if self.mode == "int":
            return f"int{self.bits}"
        s = f"{self.mode}-k{self.k}-d{self.d}"
        if self.m != 1:
            s += f"-m{self.m}"
        if self.coef_bits:
            s += f"-c{self.coef_bits}"
        return s

    @classmethod
    def parse(cls, name: str, where: str = "layer config") -> "LayerConfig":
        """`int4`, `vq-k256-d4`, `ssvq-k256-d8`, `vq-k16-d8-m2-c4` (the `name` form)."""
        mt = _NAME.match(name) if isinstance(name, str) else None
        if not mt:
            raise ConfigError(f"{where}: expected a name like int4, vq-k256-d4, ssvq-k256-d8 or "
                              f"vq-k16-d8-m2-c4, found {name!r}")
        if mt["bits"]:
            return cls("int", bits=int(mt["bits"]))
        return cls(mt["mode"], k=int(mt["k"]), d=int(mt["d"]), m=int(mt["m"] or 1),
                   coef_bits=int(mt["c"] or 0))

    def to_dict(self) -> dict:
        if self.mode == "int":
            return {"mode": "int", "bits": self.bits}
        return {"mode": self.mode, "k": self.k, "d": self.d, "m": self.m,
                "coef_bits": self.coef_bits}

    @classmethod
    def from_dict(cls, d: dict, where: str = "layer config") -> "LayerConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected an object, found {type(d).__name__}")
        known = {"mode", "bits", "k", "d", "m", "coef_bits"}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; expected {sorted(known)}")
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"{where}: {e}") from None
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def header_values(lc: LayerConfig, rows: int, cols: int) -> dict:
    """The header record's field values for a layer (HEADER_FIELDS)."""
    v = {"mode": int(lc.mode_id), "rows": rows, "cols": cols, "magic": HEADER_MAGIC,
         "bits": 0, "code_bits": 0, "log2_d": 0, "m": 0, "coef_bits": 0}
    if lc.mode == "int":
        v["bits"] = lc.bits
    else:
        v.update(code_bits=lc.code_bits, log2_d=log2(lc.d), m=lc.m, coef_bits=lc.coef_bits)
    return v


def layer_config_of_header(v: dict) -> LayerConfig:
    """Inverse of header_values (fields already range-checked by the reader)."""
    if v["mode"] == Mode.INT:
        return LayerConfig("int", bits=v["bits"])
    return LayerConfig(MODES[v["mode"]], k=1 << v["code_bits"], d=1 << v["log2_d"], m=v["m"],
                       coef_bits=v["coef_bits"])


# ------------------------------------------------------------------ geometry
@dataclass(frozen=True)
class Geometry:
    """A layer's stream: record widths, record counts and beats per section."""
    lanes: int             # vectors per group (vq/ssvq); 0 for int
    groups_per_row: int    # G
    padded_cols: int       # G * mults
    vectors: int           # V = ceil(cols / d) stored vectors per row (vq/ssvq)
    group_bits: int        # bits of one weight-group record
    # bits per group record of each kind of field (totals, not positions: a vq/ssvq record
    # is the signs, then L*m (code, coefficient) slots); int: code_field_bits = the weights
    code_field_bits: int
    coef_field_bits: int
    sign_field_bits: int
    codewords: int         # m * k
    codeword_bits: int     # d * 8
    records: dict          # section -> records
    record_bits: dict      # section -> bits per record
    beats: dict            # section -> beats

    @property
    def total_beats(self) -> int:
        return sum(self.beats.values())

    def first_beat(self, section: str) -> int:
        return sum(self.beats[s] for s in SECTIONS[:SECTIONS.index(section)])


# ------------------------------------------------------------------ build config
@dataclass(frozen=True)
class AccelConfig:
    """What the accelerator is built to run. Layers choose within these at run time."""
    kmax: int = 256                      # largest K (codewords per codebook)
    d_set: tuple = (4, 8)                # vector lengths the codebook decode supports
    int_bits: tuple = INT_BITS           # weight widths the int decode supports
    modes: tuple = MODES                 # decode families built
    m_max: int = 2                       # codewords per vector (additive decode)
    coef_bits_max: int = 4               # coefficient width (0: no coefficients)
    mults: int = 32                      # multipliers (= elements per group)
    bus: int = 64                        # input/output stream width in bits
    max_rows: int = 4096
    max_cols: int = 4096

    def __post_init__(self):
        for f in ("d_set", "int_bits", "modes"):
            v = getattr(self, f)
            if isinstance(v, list):
                object.__setattr__(self, f, tuple(v))
        self.validate()

    def validate(self):
        p = []
        for name in ("kmax", "mults", "bus"):
            if not _pow2(getattr(self, name)):
                p.append(f"{name}: expected a power of two, found {getattr(self, name)!r}")
        if _pow2(self.kmax) and not 2 <= self.kmax <= 4096:
            p.append(f"kmax: expected 2..4096, found {self.kmax}")
        if _pow2(self.bus) and self.bus < 64:
            p.append(f"bus: expected at least 64 bits, found {self.bus}")
        modes_ok = (isinstance(self.modes, tuple) and self.modes
                    and set(self.modes) <= set(MODES) and len(set(self.modes)) == len(self.modes))
        if not modes_ok:
            p.append(f"modes: expected distinct names from {MODES}, found {self.modes!r}")
        if not (isinstance(self.int_bits, tuple) and set(self.int_bits) <= set(INT_BITS)
                and len(set(self.int_bits)) == len(self.int_bits)):
            p.append(f"int_bits: expected distinct widths from {INT_BITS}, found {self.int_bits!r}")
        elif modes_ok and "int" in self.modes and not self.int_bits:
            p.append("int_bits: expected at least one width when the int mode is built")
        if not (isinstance(self.d_set, tuple) and self.d_set
                and all(_pow2(d) and d <= 64 for d in self.d_set)
                and len(set(self.d_set)) == len(self.d_set)):
            p.append(f"d_set: expected distinct powers of two up to 64, found {self.d_set!r}")
        elif _pow2(self.mults) and max(self.d_set) > self.mults:
            p.append(f"d_set: every d must be at most mults ({self.mults}), found {self.d_set}")
        if type(self.m_max) is not int or not 1 <= self.m_max <= M_MAX:
            p.append(f"m_max: expected 1..{M_MAX}, found {self.m_max!r}")
        if type(self.coef_bits_max) is not int or not 0 <= self.coef_bits_max <= COEF_BITS_MAX:
            p.append(f"coef_bits_max: expected 0..{COEF_BITS_MAX}, found {self.coef_bits_max!r}")
        for name in ("max_rows", "max_cols"):
            v = getattr(self, name)
            if type(v) is not int or not 1 <= v <= 65535:
                p.append(f"{name}: expected 1..65535, found {v!r}")
        if p:
            raise ConfigError("accelerator config: " + "; ".join(p))
        if self.acc_needed > ACC_BITS:
            raise ConfigError(f"accelerator config: max_cols={self.max_cols} with "
                              f"{self.weight_bits}-bit weights needs a {self.acc_needed}-bit "
                              f"accumulator, have {ACC_BITS}")
        if self.max_record_bits > 1024:
            raise ConfigError(f"accelerator config: the widest record (header, codeword, "
                              f"activation word or weight group) is {self.max_record_bits} "
                              f"bits, more than 1024 (lower mults, m_max or kmax, or raise "
                              f"the smallest d)")

    # ---- derived, build-wide ---------------------------------------------
    @property
    def codebook_modes(self) -> tuple:
        return tuple(m for m in self.modes if m != "int")

    @property
    def code_bits_max(self) -> int:
        return log2(self.kmax)

    @property
    def lanes_max(self) -> int:
        return self.mults // min(self.d_set)

    @property
    def d_max(self) -> int:
        return max(self.d_set)

    @property
    def weight_bits(self) -> int:
        """Width of a decoded weight (signed): int-b fits 8 bits; a codeword sum
        sum_m coef_m * cw_m with 9-bit signed terms (an ssvq magnitude with its sign)
        needs 8 + 1 + coef_bits + ceil(log2(m)) bits."""
        w = 8 if "int" in self.modes else 0
        if self.codebook_modes:
            w = max(w, 9 + self.coef_bits_max + (self.m_max - 1).bit_length())
        return w

    @property
    def acc_needed(self) -> int:
        cols = -(-self.max_cols // self.mults) * self.mults
        return self.weight_bits + ACT_BITS + (cols - 1).bit_length() + 1

    def group_bits_of(self, lc: LayerConfig) -> int:
        if lc.mode == "int":
            return self.mults * lc.bits
        lanes = self.mults // lc.d
        return (lanes * lc.m * (lc.code_bits + lc.coef_bits)
                + (self.mults if lc.mode == "ssvq" else 0))

    @property
    def max_group_bits(self) -> int:
        w = max([self.mults * b for b in self.int_bits] if "int" in self.modes else [0])
        for mode in self.codebook_modes:
            w = max(w, self.group_bits_of(LayerConfig(
                mode, k=self.kmax, d=min(self.d_set), m=self.m_max, coef_bits=self.coef_bits_max)))
        return w

    @property
    def max_record_bits(self) -> int:
        """Widest record the input gearbox must hand out in one piece."""
        return max(HEADER_BITS, PARAM_BITS, self.mults * ACT_BITS, self.d_max * CW_BITS,
                   self.max_group_bits)

    # ---- per layer -------------------------------------------------------
    def check_layer(self, lc: LayerConfig, rows: int, cols: int, where: str = "layer"):
        """Raises ConfigError if this build cannot run the layer."""
        if lc.mode not in self.modes:
            raise ConfigError(f"{where}: mode {lc.mode!r} is not built into this accelerator "
                              f"(built: {list(self.modes)})")
        if lc.mode == "int":
            if lc.bits not in self.int_bits:
                raise ConfigError(f"{where}: int{lc.bits}: bits {lc.bits} not built "
                                  f"(int_bits {list(self.int_bits)})")
        else:
            if lc.k > self.kmax:
                raise ConfigError(f"{where}: k={lc.k} is above kmax={self.kmax} of this build")
            if lc.d not in self.d_set:
                raise ConfigError(f"{where}: d={lc.d} is not in this build's d_set "
                                  f"{list(self.d_set)}")
            if lc.m > self.m_max:
                raise ConfigError(f"{where}: m={lc.m} is above m_max={self.m_max} of this build")
            if lc.coef_bits > self.coef_bits_max:
                raise ConfigError(f"{where}: coef_bits={lc.coef_bits} is above "
                                  f"coef_bits_max={self.coef_bits_max} of this build")
        if type(rows) is not int or not 1 <= rows <= self.max_rows:
            raise ConfigError(f"{where}: rows={rows} outside 1..{self.max_rows} (max_rows)")
        if type(cols) is not int or not 1 <= cols <= self.max_cols:
            raise ConfigError(f"{where}: cols={cols} outside 1..{self.max_cols} (max_cols)")

    def geometry(self, lc: LayerConfig, rows: int, cols: int) -> Geometry:
        g = -(-cols // self.mults)
        group_bits = self.group_bits_of(lc)
        if lc.mode == "int":
            lanes, vectors, codewords, cwb = 0, 0, 0, 0
            fields = (group_bits, 0, 0)
        else:
            lanes = self.mults // lc.d
            vectors = -(-cols // lc.d)
            codewords, cwb = lc.m * lc.k, lc.d * CW_BITS
            fields = (lanes * lc.m * lc.code_bits, lanes * lc.m * lc.coef_bits,
                      self.mults if lc.mode == "ssvq" else 0)
        records = {"header": 1, "codebook": codewords, "params": rows, "acts": g,
                   "weights": rows * g}
        record_bits = {"header": HEADER_BITS, "codebook": cwb, "params": PARAM_BITS,
                       "acts": self.mults * ACT_BITS, "weights": group_bits}
        beats = {s: -(-records[s] * record_bits[s] // self.bus) for s in SECTIONS}
        return Geometry(lanes, g, g * self.mults, vectors, group_bits, *fields, codewords, cwb,
                        records, record_bits, beats)

    def out_beats(self, rows: int) -> int:
        return -(-rows * OUT_BITS // self.bus)

    # ---- (de)serialisation -----------------------------------------------
    def to_dict(self) -> dict:
        return {"kmax": self.kmax, "d_set": list(self.d_set), "int_bits": list(self.int_bits),
                "modes": list(self.modes), "m_max": self.m_max,
                "coef_bits_max": self.coef_bits_max, "mults": self.mults, "bus": self.bus,
                "max_rows": self.max_rows, "max_cols": self.max_cols}

    @classmethod
    def from_dict(cls, d: dict, where: str = "config", partial: bool = False) -> "AccelConfig":
        """All fields required unless `partial` (then missing ones take the defaults)."""
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected an object of config fields, found "
                              f"{type(d).__name__}")
        known = list(cls().to_dict())
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {unknown}; expected {known}")
        missing = [k for k in known if k not in d]
        if missing and not partial:
            raise ConfigError(f"{where}: missing field(s) {missing}")
        kw = {}
        for k, v in d.items():
            if k in ("d_set", "int_bits"):
                if not (isinstance(v, list) and all(type(x) is int for x in v)):
                    raise ConfigError(f"{where}: {k}: expected a list of integers, found {v!r}")
                v = tuple(v)
            elif k == "modes":
                if not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
                    raise ConfigError(f"{where}: modes: expected a list of names, found {v!r}")
                v = tuple(v)
            elif type(v) is not int:
                raise ConfigError(f"{where}: {k}: expected an integer, found {v!r}")
            kw[k] = v
        try:
            return cls(**kw)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    @classmethod
    def covering(cls, layers, base: "AccelConfig | None" = None) -> "AccelConfig":
        """The smallest build (within `base`'s mults and bus) that runs every
        (LayerConfig, rows, cols) in `layers`."""
        base = base or cls()
        layers = list(layers)
        lcs = [lc for lc, _, _ in layers]
        cb = [lc for lc in lcs if lc.mode != "int"]
        rows = max(r for _, r, _ in layers)
        cols = max(c for _, _, c in layers)

        def up(n):
            return min(65535, max(4096, 1 << max(0, n - 1).bit_length()))
        return cls(kmax=max([lc.k for lc in cb], default=base.kmax),
                   d_set=tuple(sorted({lc.d for lc in cb})) or base.d_set,
                   int_bits=tuple(sorted({lc.bits for lc in lcs if lc.mode == "int"})),
                   modes=tuple(m for m in MODES if any(lc.mode == m for lc in lcs)),
                   m_max=max([lc.m for lc in cb], default=1),
                   coef_bits_max=max([lc.coef_bits for lc in cb], default=0),
                   mults=base.mults, bus=base.bus, max_rows=up(rows), max_cols=up(cols))
