"""Cost model (sim.cost), checked against numbers worked out here by hand.

Nothing here compares sim.cost with sim.golden as if the two were independent
(sim.cost takes its beats and cycles from sim.golden by design). The references
are the format v2 rules, worked by hand for each case:

    G = ceil(cols / mults)                      groups per row
    header   = ceil(128 / bus)
    codebook = ceil(m*k * d*8 / bus)            (vq, ssvq; int: 0)
    params   = ceil(rows * 64 / bus)
    acts     = ceil(G * mults * 8 / bus)
    weights  = ceil(rows * G * group_bits / bus)
    out      = ceil(rows * 8 / bus)
    group_bits: int-b: mults*b; vq/ssvq: (mults/d) * m * (log2 k + coef_bits)
                + (ssvq: mults sign bits)

and the accelerator's two rates: at most one input beat accepted per cycle,
at most one record (weight group, codeword, param, act group) taken per cycle.
"""
import dataclasses

import pytest

import sim.cost as cost
from sim.cost import (STREAMS, WEIGHT_FIELDS, baseline_build, bits_per_weight, compare,
                      layer_cost, model_cost)
from ssvq.config import AccelConfig, LayerConfig
from ssvq.errors import ConfigError

CFG = AccelConfig()                     # mults 32, bus 64, every mode and width built


def minilm_layers(lc):
    """The 36 linear layers of all-MiniLM-L6-v2: 6 x [4 x (384, 384), (1536, 384),
    (384, 1536)] as (name, config, rows=out, cols=in)."""
    out = []
    for i in range(6):
        p = f"encoder.layer.{i}."
        for n in ("attention.self.query", "attention.self.key", "attention.self.value",
                  "attention.output.dense"):
            out.append((p + n, lc, 384, 384))
        out.append((p + "intermediate.dense", lc, 1536, 384))
        out.append((p + "output.dense", lc, 384, 1536))
    return out


# Worked by hand (mults 32, bus 64 unless given):
# int3 3x70: G=3, group 32*3 = 96 bits, 9 groups = 864 bits -> 13.5 -> 14 beats (32 pad)
# int1 5x70: G=3, group 32 bits, 15 groups = 480 bits -> 7.5 -> 8 beats (32 pad)
# ssvq-k256-d8 3x40: G=2, L=4, group 4*8 codes + 32 signs = 64 bits; 6 groups = 6 beats;
#     codebook 256 x 64 bits = 256 beats
# vq-k16-d4-m2-c4 3x40: G=2, L=8, group 8*2*(4+4) = 128 bits; 6 groups = 12 beats;
#     codebook 2*16 x 32 bits = 1024 bits = 16 beats
# int3 3x70 on bus 128: header 1, params 192/128 -> 2, acts 768/128 = 6,
#     weights 864/128 -> 7 (896 bits, 32 pad), out 1
HAND = [
    # (config, bus, rows, cols, beats, weight field bits, records taken)
    ("int3", 64, 3, 70,
     dict(header=2, codebook=0, params=3, acts=12, weights=14, out=1),
     dict(codes=0, coefs=0, signs=0, int_weights=864, padding=32),
     dict(codebook=0, params=3, acts=3, weights=9)),
    ("int1", 64, 5, 70,
     dict(header=2, codebook=0, params=5, acts=12, weights=8, out=1),
     dict(codes=0, coefs=0, signs=0, int_weights=480, padding=32),
     dict(codebook=0, params=5, acts=3, weights=15)),
    ("ssvq-k256-d8", 64, 3, 40,
     dict(header=2, codebook=256, params=3, acts=8, weights=6, out=1),
     dict(codes=6 * 32, coefs=0, signs=6 * 32, int_weights=0, padding=0),
     dict(codebook=256, params=3, acts=2, weights=6)),
    ("vq-k16-d4-m2-c4", 64, 3, 40,
     dict(header=2, codebook=16, params=3, acts=8, weights=12, out=1),
     dict(codes=6 * 64, coefs=6 * 64, signs=0, int_weights=0, padding=0),
     dict(codebook=32, params=3, acts=2, weights=6)),
    ("int3", 128, 3, 70,
     dict(header=1, codebook=0, params=2, acts=6, weights=7, out=1),
     dict(codes=0, coefs=0, signs=0, int_weights=864, padding=32),
     dict(codebook=0, params=3, acts=3, weights=9)),
]
IDS = [f"{h[0]}-bus{h[1]}-{h[2]}x{h[3]}" for h in HAND]


