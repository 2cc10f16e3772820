"""RTL vs golden model in cocotb (sim.runner), on small random layers.

Every (simulator, config) pair is one build (cached under build/sim, keyed by
the config and the Verilog text); Verilator builds are slow, so Verilator
covers two configs and Icarus all of them. Tests are independent and
parametrized, so `pytest -n 2` spreads them (builds are file-locked).

    .venv/bin/python -m pytest tests/test_sim_accel.py -n 2
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from ssvq.config import AccelConfig, LayerConfig
from ssvq.image import write_images

REPO = Path(__file__).resolve().parents[1]
BUILD_ROOT = REPO / "build" / "sim"

# name -> build; max_rows/max_cols small to keep the builds quick
CONFIGS = {
    "small": AccelConfig(kmax=16, d_set=(1, 2, 4), mults=8, max_rows=256, max_cols=256),
    "default": AccelConfig(max_rows=256, max_cols=256),
    "b128": AccelConfig(kmax=16, d_set=(4,), mults=16, bus=128, max_rows=256, max_cols=256),
    "k4096": AccelConfig(kmax=4096, d_set=(8, 16), modes=("vq", "ssvq"), m_max=1,
                         coef_bits_max=0, mults=32, max_rows=64, max_cols=64),
    # one multiplier and one column (the formal checks' shape): every section is a
    # few bits, narrower than the bus' log2 (its padding once came out wrong here)
    "narrow": AccelConfig(kmax=4, d_set=(1,), m_max=2, coef_bits_max=2, mults=1, bus=64,
                          max_rows=16, max_cols=1),
}
VERILATOR_CONFIGS = ("default", "small")
CASES = ([("icarus", c) for c in CONFIGS]
         + [("verilator", c) for c in VERILATOR_CONFIGS])

# per build: (layer config, rows, cols), every mode it has, odd shapes (not multiples of
# lanes, d, mults or beats), back to back through one build
SHAPES = {
    "small": [("int8", 13, 37), ("int1", 1, 1), ("int3", 9, 70), ("int5", 4, 9),
              ("vq-k2-d1", 5, 3), ("ssvq-k16-d4", 13, 37), ("vq-k16-d2-m2-c4", 6, 21),
              ("ssvq-k8-d4-m2-c2", 3, 17), ("int6", 2, 8), ("int2", 3, 33), ("int4", 5, 5)],
    "default": [("ssvq-k256-d8", 9, 70), ("int4", 13, 37), ("vq-k256-d4", 1, 1),
                ("vq-k16-d8-m2-c4", 7, 40), ("int8", 4, 33), ("ssvq-k2-d4", 3, 65)],
    "b128": [("int3", 7, 19), ("ssvq-k16-d4", 13, 37), ("vq-k4-d4-m2-c3", 5, 9),
             ("int1", 3, 40)],
    "k4096": [("ssvq-k4096-d16", 3, 40), ("vq-k4096-d8", 2, 17)],
    "narrow": [("int1", 9, 1), ("int8", 5, 1), ("vq-k4-d1", 7, 1), ("ssvq-k2-d1", 3, 1),
               ("vq-k4-d1-m2-c2", 4, 1), ("int3", 1, 1)],
}
STALL_SHAPES = {c: v[:4] for c, v in SHAPES.items()}


# ---------------------------------------------------------------- random layers
from sim.regress import random_layer  # noqa: E402  (shared with the regression)


def make_images(tmp: Path, cfg: AccelConfig, shapes, seed: int, extremes=False) -> Path:
    rng = np.random.default_rng(seed)
    layers = [random_layer(n, r, c, rng, f"l{i}_{n}_{r}x{c}", extremes)
              for i, (n, r, c) in enumerate(shapes)]
    return write_images(tmp / "images", cfg, layers)


def _check(summary: dict, expect_timing: bool):
    bad = [l for l in summary["layers"] if not l["passed"]]
    assert not bad, "\n".join(
        f"{l['name']}: {l['error'] or ''} {json.dumps({k: l[k] for k in ('counters_rtl', 'counters_model', 'out_cycles_match', 'counters_match', 'bit_exact')})}"
        for l in bad)
    for l in summary["layers"]:
        assert l["bit_exact"]
        assert l["timing_checked"] is expect_timing
        if expect_timing:
            assert l["out_cycles_match"] and l["counters_match"]
            assert l["cycles_rtl"] == l["cycles_model"]


def _simulate(images: Path, simulator: str, out: Path, **kw):
    from sim.runner import simulate_images
    return simulate_images(images, None, simulator, out_dir=out, build_root=BUILD_ROOT,
                           progress=None, **kw)


# ------------------------------------------------------------------- RTL tests
@pytest.mark.parametrize("simulator,config", CASES, ids=[f"{s}-{c}" for s, c in CASES])
def test_modes_and_shapes(tmp_path, simulator, config):
    """All modes, odd shapes and a max-size layer, back to back in one run
    (counters must clear at each header), no stalls: bit-exact, and every
    output beat's cycle and every counter equal to the golden timing."""
    cfg = CONFIGS[config]
    big = {"k4096": "vq-k4096-d8", "narrow": "ssvq-k4-d1"}.get(config, "ssvq-k16-d4")
    shapes = SHAPES[config] + [(big, cfg.max_rows // 4, cfg.max_cols)]
    images = make_images(tmp_path, cfg, shapes, seed=zlib.crc32(config.encode()))
    summary = _simulate(images, simulator, tmp_path / "out", seed=3)
    _check(summary, expect_timing=True)
    for l in summary["layers"]:
        res = json.loads((tmp_path / "out" / l["dir"] / "result.json").read_text())
        y = np.load(tmp_path / "out" / l["dir"] / "outputs.npy")
        assert y.dtype == np.int8 and len(y) == res["rows"]


@pytest.mark.parametrize("simulator,config", CASES, ids=[f"{s}-{c}" for s, c in CASES])
def test_random_stalls(tmp_path, simulator, config):
    """Random gaps on the input and back-pressure on the output (fixed seed),
    plus memory latency: still bit-exact, beat counters exact, cnt_stall > 0."""
    cfg = CONFIGS[config]
    images = make_images(tmp_path, cfg, STALL_SHAPES[config], seed=7)
    summary = _simulate(images, simulator, tmp_path / "out", seed=11, stall_prob=0.3,
                        latency=5)
    _check(summary, expect_timing=False)
    assert sum(l["counters_rtl"]["stall"] for l in summary["layers"]) > 0
    for l in summary["layers"]:
        # (a layer of a dozen beats may draw no stall at 0.3; `passed` has already
        # checked cnt_stall against the stalls seen on the ports, every layer)
        beats = sum(l["counters_rtl"][s] for s in ("header", "codebook", "params", "acts",
                                                  "weights"))
        if beats >= 32:
            assert l["counters_rtl"]["stall"] > 0, l["name"]
        assert l["cycles_rtl"] >= l["cycles_model"]


@pytest.mark.parametrize("simulator,config", [("icarus", "default"), ("icarus", "b128")])
def test_latency_keeps_timing(tmp_path, simulator, config):
    """Memory latency only delays the header: timing relative to it stays exact."""
    cfg = CONFIGS[config]
    images = make_images(tmp_path, cfg, SHAPES[config][:2], seed=5)
    summary = _simulate(images, simulator, tmp_path / "out", seed=2, latency=9)
    _check(summary, expect_timing=True)


@pytest.mark.parametrize("simulator,config,stall_prob",
                         [("icarus", "small", 0.0), ("icarus", "small", 0.25),
                          ("verilator", "default", 0.0)])
def test_overlapped_layers(tmp_path, simulator, config, stall_prob):
    """Each layer's stream queued right behind the previous one: the next header
    waits at the input while the previous layer computes, and is accepted no
    earlier than the cycle after the last output beat (counters still final)."""
    cfg = CONFIGS[config]
    images = make_images(tmp_path, cfg, SHAPES[config][:5], seed=17)
    summary = _simulate(images, simulator, tmp_path / "out", seed=5, stall_prob=stall_prob,
                        overlap=True)
    _check(summary, expect_timing=stall_prob == 0.0)


@pytest.mark.parametrize("simulator,config", [("icarus", "default")])
def test_requant_extremes(tmp_path, simulator, config):
    """Full-range bias, mult 0 / 65535, shift 1 / 63: saturation and rounding."""
    cfg = CONFIGS[config]
    images = make_images(tmp_path, cfg, [("int8", 32, 40), ("ssvq-k256-d8", 32, 64),
                                              ("vq-k16-d8-m2-c4", 16, 40)], seed=13,
                         extremes=True)
    summary = _simulate(images, simulator, tmp_path / "out", seed=4)
    _check(summary, expect_timing=True)


# --------------------------------------------------------- corrupted images CLI
def _corrupt_byte(path: Path):
    """Changes one byte in the middle of the file (a hex digit stays a hex digit)."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2
    if path.suffix == ".hex":
        while chr(data[i]) not in "0123456789abcdef":
            i += 1
        data[i] = ord("1") if chr(data[i]) != "1" else ord("2")
    else:
        data[i] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 8])


def _edit_rows(manifest: Path):
    m = json.loads(manifest.read_text())
    m["layers"][0]["rows"] += 1
    manifest.write_text(json.dumps(m, indent=1))


CORRUPTIONS = {
    "stream.bin byte": (lambda d: _corrupt_byte(d / "stream.bin"), "stream.bin"),
    "stream.hex byte": (lambda d: _corrupt_byte(d / "stream.hex"), "stream.hex"),
    "arrays.npz byte": (lambda d: _corrupt_byte(d / "arrays.npz"), "arrays.npz"),
    "stream.bin truncated": (lambda d: _truncate(d / "stream.bin"), "stream.bin"),
    "manifest rows": (lambda d: _edit_rows(d.parents[1] / "manifest.json"), "manifest.json"),
}


@pytest.mark.parametrize("what", list(CORRUPTIONS))
def test_corrupted_image_rejected(tmp_path, what):
    cfg = CONFIGS["b128"]
    images = make_images(tmp_path, cfg, [("ssvq-k16-d4", 5, 9)], seed=1)
    layer_dir = next((images / "layers").iterdir())
    corrupt, names = CORRUPTIONS[what]
    corrupt(layer_dir)
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "ssvq.app.cli", "sim", "--images", str(images),
                        "--simulator", "icarus", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode != 0, p.stdout + p.stderr
    assert names in p.stderr, p.stderr
    if what == "manifest rows":
        assert "rows" in p.stderr or "sections" in p.stderr, p.stderr
    assert not list(out.rglob("result.json")) and not (out / "sim_summary.json").exists()


def test_unknown_layer_rejected(tmp_path):
    images = make_images(tmp_path, CONFIGS["b128"], [("vq-k16-d4", 3, 5)], seed=1)
    p = subprocess.run([sys.executable, "-m", "ssvq.app.cli", "sim", "--images", str(images),
                        "--layers", "nope", "--simulator", "icarus", "--out",
                        str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 2 and "nope" in p.stderr, p.stderr
    assert not (tmp_path / "out" / "sim_summary.json").exists()


# ------------------------------------------------ harness pieces, no simulator
def test_scoreboard_flags_every_kind_of_error():
    from sim.golden import timing
    from ssvq.reference import output_beats
    from sim.tb.scoreboard import Scoreboard

    cfg = CONFIGS["default"]
    rng = np.random.default_rng(0)
    y = rng.integers(-128, 128, 21).astype(np.int8)        # 3 beats, last one padded
    t = timing(cfg, LayerConfig.parse("vq-k256-d4"), 21, 50)
    beats = output_beats(y, cfg)

    def feed(values, cycles, counters=None):
        sb = Scoreboard(cfg, "x", "vq", 21, 50, y, list(t.out_cycles), t.counters, True)
        sb.header_cycle = 100
        for v, c in zip(values, cycles):
            sb.on_beat(v, 100 + c)
        cyc = cycles[-1] + 1
        res = sb.check_counters(counters or t.counters, cyc, 0, False)
        return sb, res

    out_cycles = list(t.out_cycles)
    sb, (oc, cm, probs) = feed(beats, out_cycles)
    assert sb.summary()["bit_exact"] and oc and cm and not probs
    assert (sb.outputs() == y).all()
    # one wrong value
    bad = list(beats)
    bad[1] ^= 0xFF << 16
    sb, _ = feed(bad, out_cycles)
    s = sb.summary()
    assert not s["bit_exact"] and s["beat_mismatches"] == 1 and s["mismatches"] == 1
    assert "output beat 1 (rows 8..15)" in sb.messages[0] and "differing rows [10]" in sb.messages[0]
    # non-zero padding in the last beat
    bad = list(beats)
    bad[2] |= 0x7F << 56
    sb, _ = feed(bad, out_cycles)
    assert sb.padding_errors == 1 and "padding rows [23]" in sb.messages[0]
    # unresolved bits, an extra beat, a missing beat
    sb, _ = feed([beats[0], "x" * 64, beats[2]], out_cycles)
    assert sb.summary()["beat_mismatches"] == 1 and "unresolved" in sb.messages[0]
    sb, _ = feed(beats + [0], out_cycles + [out_cycles[-1] + 1])
    assert sb.summary()["extra_beats"] == 1 and not sb.summary()["bit_exact"]
    sb, _ = feed(beats[:2], out_cycles[:2])
    assert sb.summary()["missing_beats"] == 1 and not sb.summary()["bit_exact"]
    # a beat one cycle late, and a wrong counter
    late = list(out_cycles)
    late[1] += 1
    sb, (oc, _, _) = feed(beats, late)
    assert oc is False and sb.timing_mismatches == 1
    wrong = dict(t.counters, weights=t.counters["weights"] + 1)
    sb, (_, cm, probs) = feed(beats, out_cycles, wrong)
    assert cm is False and any("cnt_weights" in p for p in probs)


def test_load_beats_hex_and_npy_agree(tmp_path):
    from ssvq.image import beats_to_hex
    from sim.tb.test_accel import load_beats

    for bus in (64, 128):
        b = np.random.default_rng(bus).integers(0, 256, (7, bus // 8)).astype(np.uint8)
        np.save(tmp_path / "b.npy", b)
        (tmp_path / "b.hex").write_text(beats_to_hex(b))
        (tmp_path / "b.bin").write_bytes(b.tobytes())
        a, h = load_beats(str(tmp_path / "b.npy"), bus), load_beats(str(tmp_path / "b.hex"), bus)
        assert a == h == load_beats(str(tmp_path / "b.bin"), bus)
        assert a == [int.from_bytes(r.tobytes(), "little") for r in b]
