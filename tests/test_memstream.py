"""The simulator-side stimulus (sim/tb/memstream.v): its coverage marks worked by hand,
and its checks shown to fail: a wrong golden value is flagged by the testbench's
comparator and by the scoreboard alike, a wrong golden cycle too, and with stalls on
both sides cnt_stall equals the stall cycles the testbench saw and made."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sim.coverage import marks, necessary
from sim.regress import random_layer
from ssvq.config import AccelConfig, LayerConfig
from ssvq.image import write_images

REPO = Path(__file__).resolve().parents[1]
BUILD_ROOT = REPO / "build" / "sim"
CFG = AccelConfig(kmax=16, d_set=(1, 2, 4), mults=8, max_rows=256, max_cols=256)


def test_marks_by_hand():
    # ssvq K=16 D=4, 17 rows x 37 cols on mults 8, bus 64 (docs/FORMAT.md section 5):
    # header 2 beats; codebook 16 x 4 bytes = 512 bits = 8 beats; params 17 x 64 bits =
    # 17 beats; acts: groups of 8 x int8 = 1 beat each, ceil(37/8) = 5 beats; weights:
    # 5 groups per row, a group = 8 sign bits + 2 codes of 4 bits = 16 bits, 17*5*16 =
    # 1360 bits = 22 beats (21.25, padded).
    lc = LayerConfig.parse("ssvq-k16-d4")
    m = marks(CFG, lc, 17, 37)
    assert len(m) == 2 + 8 + 17 + 5 + 22
    sec = m & 7
    assert list(sec[:2]) == [0, 0] and set(sec[2:10]) == {1} and set(sec[10:27]) == {2}
    assert set(sec[27:32]) == {3} and set(sec[32:]) == {4}
    first = [i for i in range(len(m)) if m[i] & 8]
    last = [i for i in range(len(m)) if m[i] & 16]
    assert first == [0, 2, 10, 27, 32] and last == [1, 9, 26, 31, 53]
    # output blocks of 8 rows: rows 8 and 16 start at weight bits 8*5*16 = 640 and 1280,
    # i.e. weight beats 10 and 20
    blocks = [i - 32 for i in range(len(m)) if m[i] & 32]
    assert blocks == [10, 20]
    # an int layer has no codebook section to cover
    assert not any(s == "codebook" for s, _, _ in necessary("int", True, False))


def _images(tmp: Path, seed=3):
    rng = np.random.default_rng(seed)
    layers = [random_layer(n, r, c, rng, f"l{i}") for i, (n, r, c) in
              enumerate([("ssvq-k16-d4", 30, 37), ("int4", 20, 19), ("vq-k16-d2-m2-c4", 17, 21)])]
    return write_images(tmp / "images", CFG, layers)


def _prepared(images, tamper=None):
    from sim.runner import prepare_images
    imgs, cfg, prep = prepare_images(images, None, None)
    if tamper:
        prep = [tamper(i, p) for i, p in enumerate(prep)]
    return imgs, cfg, prep


@pytest.mark.xdist_group("memstream")
def test_wrong_golden_value_and_cycle_are_caught(tmp_path):
    from sim.golden import Timing
    from sim.runner import simulate_images

    images = _images(tmp_path)

    def tamper(i, p):
        entry, layer, beats, y, t = p
        if i == 1:                      # one output of layer 1 off by one
            y = y.copy()
            y[5] = np.int8(int(y[5]) + 1 if y[5] < 127 else 126)
        if i == 2:                      # one output beat of layer 2 expected a cycle later
            oc = list(t.out_cycles)
            oc[1] += 1
            t = Timing(tuple(oc), t.counters, t.weight_cycles)
        return entry, layer, beats, y, t

    s = simulate_images(images, None, "icarus", out_dir=tmp_path / "sim", build_root=BUILD_ROOT,
                        progress=None, prepared=_prepared(images, tamper))
    l0, l1, l2 = s["layers"]
    assert l0["passed"]
    r1 = json.loads((tmp_path / "sim" / l1["dir"] / "result.json").read_text())
    assert not r1["passed"] and not r1["bit_exact"]
    assert r1["tb_mismatches"] == r1["beat_mismatches"] == 1      # both comparators
    assert "rows 0..7" in r1["messages"][0] and "[5]" in r1["messages"][0]
    r2 = json.loads((tmp_path / "sim" / l2["dir"] / "result.json").read_text())
    assert not r2["passed"] and r2["bit_exact"]
    assert r2["tb_late"] == r2["timing_mismatches"] == 1
    log = (tmp_path / "sim" / "_job" / "sim.log").read_text()
    assert "memstream: layer 1 output beat 0" in log              # printed as it appeared
    assert "memstream: layer 2 output beat 1 accepted" in log


@pytest.mark.xdist_group("memstream")
@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_stall_accounting_and_coverage_with_stalls(tmp_path, simulator):
    from sim.runner import simulate_images

    images = _images(tmp_path, seed=5)
    s = simulate_images(images, None, simulator, out_dir=tmp_path / "sim", build_root=BUILD_ROOT,
                        progress=None, stall_prob_in=0.4, stall_prob_out=0.6, overlap=True,
                        seed=11)
    assert s["all_passed"], [l["problems"] for l in s["layers"]]
    total_stall = gap_hits = 0
    for l in s["layers"]:
        r = json.loads((tmp_path / "sim" / l["dir"] / "result.json").read_text())
        assert r["counters_rtl"]["stall"] == r["stall_tb"] == r["stall_generated"] > 0
        assert r["counters_rtl"]["cycles"] > r["counters_model"]["cycles"]
        total_stall += r["counters_rtl"]["stall"]
        gap_hits += sum(v for k, v in r["coverage"]["hits"].items() if k.endswith(".gap"))
    assert total_stall > 50 and gap_hits > 3
    # a different seed draws different stalls
    s2 = simulate_images(images, None, simulator, out_dir=tmp_path / "sim2",
                         build_root=BUILD_ROOT, progress=None, stall_prob_in=0.4,
                         stall_prob_out=0.6, overlap=True, seed=12)
    assert [l["cycles_rtl"] for l in s2["layers"]] != [l["cycles_rtl"] for l in s["layers"]]
