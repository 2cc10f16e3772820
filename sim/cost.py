"""Memory-access cost model: bits moved per stream, cycles and speedup.

In the spirit of SCALE-Sim's per-operand access reports, every layer is charged
the bits each stream of its memory image moves over the accelerator's input and
output buses. Beat counts and cycles are not re-derived here: they come from
`sim.golden.timing(...).counters`, the same numbers the RTL's performance
counters are held to, and a stream's bits are its beats x `cfg.bus` (so the
zero padding the format streams is charged too).

Streams (and the golden/RTL counter each comes from):

    header    header      one 64-bit record, padded to a beat
    codebook  codebook    K x D x 8-bit codewords (vq, ssvq)
    params    params      per-row 64-bit requantization records (bias, mult, shift)
    acts      acts        int8 activations, padded to whole MAC groups
    codes     codes       code beats of vq/ssvq weight blocks
    signs     signs       sign beats of ssvq weight blocks
    weights   weights     int8 weight beats of int8 weight blocks
    outputs   out         int8 outputs, BUS/8 per beat

Bits per weight (`bits_per_weight`) charges the weight storage only: codebook,
codes, signs and int8 weights as streamed (padding included), plus 16 bits per
row for the per-row scale, over rows x cols. The bandwidth-bound speedup limit
of a format is 8 / bits_per_weight: how much faster than 8-bit weights a layer
could be if weight traffic were the only cost.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from hw.config import ROW_SCALE_BITS, AccelConfig

from sim import golden

# stream name -> golden / RTL counter name
STREAMS = ("header", "codebook", "params", "acts", "codes", "signs", "weights", "outputs")
COUNTER_OF = {s: ("out" if s == "outputs" else s) for s in STREAMS}
WEIGHT_STREAMS = ("codebook", "codes", "signs", "weights")


def bits_per_weight(cfg: AccelConfig, mode: str, rows: int, cols: int) -> float:
    """Weight-storage bits per weight of one layer: (codebook + code + sign +
    int8-weight bits as streamed, i.e. beats x bus with padding, + ROW_SCALE_BITS
    per row) / (rows x cols)."""
    return layer_cost(cfg, mode, rows, cols).bits_per_weight


@lru_cache(maxsize=4096)
def _timing(cfg: AccelConfig, mode: str, rows: int, cols: int) -> tuple[tuple[str, int], ...]:
    return tuple(golden.timing(cfg, mode, rows, cols).counters.items())


def counters(cfg: AccelConfig, mode: str, rows: int, cols: int) -> dict[str, int]:
    """golden.timing(...).counters (cached): the single source of beats and cycles."""
    cfg.check_shape(rows, cols)
    return dict(_timing(cfg, mode, rows, cols))


@dataclass
class LayerCost:
    name: str
    mode: str
    rows: int
    cols: int
    header: int          # bits moved per stream (beats x bus)
    codebook: int
    params: int
    acts: int
    codes: int
    signs: int
    weights: int
    outputs: int
    total: int           # all streams
    cycles: int          # golden.timing counters["cycles"] (no stalls)
    beats: dict[str, int]         # golden.timing counters (counter names)
    weight_side_bits: int         # codebook + codes + signs + weights + 16 bits/row
    bits_per_weight: float
    speedup_bound: float          # 8 / bits_per_weight

    @property
    def bits(self) -> dict[str, int]:
        return {s: getattr(self, s) for s in STREAMS}

    def to_dict(self) -> dict:
        return {"name": self.name, "mode": self.mode, "rows": self.rows, "cols": self.cols,
                "bits": self.bits, "total_bits": self.total, "cycles": self.cycles,
                "beats": dict(self.beats), "weight_side_bits": self.weight_side_bits,
                "bits_per_weight": self.bits_per_weight, "speedup_bound": self.speedup_bound}


def layer_cost(cfg: AccelConfig, mode: str, rows: int, cols: int, name: str = "") -> LayerCost:
    c = counters(cfg, mode, rows, cols)
    bits = {s: c[COUNTER_OF[s]] * cfg.bus for s in STREAMS}
    ws = sum(bits[s] for s in WEIGHT_STREAMS) + ROW_SCALE_BITS * rows
    bpw = ws / (rows * cols)
    return LayerCost(name=name, mode=mode, rows=rows, cols=cols, **bits,
                     total=sum(bits.values()), cycles=c["cycles"], beats=c,
                     weight_side_bits=ws, bits_per_weight=bpw, speedup_bound=8.0 / bpw)


def _layer_args(entry, mode: str) -> tuple[str, int, int, str]:
    """(name, rows, cols) or (name, rows, cols, mode)."""
    if len(entry) == 4:
        name, rows, cols, m = entry
    else:
        name, rows, cols = entry
        m = mode
    return str(name), int(rows), int(cols), m


@dataclass
class ModelCost:
    mode: str
    layers: list[LayerCost]
    bits: dict[str, int]          # per stream, summed over layers
    total: int
    cycles: int
    n_weights: int
    weight_side_bits: int
    bits_per_weight: float        # weight_side_bits / n_weights
    speedup_bound: float          # 8 / bits_per_weight

    def to_dict(self) -> dict:
        return {"mode": self.mode, "bits": dict(self.bits), "total_bits": self.total,
                "cycles": self.cycles, "weights": self.n_weights,
                "weight_side_bits": self.weight_side_bits,
                "bits_per_weight": self.bits_per_weight, "speedup_bound": self.speedup_bound,
                "layers": [lc.to_dict() for lc in self.layers]}


def model_cost(cfg: AccelConfig, layers, mode: str) -> ModelCost:
    """layers: [(name, rows, cols)] (a 4th element, when present, overrides `mode`
    for that layer)."""
    lcs = [layer_cost(cfg, m, r, c, n) for n, r, c, m in (_layer_args(e, mode) for e in layers)]
    if not lcs:
        raise ValueError("model_cost: expected at least one layer, found none")
    bits = {s: sum(getattr(lc, s) for lc in lcs) for s in STREAMS}
    nw = sum(lc.rows * lc.cols for lc in lcs)
    ws = sum(lc.weight_side_bits for lc in lcs)
    modes = {lc.mode for lc in lcs}
    return ModelCost(mode=modes.pop() if len(modes) == 1 else "mixed", layers=lcs, bits=bits,
                     total=sum(bits.values()), cycles=sum(lc.cycles for lc in lcs),
                     n_weights=nw, weight_side_bits=ws, bits_per_weight=ws / nw,
                     speedup_bound=8.0 * nw / ws)


@dataclass
class LayerComparison:
    name: str
    rows: int
    cols: int
    cost: LayerCost
    base: LayerCost
    speedup: float                # base.cycles / cost.cycles
    speedup_bound: float          # 8 / cost.bits_per_weight

    def to_dict(self) -> dict:
        return {"name": self.name, "rows": self.rows, "cols": self.cols,
                "mode": self.cost.mode, "baseline": self.base.mode,
                "cycles": self.cost.cycles, "baseline_cycles": self.base.cycles,
                "speedup": self.speedup, "speedup_bound": self.speedup_bound,
                "bits_per_weight": self.cost.bits_per_weight,
                "bits": self.cost.bits, "baseline_bits": self.base.bits}


@dataclass
class Comparison:
    mode: str
    baseline: str
    layers: list[LayerComparison]
    cost: ModelCost
    base: ModelCost
    speedup: float                # sum baseline cycles / sum mode cycles
    speedup_bound: float          # 8 / whole-model bits_per_weight
    bits_per_weight: float
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "baseline": self.baseline, "speedup": self.speedup,
                "speedup_bound": self.speedup_bound, "bits_per_weight": self.bits_per_weight,
                "cycles": self.cost.cycles, "baseline_cycles": self.base.cycles,
                "bits": dict(self.cost.bits), "baseline_bits": dict(self.base.bits),
                "layers": [lc.to_dict() for lc in self.layers]}


def compare(cfg: AccelConfig, layers, mode: str, baseline: str = "int8") -> Comparison:
    """`mode` against `baseline` on the same hardware config, layer by layer and
    for the whole model. A 4th element in a layer tuple overrides `mode` for
    that layer (the baseline mode is the same for every layer)."""
    norm = [_layer_args(e, mode) for e in layers]
    cost = model_cost(cfg, norm, mode)
    base = model_cost(cfg, [(n, r, c, baseline) for n, r, c, _ in norm], baseline)
    rows = [LayerComparison(a.name, a.rows, a.cols, a, b, b.cycles / a.cycles, a.speedup_bound)
            for a, b in zip(cost.layers, base.layers)]
    return Comparison(mode=cost.mode, baseline=baseline, layers=rows, cost=cost, base=base,
                      speedup=base.cycles / cost.cycles, speedup_bound=cost.speedup_bound,
                      bits_per_weight=cost.bits_per_weight)


def minilm_layers() -> list[tuple[str, int, int]]:
    """The 36 linear layers of all-MiniLM-L6-v2 as (name, rows=out, cols=in)."""
    out = []
    for i in range(6):
        p = f"encoder.layer.{i}."
        for n in ("attention.self.query", "attention.self.key", "attention.self.value",
                  "attention.output.dense"):
            out.append((p + n, 384, 384))
        out.append((p + "intermediate.dense", 1536, 384))
        out.append((p + "output.dense", 384, 1536))
    return out
