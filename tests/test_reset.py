"""Reset in every phase of a layer (docs/ARCH.md "Reset"), on the memstream testbench.

One simulation runs pairs (victim, next): rst is asserted while the victim is in a
phase — half-way through its header, in the middle of each load section and of the
weights, after its last input beat while rows drain, and while an output beat is held
by back-pressure. The testbench abandons the victim's stream; the next layer must then
come out bit-exact, on the golden cycle of a fresh start, with every counter equal to
the golden ones; reset itself must leave busy low and every counter zero, and the
victim's output beats before reset must be a correct prefix.

A mutant whose gearbox keeps its fill level through reset must fail.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sim.tb.test_memstream import RESET_PHASES
from ssvq.config import AccelConfig
from ssvq.image import write_images
from sim.regress import random_layer

REPO = Path(__file__).resolve().parents[1]
BUILD_ROOT = REPO / "build" / "sim"
CFG = AccelConfig(kmax=16, d_set=(1, 2, 4), mults=8, max_rows=256, max_cols=256)
# victims: every section present, several output blocks; next: another mode
VICTIMS = {"ssvq": ("ssvq-k16-d4", 40, 37), "vq-m2": ("vq-k16-d2-m2-c4", 33, 21),
           "int": ("int3", 40, 70)}
NEXT = ("int5", 13, 9)


def _images(tmp: Path, victim: str, phases) -> tuple[Path, list[dict]]:
    rng = np.random.default_rng(7)
    layers, resets = [], []
    for ph in phases:
        name, r, c = VICTIMS[victim]
        resets.append({"layer": len(layers), "phase": ph})
        layers.append(random_layer(name, r, c, rng, f"victim_{ph}"))
        layers.append(random_layer(NEXT[0], NEXT[1], NEXT[2], rng, f"after_{ph}"))
    return write_images(tmp / "images", CFG, layers), resets


def _run(tmp: Path, simulator: str, victim: str, phases, verilog=None):
    from sim.runner import simulate_images
    images, resets = _images(tmp, victim, phases)
    return simulate_images(images, None, simulator, out_dir=tmp / "sim", build_root=BUILD_ROOT,
                           progress=None, resets=resets, verilog=verilog)


@pytest.mark.xdist_group("memstream")
@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
@pytest.mark.parametrize("victim", sorted(VICTIMS))
def test_reset_in_every_phase(tmp_path, simulator, victim):
    phases = [p for p in RESET_PHASES if not (victim == "int" and p == "codebook")]
    s = _run(tmp_path, simulator, victim, phases)
    lays = s["layers"]
    assert len(lays) == 2 * len(phases)
    for ph, v, nxt in zip(phases, lays[::2], lays[1::2]):
        rs = v["reset"]
        assert rs and rs["phase"] == ph, v
        assert rs["where"].startswith(ph)
        assert rs["after"]["busy"] == "0"
        assert all(rs["after"][k] == 0 for k in ("cycles", "stall", "header", "weights", "out"))
        assert v["passed"], (ph, v["problems"])
        # where reset hit: before any output, while rows drain (some out, not all),
        # with an output beat held by back-pressure
        n_out = -(-v["rows"] // 8)
        if ph in ("header", "codebook", "params", "acts"):
            assert rs["output_beats_before"] == 0, (ph, rs)
        if ph == "drain":
            assert rs["output_beats_before"] < n_out, (ph, rs)
        if ph == "backpressure":
            assert "output beat waiting" in rs["where"], rs
        # the layer after the reset: bit-exact, golden cycles of a fresh start, counters
        assert nxt["passed"], (ph, nxt["problems"], nxt["error"])
        assert nxt["bit_exact"] and nxt["timing_checked"]
        assert nxt["out_cycles_match"] and nxt["counters_match"]
        assert nxt["counters_rtl"] == nxt["counters_model"]


@pytest.mark.xdist_group("memstream")
def test_reset_check_bites_on_a_gearbox_that_keeps_its_level(tmp_path):
    from hw.verilog import generate
    from sim.mutants import mutate
    v = Path(generate(CFG, tmp_path / "gen"))
    broken = tmp_path / "broken" / v.name
    broken.parent.mkdir()
    broken.write_text(mutate(v.read_text(), "gearbox-level-not-reset"))
    # a reset between two header beats leaves 64 bits in the gearbox
    s = _run(tmp_path, "icarus", "ssvq", ["header", "weights"], verilog=broken)
    after = [l for l in s["layers"][1::2]]
    assert not all(l["passed"] for l in after)
    bad = [l for l in after if not l["passed"]]
    assert any(l["error"] or not l["bit_exact"] for l in bad), bad
