"""Memory-access cost model (format v2): bits moved per stream, cycles, bus
utilisation and speedup over int8 / int4 baselines.

Every layer is charged the bits each stream of its memory image moves over the
accelerator's input and output buses. Beat counts and cycles are not re-derived
here: they come from `sim.golden.timing(cfg, lc, rows, cols)`, whose counters
the RTL's performance counters are held to, and a stream's bits are its beats x
`cfg.bus` (so the zero padding the format streams is charged too).

Streams (named as the golden/RTL counters are):

    header    the 128-bit layer header record, padded to whole beats
    codebook  m*k codewords of d x 8 bits (vq, ssvq)
    params    one 64-bit requantization record per row (bias, mult, shift)
    acts      int8 activations, padded to whole groups of `mults`
    weights   rows x G weight-group records of Geometry.group_bits
    out       int8 outputs, bus/8 per beat (the output bus)

Within the weight stream the bits are attributed analytically from
`cfg.geometry(...)` (per group x rows*G groups): `codes` (code_field_bits),
`coefs` (coef_field_bits), `signs` (sign_field_bits) and `int_weights` (an int
layer's code_field_bits); `padding` is what the weight section streams beyond
its records (zero bits up to a whole beat). These five add up to bits["weights"].
Column padding inside a row's last group (cols < G * mults) is part of the
fields, as the accelerator moves it.

bits_per_weight = (codebook bits + weight-section bits, both as streamed with
padding, + ROW_SCALE_BITS per row) / (rows x cols); speedup_bound = 8 /
bits_per_weight, the speedup over 8-bit weights if weight traffic were the only
cost. bus_utilisation is Timing.bus_utilisation (weight beats per cycle of the
weight phase); stream_utilisation is all input-stream beats (header, codebook,
params, acts, weights) per cycle of the whole layer.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sim import golden
from ssvq.config import COUNTERS, MODES, ROW_SCALE_BITS, SECTIONS, AccelConfig, LayerConfig

STREAMS = ("header", "codebook", "params", "acts", "weights", "out")
INPUT_STREAMS = SECTIONS                     # header, codebook, params, acts, weights
WEIGHT_FIELDS = ("codes", "coefs", "signs", "int_weights", "padding")
BASELINES = ("int8", "int4")
assert set(STREAMS) <= set(COUNTERS)


def _lc(lc) -> LayerConfig:
    return LayerConfig.parse(lc) if isinstance(lc, str) else lc


@dataclass(frozen=True)
class LayerCost:
    name: str
    config: LayerConfig
    rows: int
    cols: int
    beats: dict              # stream -> beats (golden.timing counters)
    bits: dict               # stream -> beats x bus
    weight_bits: dict        # WEIGHT_FIELDS -> bits within the weight stream
    cycles: int              # golden.timing counters["cycles"] (no stalls)
    weight_cycles: int       # Timing.weight_cycles
    bus_utilisation: float   # weight beats / weight_cycles
    stream_utilisation: float  # input-stream beats / cycles
    weight_side_bits: int    # codebook + weights bits + ROW_SCALE_BITS * rows
    bits_per_weight: float
    speedup_bound: float     # 8 / bits_per_weight

    @property
    def total_bits(self) -> int:
        return sum(self.bits.values())

    @property
    def input_beats(self) -> int:
        return sum(self.beats[s] for s in INPUT_STREAMS)

    def to_dict(self) -> dict:
        return {"name": self.name, "config": self.config.name, "rows": self.rows,
                "cols": self.cols, "beats": dict(self.beats), "bits": dict(self.bits),
                "total_bits": self.total_bits, "weight_bits": dict(self.weight_bits),
                "cycles": self.cycles, "weight_cycles": self.weight_cycles,
                "bus_utilisation": self.bus_utilisation,
                "stream_utilisation": self.stream_utilisation,
                "weight_side_bits": self.weight_side_bits,
                "bits_per_weight": self.bits_per_weight, "speedup_bound": self.speedup_bound}


def weight_field_bits(cfg: AccelConfig, lc, rows: int, cols: int, streamed_bits: int) -> dict:
    """The weight stream's bits by field (Geometry per group x rows*G groups);
    `padding` = streamed_bits minus the records."""
    lc = _lc(lc)
    geo = cfg.geometry(lc, rows, cols)
    n = rows * geo.groups_per_row
    out = dict.fromkeys(WEIGHT_FIELDS, 0)
    if lc.mode == "int":
        out["int_weights"] = geo.code_field_bits * n
    else:
        out["codes"] = geo.code_field_bits * n
        out["coefs"] = geo.coef_field_bits * n
        out["signs"] = geo.sign_field_bits * n
    used = sum(out.values())
    if used != geo.group_bits * n or streamed_bits < used:
        raise AssertionError(f"{lc.name} {rows}x{cols}: weight fields {used} bits, groups "
                             f"{geo.group_bits * n}, streamed {streamed_bits}")
    out["padding"] = streamed_bits - used
    return out


def layer_cost(cfg: AccelConfig, lc, rows: int, cols: int, name: str = "") -> LayerCost:
    """One layer's cost on build `cfg` (raises ConfigError if the build cannot run it).
    `lc` is a LayerConfig or its name (e.g. "ssvq-k256-d8")."""
    lc = _lc(lc)
    t = golden.timing(cfg, lc, rows, cols)
    beats = {s: t.counters[s] for s in STREAMS}
    bits = {s: b * cfg.bus for s, b in beats.items()}
    wb = weight_field_bits(cfg, lc, rows, cols, bits["weights"])
    ws = bits["codebook"] + bits["weights"] + ROW_SCALE_BITS * rows
    bpw = ws / (rows * cols)
    cycles = t.counters["cycles"]
    return LayerCost(name=name, config=lc, rows=rows, cols=cols, beats=beats, bits=bits,
                     weight_bits=wb, cycles=cycles, weight_cycles=t.weight_cycles,
                     bus_utilisation=t.bus_utilisation,
                     stream_utilisation=sum(beats[s] for s in INPUT_STREAMS) / cycles,
                     weight_side_bits=ws, bits_per_weight=bpw, speedup_bound=8.0 / bpw)


def bits_per_weight(cfg: AccelConfig, lc, rows: int, cols: int) -> float:
    return layer_cost(cfg, lc, rows, cols).bits_per_weight


@dataclass(frozen=True)
class ModelCost:
    layers: list             # [LayerCost]
    bits: dict               # stream -> bits, summed over layers
    weight_bits: dict        # WEIGHT_FIELDS -> bits, summed
    cycles: int
    n_weights: int
    weight_side_bits: int
    bits_per_weight: float   # weight_side_bits / n_weights
    speedup_bound: float     # 8 / bits_per_weight
    bus_utilisation: float   # sum weight beats / sum weight cycles
    stream_utilisation: float  # sum input beats / sum cycles

    @property
    def config(self) -> str:
        """The layers' config name, or "mixed"."""
        names = {lc.config.name for lc in self.layers}
        return names.pop() if len(names) == 1 else "mixed"

    @property
    def total_bits(self) -> int:
        return sum(self.bits.values())

    def to_dict(self) -> dict:
        return {"config": self.config, "bits": dict(self.bits), "total_bits": self.total_bits,
                "weight_bits": dict(self.weight_bits), "cycles": self.cycles,
                "weights": self.n_weights, "weight_side_bits": self.weight_side_bits,
                "bits_per_weight": self.bits_per_weight, "speedup_bound": self.speedup_bound,
                "bus_utilisation": self.bus_utilisation,
                "stream_utilisation": self.stream_utilisation,
                "layers": [lc.to_dict() for lc in self.layers]}


