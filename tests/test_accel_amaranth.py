"""Fast RTL checks in Amaranth's own simulator: outputs against the reference,
output-beat cycles and counters against the timing model, every mode."""
import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.accel import Accelerator
from sim import golden
from ssvq.config import COUNTERS, AccelConfig
from ssvq.image import pack_layer
from ssvq.reference import output_beats, outputs
from tests.rtl_helpers import random_layer


async def stream_layer(ctx, dut, words, n_out, rng, stall_prob):
    """Feeds one layer's beats and collects its output beats; returns
    (beats, acceptance cycles counted from the first input beat)."""
    got, got_cycles = [], []
    i, cycle, start = 0, 0, None
    while True:
        give = i < len(words) and rng.random() >= stall_prob
        ctx.set(dut.i_stream.valid, give)
        ctx.set(dut.i_stream.payload, words[i] if give else int(rng.integers(0, 1 << 62)))
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
        if out_hs and len(got) == n_out:
            return got, got_cycles
        assert cycle < 400000, "layer did not finish"


def run_layers(cfg, layers, stall_prob=0.0, seed=0):
    dut = Accelerator(cfg)
    rng = np.random.default_rng(seed)
    results = []

    async def bench(ctx):
        for img in layers:
            beats, _ = pack_layer(img, cfg)
            words = [int.from_bytes(b.tobytes(), "little") for b in beats]
            expect = output_beats(outputs(img), cfg)
            got, cycles = await stream_layer(ctx, dut, words, len(expect), rng, stall_prob)
            ctx.set(dut.i_stream.valid, 0)
            ctx.set(dut.o_stream.ready, 0)
            await ctx.tick()
            assert not ctx.get(dut.busy)
            counters = {c: ctx.get(getattr(dut, f"cnt_{c}")) for c in COUNTERS}
            results.append((img, got, expect, cycles, counters))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results


SMALL = dict(kmax=16, d_set=(2, 4), mults=8, max_rows=64, max_cols=64)
CASES = [
    (SMALL, ["int8", "int1", "int3", "int5", "int2", "int4", "int6"], 5, 13),
    (SMALL, ["ssvq-k16-d4", "vq-k2-d2", "vq-k16-d4-m2-c4", "ssvq-k8-d2-m2-c3", "vq-k4-d4-c2",
             "ssvq-k16-d2-m2"], 7, 19),
    (dict(SMALL, bus=128), ["int3", "vq-k16-d4-m2-c4", "ssvq-k2-d2"], 3, 5),
    (dict(SMALL, bus=256), ["int8", "int1", "ssvq-k16-d4"], 1, 1),
    # a build without coefficients: the decode's sign path without a product
    (dict(SMALL, m_max=1, coef_bits_max=0), ["ssvq-k16-d4", "vq-k8-d2", "ssvq-k4-d2"], 6, 21),
    (dict(mults=32, max_rows=64, max_cols=128), ["ssvq-k256-d8", "int4", "vq-k256-d4",
                                                 "vq-k64-d8-m2-c4"], 9, 70),
]


@pytest.mark.parametrize("cfgd,names,rows,cols", CASES)
def test_exact_outputs_cycles_counters(cfgd, names, rows, cols):
    cfg = AccelConfig(**cfgd)
    rng = np.random.default_rng(rows * 1000 + cols)
    layers = [random_layer(n, rows, cols, rng, n) for n in names]
    for img, got, expect, cycles, counters in run_layers(cfg, layers):
        assert got == expect, img.name
        t = golden.timing(cfg, img.config, img.rows, img.cols)
        assert cycles == list(t.out_cycles), img.name
        assert counters == t.counters, img.name


def test_stalls_both_sides_stay_exact():
    cfg = AccelConfig(**SMALL)
    rng = np.random.default_rng(5)
    layers = [random_layer(n, 7, 19, rng, n) for n in ("ssvq-k16-d4", "int3", "vq-k8-d2-m2-c2")]
    for img, got, expect, cycles, counters in run_layers(cfg, layers, stall_prob=0.3, seed=3):
        t = golden.timing(cfg, img.config, img.rows, img.cols)
        assert got == expect
        assert counters["cycles"] > t.counters["cycles"] and counters["stall"] > 0
        for c in COUNTERS:
            if c not in ("cycles", "stall"):
                assert counters[c] == t.counters[c], c
