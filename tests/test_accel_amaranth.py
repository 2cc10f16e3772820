"""Fast RTL checks in Amaranth's own simulator: outputs against the golden model,
output-beat cycles and counters against the timing model."""
import numpy as np
import pytest
from amaranth.sim import Simulator

from compress.image import pack_layer
from hw.accel import COUNTERS, Accelerator
from hw.config import AccelConfig
from sim import golden
from tests.rtl_helpers import random_layer


def run_layers(cfg, layers, stall_prob=0.0, seed=0):
    dut = Accelerator(cfg)
    rng = np.random.default_rng(seed)
    results = []

    async def bench(ctx):
        for img in layers:
            beats, _ = pack_layer(img, cfg)
            words = [int.from_bytes(b.tobytes(), "little") for b in beats]
            expect = golden.output_beats(golden.outputs(img), cfg)
            got, got_cycles = [], []
            i, cycle, start = 0, 0, None
            while True:
                give = i < len(words) and rng.random() >= stall_prob
                ctx.set(dut.i_stream.valid, give)
                if give:
                    ctx.set(dut.i_stream.payload, words[i])
                take = rng.random() >= stall_prob
                ctx.set(dut.o_stream.ready, take)
                await ctx.delay(0)
                in_hs = give and ctx.get(dut.i_stream.ready)
                out_hs = take and ctx.get(dut.o_stream.valid)
                if in_hs and i == 0:
                    start = cycle
                if out_hs:
                    got.append(ctx.get(dut.o_stream.payload))
                    got_cycles.append(cycle - start)
                await ctx.tick()
                cycle += 1
                i += in_hs
                if out_hs and len(got) == len(expect):
                    break
                assert cycle < 200000, "layer did not finish"
            ctx.set(dut.i_stream.valid, 0)
            ctx.set(dut.o_stream.ready, 0)
            await ctx.tick()
            assert not ctx.get(dut.busy)
            counters = {c: ctx.get(getattr(dut, f"cnt_{c}")) for c in COUNTERS}
            results.append((img, got, expect, got_cycles, counters))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results


CASES = [
    (dict(k=16, d=4, mults=8), "ssvq", 13, 37),
    (dict(k=16, d=4, mults=8), "vq", 5, 9),
    (dict(k=16, d=4, mults=8), "int8", 9, 17),
    (dict(k=256, d=8, mults=32), "ssvq", 11, 70),
    (dict(k=16, d=1, mults=8), "ssvq", 3, 5),
    (dict(k=4096, d=16, mults=32, max_rows=64, max_cols=64), "ssvq", 4, 33),
    # int8 with two groups a block and a half-empty last block
    (dict(k=16, d=4, mults=8, bus=128), "int8", 3, 5),
    (dict(k=8, d=2, mults=8, bus=128), "vq", 7, 19),
    # shortest load phases: the block count must be ready by the first weight cycle
    (dict(k=16, d=4, mults=8), "int8", 1, 1),
    (dict(k=16, d=4, mults=8, bus=256), "int8", 1, 1),
]


@pytest.mark.parametrize("cfgd,mode,rows,cols", CASES)
def test_exact_outputs_cycles_counters(cfgd, mode, rows, cols):
    cfg = AccelConfig(**{"max_rows": 256, "max_cols": 256, **cfgd})
    rng = np.random.default_rng(rows * 1000 + cols)
    layers = [random_layer(cfg, mode, rows, cols, rng, "a"), random_layer(cfg, mode, rows, cols, rng, "b")]
    for img, got, expect, cycles, counters in run_layers(cfg, layers):
        assert got == expect
        t = golden.timing(cfg, img.mode, img.rows, img.cols)
        assert cycles == t.out_cycles
        assert counters == t.counters


def test_stalls_both_sides_stay_exact():
    cfg = AccelConfig(k=16, d=4, mults=8, max_rows=64, max_cols=64)
    rng = np.random.default_rng(5)
    layers = [random_layer(cfg, m, 7, 19, rng, m) for m in ("ssvq", "int8", "vq")]
    for img, got, expect, cycles, counters in run_layers(cfg, layers, stall_prob=0.3, seed=3):
        t = golden.timing(cfg, img.mode, img.rows, img.cols)
        assert got == expect
        assert counters["cycles"] > t.counters["cycles"] and counters["stall"] > 0
        for c in COUNTERS:
            if c not in ("cycles", "stall"):
                assert counters[c] == t.counters[c], c