def model_cost(cfg: AccelConfig, layers) -> ModelCost:
    """layers: [(name, LayerConfig or its name, rows, cols)]; configs may differ."""
    lcs = [layer_cost(cfg, lc, r, c, str(n)) for n, lc, r, c in layers]
    if not lcs:
        raise ValueError("model_cost: expected at least one layer, found none")
    bits = {s: sum(x.bits[s] for x in lcs) for s in STREAMS}
    wb = {f: sum(x.weight_bits[f] for x in lcs) for f in WEIGHT_FIELDS}
    nw = sum(x.rows * x.cols for x in lcs)
    ws = sum(x.weight_side_bits for x in lcs)
    cycles = sum(x.cycles for x in lcs)
    return ModelCost(layers=lcs, bits=bits, weight_bits=wb, cycles=cycles, n_weights=nw,
                     weight_side_bits=ws, bits_per_weight=ws / nw, speedup_bound=8.0 * nw / ws,
                     bus_utilisation=(sum(x.beats["weights"] for x in lcs)
                                      / max(1, sum(x.weight_cycles for x in lcs))),
                     stream_utilisation=sum(x.input_beats for x in lcs) / cycles)


def baseline_build(cfg: AccelConfig, baselines=BASELINES) -> AccelConfig:
    """`cfg` widened (dataclasses.replace) so that it also has the int decode and
    the baselines' widths: the "int" mode added to `modes` and each baseline's
    bits to `int_bits`. Everything else (kmax, d_set, m_max, coef_bits_max,
    mults, bus, max_rows, max_cols) stays as built, so a build that already has
    them is returned unchanged."""
    bls = [_lc(b) for b in baselines]
    if any(b.mode != "int" for b in bls):
        raise ValueError(f"baseline_build: expected int baselines, found "
                         f"{[b.name for b in bls]}")
    modes = tuple(m for m in MODES if m in cfg.modes or m == "int")
    bits = tuple(sorted(set(cfg.int_bits) | {b.bits for b in bls}))
    if modes == cfg.modes and set(bits) == set(cfg.int_bits):
        return cfg
    return dataclasses.replace(cfg, modes=modes, int_bits=bits)