@pytest.mark.parametrize("name,bus,rows,cols,beats,fields,records", HAND, ids=IDS)
def test_beats_and_bits_by_hand(name, bus, rows, cols, beats, fields, records):
    cfg = dataclasses.replace(CFG, bus=bus)
    c = layer_cost(cfg, name, rows, cols, "x")
    assert c.config == LayerConfig.parse(name) and c.name == "x"
    assert c.beats == beats
    assert c.bits == {s: beats[s] * bus for s in STREAMS}
    assert c.total_bits == sum(beats.values()) * bus
    assert c.weight_bits == fields
    assert sum(c.weight_bits.values()) == c.bits["weights"]


@pytest.mark.parametrize("name,bus,rows,cols,beats,fields,records", HAND, ids=IDS)
def test_cycles_within_rate_bounds(name, bus, rows, cols, beats, fields, records):
    """Lower bounds: one input beat per cycle; the header, then one record per cycle.
    Upper bound: every section at the slower of its two rates, plus a fixed
    latency (header decode, 12 cycles, the pipeline, 31, and two hand-over cycles:
    docs/ARCH.md) of at most 45 cycles."""
    cfg = dataclasses.replace(CFG, bus=bus)
    c = layer_cost(cfg, name, rows, cols)
    inp = sum(v for s, v in beats.items() if s != "out")
    assert c.input_beats == inp
    assert c.cycles > inp
    assert c.cycles > beats["header"] + sum(records.values())
    slow = beats["header"] + sum(max(beats[s], records[s]) for s in records)
    assert c.cycles <= slow + 45
    assert c.stream_utilisation == pytest.approx(inp / c.cycles)
    assert 0 < c.bus_utilisation <= 1.0 and 0 < c.stream_utilisation < 1.0


def test_latency_is_the_same_for_every_bus_bound_layer():
    """For layers whose records are at least a beat wide (every rate is the bus),
    cycles - input beats is one constant: it does not grow with the shape; by
    docs/ARCH.md it is the header decode (12), the pipeline (31) and the two
    hand-over cycles."""
    lat = {layer_cost(CFG, n, r, c).cycles - layer_cost(CFG, n, r, c).input_beats
           for n, r, c in [("int4", 384, 384), ("int8", 1536, 384), ("int2", 7, 100),
                           ("int8", 1, 1), ("ssvq-k256-d8", 384, 1536)]}
    assert lat == {12 + 31 + 2}


@pytest.mark.parametrize("name,rows,cols,want", [
    # (codebook beats*64 + weight beats*64 + 16*rows) / (rows*cols)
    ("ssvq-k256-d8", 3, 40, (256 * 64 + 6 * 64 + 16 * 3) / 120),
    ("ssvq-k256-d8", 384, 384, (16384 + 384 * 12 * 64 + 16 * 384) / 384 ** 2),   # 2.1528
    ("int4", 384, 384, (384 * 12 * 128 + 16 * 384) / 384 ** 2),                  # 4.0417
    ("int8", 384, 1536, (384 * 48 * 256 + 16 * 384) / (384 * 1536)),             # 8.0104
    ("int3", 3, 70, (14 * 64 + 16 * 3) / 210),                                   # pad counted
    ("vq-k16-d4-m2-c4", 3, 40, (16 * 64 + 12 * 64 + 48) / 120),
])
def test_bits_per_weight_by_hand(name, rows, cols, want):
    c = layer_cost(CFG, name, rows, cols)
    assert c.bits_per_weight == pytest.approx(want, rel=1e-12)
    assert bits_per_weight(CFG, LayerConfig.parse(name), rows, cols) == pytest.approx(want)
    assert c.speedup_bound == pytest.approx(8 / want)
    assert c.weight_side_bits == round(want * rows * cols)


def test_bus_utilisation_bounds():
    # int4: a 128-bit group is two beats, taken in two cycles: the bus is the limit
    int4 = layer_cost(CFG, "int4", 384, 384)
    assert int4.bus_utilisation >= 0.998
    assert int4.stream_utilisation >= 0.995          # 42 cycles of latency in 9,700
    # int1: a 32-bit group is half a beat, one group per cycle: compute-bound at 0.5
    int1 = layer_cost(CFG, "int1", 384, 384)
    assert 0.49 <= int1.bus_utilisation <= 0.51
    groups = 384 * 12
    assert int1.cycles >= 2 + 384 + 48 + groups
    assert int1.stream_utilisation < 0.6
    # ssvq-k256-d8: 64-bit groups, one beat per group
    assert layer_cost(CFG, "ssvq-k256-d8", 384, 384).bus_utilisation >= 0.998


