"""Accelerator configuration and the stream geometry derived from it.

Pure Python (no Amaranth import) because the compressor, the image format, the
golden model and the cost model all need the same numbers as the RTL.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

MODES = ("int8", "vq", "ssvq")
# Performance counters, as the RTL names them (cnt_<name>) and the timing model predicts them.
COUNTERS = ("cycles", "stall", "header", "codebook", "params", "acts", "codes", "signs",
            "weights", "out")
MODE_ID = {name: i for i, name in enumerate(MODES)}

RECORD_BITS = 64      # header and per-row requantization records
OUT_BITS = 8          # one int8 output per row
ACC_BITS = 32         # accumulator; checked against max_cols in validate()
MULT_BITS = 16        # requantization multiplier (unsigned)
SHIFT_BITS = 6        # requantization shift
# Bits charged per row for its scale in bits-per-weight accounting: the scale is
# folded into the requantization multiplier, but a float model would store it.
ROW_SCALE_BITS = 16
# Pipeline depth from issuing a group to the output beat holding its row being
# valid: issue -> decode -> products -> adder tree (2 stages) -> accumulate(+bias)
# -> *mult -> round/shift -> saturate/pack -> beat.
ISSUE_TO_BEAT = 9


class ConfigError(ValueError):
    pass


def _pow2(x: int) -> bool:
    return x >= 1 and (x & (x - 1)) == 0


@dataclass(frozen=True)
class ModeGeometry:
    """How one mode's weight stream is cut into blocks.

    A block is `primary_beats` beats (codes, or int8 weights) followed by
    `sign_beats` beats; it carries `groups` groups, each group being one
    L-lane x D-element slice of a row.
    """
    mode: str
    primary_bits_per_group: int
    sign_bits_per_group: int
    groups: int
    primary_beats: int
    sign_beats: int

    @property
    def beats(self) -> int:
        return self.primary_beats + self.sign_beats


@dataclass(frozen=True)
class AccelConfig:
    k: int = 256            # codebook entries
    d: int = 8              # vector length
    cw: int = 8             # codeword element bits
    mults: int = 32         # multipliers = lanes * d
    bus: int = 64           # input/output stream width in bits
    max_rows: int = 4096
    max_cols: int = 4096
    lanes: int = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "lanes", self.mults // self.d if self.d else 0)
        self.validate()

    def validate(self):
        problems = []
        for name in ("k", "d", "mults", "bus"):
            if not _pow2(getattr(self, name)):
                problems.append(f"{name} must be a power of two, found {getattr(self, name)}")
        if self.cw != 8:
            problems.append(f"cw must be 8, found {self.cw}")
        if self.k < 2:
            problems.append(f"k must be at least 2, found {self.k}")
        if self.bus < RECORD_BITS:
            problems.append(f"bus must be at least {RECORD_BITS} bits, found {self.bus}")
        if self.d > self.mults:
            problems.append(f"d ({self.d}) must not exceed mults ({self.mults})")
        if not (1 <= self.max_rows <= 65535 and 1 <= self.max_cols <= 65535):
            problems.append("max_rows and max_cols must be in 1..65535")
        if problems:
            raise ConfigError("accelerator config: " + "; ".join(problems))
        if self.k * self.d * self.cw < self.bus:
            raise ConfigError(f"accelerator config: codebook ({self.k}x{self.d}x{self.cw} bits) "
                              f"is smaller than one {self.bus}-bit beat")
        acc_needed = 17 + math.ceil(math.log2(self.padded_cols(self.max_cols))) + 1
        if acc_needed > ACC_BITS:
            raise ConfigError(f"accelerator config: max_cols={self.max_cols} needs a "
                              f"{acc_needed}-bit accumulator, have {ACC_BITS}")

    # ---- derived geometry -------------------------------------------------
    @property
    def code_bits(self) -> int:
        return self.k.bit_length() - 1

    @property
    def act_word_bits(self) -> int:
        """One activation-buffer word feeds all lanes for one group."""
        return self.mults * 8

    @property
    def codeword_bits(self) -> int:
        return self.d * self.cw

    def groups_per_row(self, cols: int) -> int:
        return -(-cols // self.mults)

    def padded_cols(self, cols: int) -> int:
        return self.groups_per_row(cols) * self.mults

    def vectors_per_row(self, cols: int) -> int:
        """D-vectors per row as the accelerator sees them (padded to whole groups)."""
        return self.groups_per_row(cols) * self.lanes

    def mode(self, mode: str) -> ModeGeometry:
        if mode not in MODE_ID:
            raise ConfigError(f"mode must be one of {MODES}, found {mode!r}")
        if mode == "int8":
            prim, sign = self.mults * 8, 0
        elif mode == "vq":
            prim, sign = self.lanes * self.code_bits, 0
        else:
            prim, sign = self.lanes * self.code_bits, self.mults
        groups = max(self.bus // math.gcd(prim, self.bus),
                     self.bus // math.gcd(sign, self.bus) if sign else 1)
        return ModeGeometry(mode, prim, sign, groups,
                            groups * prim // self.bus, groups * sign // self.bus)

    @property
    def max_block_beats(self) -> int:
        return max(self.mode(m).beats for m in MODES)

    def codebook_beats(self, mode: str) -> int:
        return 0 if mode == "int8" else self.k * self.codeword_bits // self.bus

    def param_beats(self, rows: int) -> int:
        return -(-rows * RECORD_BITS // self.bus)

    def act_beats(self, cols: int) -> int:
        return -(-self.padded_cols(cols) * 8 // self.bus)

    def weight_blocks(self, mode: str, rows: int, cols: int) -> int:
        return -(-rows * self.groups_per_row(cols) // self.mode(mode).groups)

    def out_beats(self, rows: int) -> int:
        return -(-rows * OUT_BITS // self.bus)

    def check_shape(self, rows: int, cols: int, where: str = "layer"):
        if not (1 <= rows <= self.max_rows):
            raise ConfigError(f"{where}: rows={rows} outside 1..{self.max_rows} (max_rows)")
        if not (1 <= cols <= self.max_cols):
            raise ConfigError(f"{where}: cols={cols} outside 1..{self.max_cols} (max_cols)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("lanes")
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "AccelConfig":
        known = {"k", "d", "cw", "mults", "bus", "max_rows", "max_cols"}
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected an object of config fields, found {type(d).__name__}")
        unknown = set(d) - known - {"lanes"}
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; expected {sorted(known)}")
        for k, v in d.items():
            if type(v) is not int:
                raise ConfigError(f"{where}: {k}: expected an integer, found {v!r}")
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