@dataclass(frozen=True)
class LayerComparison:
    name: str
    rows: int
    cols: int
    cost: LayerCost
    base: dict               # baseline name -> LayerCost
    speedup: dict            # baseline name -> base.cycles / cost.cycles

    def to_dict(self) -> dict:
        return {"name": self.name, "rows": self.rows, "cols": self.cols,
                "config": self.cost.config.name, "cycles": self.cost.cycles,
                "speedup": dict(self.speedup),
                "baseline_cycles": {b: c.cycles for b, c in self.base.items()},
                "cost": self.cost.to_dict()}


@dataclass(frozen=True)
class Comparison:
    build: AccelConfig       # the one build every number here was computed on
    widened: bool            # build differs from the cfg passed in
    layers: list             # [LayerComparison]
    cost: ModelCost
    base: dict               # baseline name -> ModelCost
    speedup: dict            # baseline name -> sum baseline cycles / sum cycles

    def to_dict(self) -> dict:
        return {"build": self.build.to_dict(), "widened": self.widened,
                "speedup": dict(self.speedup), "cost": self.cost.to_dict(),
                "baselines": {b: m.to_dict() for b, m in self.base.items()},
                "layers": [x.to_dict() for x in self.layers]}


def compare(cfg: AccelConfig, layers, baselines=BASELINES, originals=None) -> Comparison:
    """The layers [(name, LayerConfig or name, rows, cols)] against each int
    baseline (default int8 and int4) for every layer, all on ONE build:
    `baseline_build(cfg, baselines)`, i.e. `cfg` with the int mode and the
    baselines' widths added by dataclasses.replace (not AccelConfig.covering,
    which would shrink the build). When `cfg` already has them (the default
    AccelConfig has every mode and width) that build is `cfg` itself.
    Per-layer and whole-model speedup = baseline cycles / cycles.

    `originals` maps the image layers that are factors of one model layer (a low-rank
    pair run as a chain) to that layer's (name, rows, cols): the whole-model baselines
    then run the model layer unfactored, and bits per weight count its weights once,
    so the pair is charged against what it replaces. Per-layer rows stay per image
    layer (a factor against the baseline of its own shape)."""
    layers = [(str(n), _lc(lc), r, c) for n, lc, r, c in layers]
    bls = [_lc(b).name for b in baselines]
    build = baseline_build(cfg, bls)
    cost = model_cost(build, layers)
    per_layer = {b: model_cost(build, [(n, b, r, c) for n, _, r, c in layers]) for b in bls}
    base = per_layer
    if originals:
        logical = list(dict.fromkeys(originals.get(n, (n, r, c)) for n, _, r, c in layers))
        base = {b: model_cost(build, [(n, b, r, c) for n, r, c in logical]) for b in bls}
        nw = sum(r * c for _, r, c in logical)
        cost = dataclasses.replace(cost, n_weights=nw,
                                   bits_per_weight=cost.weight_side_bits / nw,
                                   speedup_bound=8.0 * nw / cost.weight_side_bits)
    rows = [LayerComparison(a.name, a.rows, a.cols, a,
                            {b: per_layer[b].layers[i] for b in bls},
                            {b: per_layer[b].layers[i].cycles / a.cycles for b in bls})
            for i, a in enumerate(cost.layers)]
    return Comparison(build=build, widened=build != cfg, layers=rows, cost=cost, base=base,
                      speedup={b: base[b].cycles / cost.cycles for b in bls})