def test_model_cost_mixed_configs_sums_by_hand():
    layers = [("a", "int3", 3, 70), ("b", LayerConfig.parse("ssvq-k256-d8"), 3, 40),
              ("c", "vq-k16-d4-m2-c4", 3, 40)]
    m = model_cost(CFG, layers)
    assert m.config == "mixed" and [x.name for x in m.layers] == ["a", "b", "c"]
    assert m.bits["weights"] == (14 + 6 + 12) * 64
    assert m.bits["codebook"] == (0 + 256 + 16) * 64
    assert m.bits["header"] == 3 * 2 * 64 and m.bits["out"] == 3 * 64
    assert m.weight_bits == dict(codes=192 + 384, coefs=384, signs=192, int_weights=864,
                                 padding=32)
    assert m.n_weights == 210 + 120 + 120
    ws = (14 * 64 + 48) + (256 * 64 + 6 * 64 + 48) + (16 * 64 + 12 * 64 + 48)
    assert m.weight_side_bits == ws
    assert m.bits_per_weight == pytest.approx(ws / 450)
    assert m.speedup_bound == pytest.approx(8 * 450 / ws)
    assert model_cost(CFG, layers[:1]).config == "int3"
    with pytest.raises(ValueError):
        model_cost(CFG, [])


def test_minilm_speedups():
    """Whole-MiniLM shapes: int4 and ssvq-k256-d8 against int8 on the default build."""
    r4 = compare(CFG, minilm_layers("int4"))
    rs = compare(CFG, minilm_layers("ssvq-k256-d8"))
    print(f"\nMiniLM int4: {r4.speedup['int8']:.4f}x over int8, "
          f"{r4.cost.bits_per_weight:.4f} bits/weight, bus util {r4.cost.bus_utilisation:.4f}")
    print(f"MiniLM ssvq-k256-d8: {rs.speedup['int8']:.4f}x over int8, "
          f"{rs.speedup['int4']:.4f}x over int4, {rs.cost.bits_per_weight:.4f} bits/weight, "
          f"bus util {rs.cost.bus_utilisation:.4f}, bound {rs.cost.speedup_bound:.4f}")
    assert len(rs.layers) == 36 and rs.cost.n_weights == 6 * (4 * 384 ** 2 + 2 * 1536 * 384)
    assert r4.speedup["int8"] >= 1.9
    assert r4.speedup["int4"] == 1.0            # the int4 baseline is the same runs
    # 3.700 with a 12-deep pipeline and 3 decode cycles; 31 and 12 for 150 MHz cost
    # 28 cycles a layer (docs/ARCH.md, "Timing closure"): 366,012 cycles
    assert rs.speedup["int8"] >= 3.69
    # ssvq-k256-d8 weights per block: 4 x 384x384 at 4608 beats, 2 x 18432 beats
    assert rs.cost.bits["weights"] == 6 * (4 * 4608 + 2 * 18432) * 64
    assert rs.cost.bits_per_weight == pytest.approx(
        (6 * (4 * (16384 + 4608 * 64 + 16 * 384) + (16384 + 18432 * 64 + 16 * 1536)
              + (16384 + 18432 * 64 + 16 * 384))) / rs.cost.n_weights)
    # whole-model speedup is the ratio of summed cycles, not a mean of the layers'
    assert rs.speedup["int8"] == pytest.approx(
        sum(x.base["int8"].cycles for x in rs.layers) / sum(x.cost.cycles for x in rs.layers))
    for x in rs.layers:
        assert x.speedup["int8"] == x.base["int8"].cycles / x.cost.cycles
        assert x.speedup["int8"] > x.speedup["int4"] > 1.0


def test_baselines_run_on_the_same_widened_build():
    ssvq_only = AccelConfig(modes=("ssvq",), int_bits=())
    with pytest.raises(ConfigError):             # this build has no int decode
        layer_cost(ssvq_only, "int8", 32, 32)
    b = baseline_build(ssvq_only)
    assert b.modes == ("int", "ssvq") and b.int_bits == (4, 8)
    assert (b.kmax, b.d_set, b.m_max, b.coef_bits_max, b.mults, b.bus) == \
        (ssvq_only.kmax, ssvq_only.d_set, ssvq_only.m_max, ssvq_only.coef_bits_max,
         ssvq_only.mults, ssvq_only.bus)
    assert baseline_build(CFG) is CFG
    r = compare(ssvq_only, [("l", "ssvq-k256-d8", 64, 64)])
    assert r.widened and r.build == b
    r2 = compare(CFG, [("l", "ssvq-k256-d8", 64, 64)], baselines=("int8",))
    assert not r2.widened and r2.build is CFG and set(r2.speedup) == {"int8"}
    with pytest.raises(ValueError):
        baseline_build(CFG, ("ssvq-k256-d8",))


def test_dead_code_removed():
    assert not hasattr(cost, "minilm_layers")
    assert "extra" not in {f.name for f in dataclasses.fields(cost.Comparison)}
    assert set(WEIGHT_FIELDS) == {"codes", "coefs", "signs", "int_weights", "padding"}
