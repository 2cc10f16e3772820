"""Cost model (sim.cost) and report (sim.report) checks.

Expected numbers are worked out by hand here from the format's documented
rules (compress/image.py, hw/config.py, docs/ARCH.md), not by calling the code
under test."""
from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest

from compress.image import LayerImage, pack_layer, write_images
from hw.config import AccelConfig
from sim import golden
from sim.cost import (STREAMS, bits_per_weight, compare, layer_cost, minilm_layers,
                      model_cost)

SMALL = dict(k=16, d=4, mults=16, bus=64)

# ------------------------------------------------------------------ by hand
# Small config k=16, d=4, mults=16, bus=64: lanes = 16/4 = 4, code = log2(16) = 4 bits.
# Layer 5 x 20: 20 cols -> ceil(20/16) = 2 groups per row (32 padded cols), 10 groups.
#   header: one 64-bit record = 1 beat
#   codebook: 16 x 4 x 8 bits = 512 bits = 8 beats (vq, ssvq)
#   params: 5 rows x 64 bits = 5 beats;  acts: 32 x 8 bits = 4 beats;  out: 5 x 8 bits -> 1 beat
#   ssvq group: 4 lanes x 4-bit codes = 16 bits + 16 sign bits; a block holds the fewest groups
#     that fill whole beats: 64/16 = 4 groups -> 1 code beat + 1 sign beat; ceil(10/4) = 3 blocks
#   vq: the same without sign beats;  int8 group: 16 x 8 = 128 bits = 2 beats, 1 group/block
# Cycles (ARCH.md): s = 1 + load beats; block i reaches compute at s + B + i*max(B, N); its
# groups issue at +1..+N; a row's output beat is accepted 9 cycles after its last group;
# cycles = last output cycle + 1.
#   ssvq: s = 1+8+5+4 = 18, B=2, N=4, last group 9 = block 2 slot 1: 18+2+2*4+2 = 30, +9+1 = 40
#   vq:   s = 18, B=1, N=4: 18+1+8+2 = 29 -> 39
#   int8: s = 1+5+4 = 10, B=2, N=1, last group 9 = block 9: 10+2+9*2+1 = 31 -> 41
# Config k=16, d=4, mults=16, bus=128, layer 3 x 40: 3 groups/row (48 cols), 9 groups.
#   header 1, codebook 512/128 = 4, params 192/128 -> 2, acts 384/128 = 3, out 24 bits -> 1
#   ssvq: 128/16 = 8 groups/block, 1 code + 1 sign beat, ceil(9/8) = 2 blocks
#   int8: 128 bits/group = 1 beat, 9 blocks
#   ssvq: s = 1+4+2+3 = 10, B=2, N=8, last group 8 = block 1 slot 0: 10+2+8+1 = 21 -> 31
#   int8: s = 1+2+3 = 6, B=1, N=1: 6+1+8+1 = 16 -> 26
BY_HAND = [
    # (cfg, mode, rows, cols, beats{header,codebook,params,acts,codes,signs,weights,out}, cycles)
    (dict(SMALL), "ssvq", 5, 20, (1, 8, 5, 4, 3, 3, 0, 1), 40),
    (dict(SMALL), "vq", 5, 20, (1, 8, 5, 4, 3, 0, 0, 1), 39),
    (dict(SMALL), "int8", 5, 20, (1, 0, 5, 4, 0, 0, 20, 1), 41),
    (dict(SMALL, bus=128), "ssvq", 3, 40, (1, 4, 2, 3, 2, 2, 0, 1), 31),
    (dict(SMALL, bus=128), "int8", 3, 40, (1, 0, 2, 3, 0, 0, 9, 1), 26),
]


@pytest.mark.parametrize("cfgd,mode,rows,cols,beats,cycles", BY_HAND)
def test_layer_cost_by_hand(cfgd, mode, rows, cols, beats, cycles):
    cfg = AccelConfig(**cfgd)
    bus = cfgd["bus"]
    lc = layer_cost(cfg, mode, rows, cols, name="x")
    want = dict(zip(STREAMS, (b * bus for b in beats)))
    assert lc.bits == want
    assert lc.total == sum(want.values())
    assert lc.cycles == cycles
    weight_side = want["codebook"] + want["codes"] + want["signs"] + want["weights"] + 16 * rows
    assert lc.weight_side_bits == weight_side
    assert lc.bits_per_weight == pytest.approx(weight_side / (rows * cols))
    assert bits_per_weight(cfg, mode, rows, cols) == pytest.approx(weight_side / (rows * cols))
    assert lc.speedup_bound == pytest.approx(8 * rows * cols / weight_side)


def test_small_bits_per_weight_values():
    cfg = AccelConfig(**SMALL)
    # (512 + 3*64 + 3*64 + 16*5) / 100,  (512 + 3*64 + 80) / 100,  (20*64 + 80) / 100
    assert bits_per_weight(cfg, "ssvq", 5, 20) == pytest.approx(9.76)
    assert bits_per_weight(cfg, "vq", 5, 20) == pytest.approx(7.84)
    assert bits_per_weight(cfg, "int8", 5, 20) == pytest.approx(13.6)


def test_ssvq_k256_d8_bits_per_weight_384():
    cfg = AccelConfig(k=256, d=8, mults=32, bus=64)
    rows = cols = 384
    codebook = 256 * 8 * 8                 # K x D x 8-bit codewords
    codes = rows * (cols // 8) * 8         # one 8-bit code per 8 weights: 1 bit/weight
    signs = rows * cols                    # one sign bit per weight
    scale = 16 * rows
    want = (codebook + codes + signs + scale) / (rows * cols)
    assert want == pytest.approx(2 + codebook / (rows * cols) + 16 / 384)
    assert bits_per_weight(cfg, "ssvq", rows, cols) == pytest.approx(want)
    assert layer_cost(cfg, "ssvq", rows, cols).bits_per_weight == pytest.approx(want)
    assert bits_per_weight(cfg, "int8", rows, cols) == pytest.approx(8 + 16 / 384)


def test_beats_are_golden_counters():
    cfg = AccelConfig()
    for mode in ("int8", "vq", "ssvq"):
        for rows, cols in ((384, 384), (1536, 384), (384, 1536), (7, 33)):
            lc = layer_cost(cfg, mode, rows, cols)
            c = golden.timing(cfg, mode, rows, cols).counters
            assert lc.beats == c
            assert lc.cycles == c["cycles"]
            assert lc.outputs == c["out"] * cfg.bus
            for s in STREAMS:
                if s != "outputs":
                    assert getattr(lc, s) == c[s] * cfg.bus


def _rand_image(cfg, name, mode, rows, cols, rng):
    kw = dict(bias=rng.integers(-1000, 1000, rows).astype(np.int32),
              mult=rng.integers(1, 1 << 16, rows).astype(np.uint16),
              shift=rng.integers(8, 30, rows).astype(np.uint8),
              act=rng.integers(-128, 128, cols).astype(np.int8))
    if mode == "int8":
        return LayerImage(name, mode, rows, cols,
                          weights=rng.integers(-128, 128, (rows, cols)).astype(np.int8), **kw)
    v = -(-cols // cfg.d)
    cb = (rng.integers(0, 256, (cfg.k, cfg.d)).astype(np.uint8) if mode == "ssvq"
          else rng.integers(-128, 128, (cfg.k, cfg.d)).astype(np.int8))
    return LayerImage(name, mode, rows, cols, codebook=cb,
                      codes=rng.integers(0, cfg.k, (rows, v)).astype(np.int32),
                      signs=(rng.integers(0, 2, (rows, cols)).astype(np.uint8)
                             if mode == "ssvq" else None), **kw)


@pytest.mark.parametrize("cfgd", [SMALL, dict(SMALL, bus=128), dict(k=256, d=8, mults=32,
                                                                     bus=64)])
@pytest.mark.parametrize("mode", ["int8", "vq", "ssvq"])
def test_bits_equal_packed_image_sections(cfgd, mode):
    """The streams the cost model charges are exactly the sections a packed image has."""
    cfg = AccelConfig(**cfgd)
    rng = np.random.default_rng(1)
    for rows, cols in ((5, 20), (3, 40), (9, 70)):
        beats, sections = pack_layer(_rand_image(cfg, "l", mode, rows, cols, rng), cfg)
        lc = layer_cost(cfg, mode, rows, cols)
        n = {s: c for s, (_, c) in sections.items()}
        for s in ("header", "codebook", "params", "acts"):
            assert getattr(lc, s) == n[s] * cfg.bus, s
        assert lc.codes + lc.signs + lc.weights == n["weights"] * cfg.bus
        assert lc.total - lc.outputs == len(beats) * cfg.bus
        assert lc.outputs == -(-rows * 8 // cfg.bus) * cfg.bus


def test_minilm_speedup_at_least_3():
    cfg = AccelConfig(k=256, d=8, mults=32, bus=64)
    layers = minilm_layers()
    assert len(layers) == 36
    assert {(r, c) for _, r, c in layers} == {(384, 384), (1536, 384), (384, 1536)}
    cmp = compare(cfg, layers, "ssvq")
    for lc in cmp.layers:
        assert lc.speedup >= 3.0, lc.name
        assert lc.speedup == pytest.approx(lc.base.cycles / lc.cost.cycles)
        assert lc.speedup <= lc.speedup_bound, lc.name
    assert cmp.speedup == pytest.approx(sum(l.base.cycles for l in cmp.layers)
                                        / sum(l.cost.cycles for l in cmp.layers))
    assert cmp.speedup >= 3.0
    # whole-model bits per weight from first principles: every layer streams its own
    # codebook; codes + signs are 2 bits/weight; 16 bits of scale per row
    nw = sum(r * c for _, r, c in layers)
    ws = 36 * 256 * 8 * 8 + 2 * nw + 16 * sum(r for _, r, _ in layers)
    assert cmp.bits_per_weight == pytest.approx(ws / nw)
    assert cmp.speedup_bound == pytest.approx(8 * nw / ws)


def test_model_cost_totals_and_mode_override():
    cfg = AccelConfig(**SMALL)
    layers = [("a", 5, 20), ("b", 3, 40), ("c", 16, 16)]
    mc = model_cost(cfg, layers, "ssvq")
    per = [layer_cost(cfg, "ssvq", r, c, n) for n, r, c in layers]
    for s in STREAMS:
        assert mc.bits[s] == sum(getattr(p, s) for p in per)
    assert mc.cycles == sum(p.cycles for p in per)
    assert mc.n_weights == 100 + 120 + 256
    mixed = model_cost(cfg, [("a", 5, 20, "int8"), ("b", 3, 40)], "ssvq")
    assert [l.mode for l in mixed.layers] == ["int8", "ssvq"] and mixed.mode == "mixed"
    same = compare(cfg, layers, "int8")
    assert same.speedup == pytest.approx(1.0)


# ---------------------------------------------------------------------- report
LAYERS = [("blk.0.attn.q", 16, 16), ("blk.0.ffn.up", 48, 16), ("blk.0.ffn.down", 16, 48),
          ("blk.1.attn.q", 16, 16)]


def _make_images(tmp: Path, cfgd=SMALL, layers=LAYERS):
    cfg = AccelConfig(**cfgd)
    rng = np.random.default_rng(0)
    out = {}
    for mode in ("ssvq", "int8"):
        out[mode] = write_images(tmp / f"img_{mode}", cfg,
                                 [_rand_image(cfg, n, mode, r, c, rng) for n, r, c in layers])
    return cfg, out


def _write_results(tmp: Path, imgdir: Path, cfg, mode, which=None, tweak=None):
    man = json.loads((imgdir / "manifest.json").read_text())
    sim = tmp / f"sim_{mode}"
    for i, e in enumerate(man["layers"]):
        if which is not None and i not in which:
            continue
        c = golden.timing(cfg, mode, e["rows"], e["cols"]).counters
        r = dict(name=e["name"], mode=mode, rows=e["rows"], cols=e["cols"],
                 simulator="verilator", seed=1, stall_prob=0.0, bit_exact=True,
                 cycles_rtl=c["cycles"], cycles_model=c["cycles"], counters_rtl=dict(c),
                 counters_model=dict(c), out_cycles_match=True, counters_match=True,
                 passed=True, timing_checked=True)
        if tweak:
            tweak(i, r)
        d = sim / Path(e["dir"]).name
        d.mkdir(parents=True, exist_ok=True)
        (d / "result.json").write_text(json.dumps(r))
    return sim


def _args(images, out, baseline=None, sim=None, baseline_sim=None):
    return types.SimpleNamespace(images=str(images), out=str(out),
                                 baseline=None if baseline is None else str(baseline),
                                 sim=None if sim is None else str(sim),
                                 baseline_sim=None if baseline_sim is None else str(baseline_sim))


LAYER_FIELDS = ("name", "rows", "cols", "method", "bits_per_weight", "simulated", "bit_exact",
                "cycles_rtl", "cycles_model", "baseline_cycles_rtl", "baseline_cycles_model",
                "speedup", "speedup_bound", "bits", "baseline_bits")
TOP_FIELDS = ("config", "method", "speedup", "speedup_bound", "bits_per_weight", "totals",
              "layers_simulated", "all_bit_exact", "model_matches_rtl", "layers")


def test_report_full(tmp_path):
    from sim.report import report_cmd
    cfg, imgs = _make_images(tmp_path)
    sim = _write_results(tmp_path, imgs["ssvq"], cfg, "ssvq", which={0, 1, 2})
    bsim = _write_results(tmp_path, imgs["int8"], cfg, "int8", which={0, 2})
    out = tmp_path / "rep"
    assert report_cmd(_args(imgs["ssvq"], out, imgs["int8"], sim, bsim)) == 0
    s = json.loads((out / "summary.json").read_text())
    for f in TOP_FIELDS:
        assert f in s, f
    assert s["method"] == "ssvq" and s["config"]["bus"] == 64
    assert s["layers_simulated"] == 3 and s["baseline_layers_simulated"] == 2
    assert s["all_bit_exact"] is True and s["model_matches_rtl"] is True
    assert set(s["totals"]) == {"ssvq", "int8"}
    by = {r["name"]: r for r in s["layers"]}
    assert list(by) == [n for n, _, _ in LAYERS]
    for r in s["layers"]:
        for f in LAYER_FIELDS:
            assert f in r, f
        assert set(r["bits"]) == set(STREAMS) and set(r["baseline_bits"]) == set(STREAMS)
        lc = layer_cost(cfg, "ssvq", r["rows"], r["cols"])
        bl = layer_cost(cfg, "int8", r["rows"], r["cols"])
        assert r["bits"] == lc.bits and r["baseline_bits"] == bl.bits
        assert r["cycles_model"] == lc.cycles and r["baseline_cycles_model"] == bl.cycles
        assert r["speedup"] == pytest.approx(bl.cycles / lc.cycles)
        assert r["speedup_bound"] == pytest.approx(8 / lc.bits_per_weight)
    assert by["blk.0.attn.q"]["cycles_rtl"] == by["blk.0.attn.q"]["cycles_model"]
    assert by["blk.0.attn.q"]["cycles_source"] == "rtl"
    assert by["blk.0.ffn.up"]["baseline_cycles_rtl"] is None
    assert by["blk.0.ffn.up"]["cycles_source"] == "model"
    assert by["blk.1.attn.q"]["simulated"] is False and by["blk.1.attn.q"]["bit_exact"] is None
    assert by["blk.1.attn.q"]["cycles_rtl"] is None
    tot_m = sum(r["cycles_model"] for r in s["layers"])
    tot_b = sum(r["baseline_cycles_model"] for r in s["layers"])
    assert s["speedup"] == pytest.approx(tot_b / tot_m)
    for f in ("speedup_per_layer.png", "bits_per_stream.png", "model_vs_rtl_cycles.png",
              "report.md"):
        p = out / f
        assert p.is_file() and p.stat().st_size > 1000, f
        if f.endswith(".png"):
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    for n, _, _ in LAYERS:
        assert n in md
    assert "speedup_per_layer.png" in md and "bits_per_stream.png" in md
    assert "VERIFICATION FAILED" not in md
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rep")]


def test_report_via_cli_main(tmp_path):
    from ssvq.cli import main
    cfg, imgs = _make_images(tmp_path)
    sim = _write_results(tmp_path, imgs["ssvq"], cfg, "ssvq")
    assert main(["report", "--images", str(imgs["ssvq"]), "--sim", str(sim),
                 "--out", str(tmp_path / "r")]) == 0
    assert main(["report", "--images", str(imgs["ssvq"]), "--sim", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "r2")]) == 2
    assert not (tmp_path / "r2").exists()


def test_report_not_bit_exact_fails(tmp_path):
    from sim.report import report_cmd

    def bad(i, r):
        if i == 1:
            r["bit_exact"] = False
            r["passed"] = False
    cfg, imgs = _make_images(tmp_path)
    sim = _write_results(tmp_path, imgs["ssvq"], cfg, "ssvq", tweak=bad)
    out = tmp_path / "rep"
    assert report_cmd(_args(imgs["ssvq"], out, sim=sim)) == 1
    s = json.loads((out / "summary.json").read_text())
    assert s["all_bit_exact"] is False and s["passed"] is False
    assert s["model_matches_rtl"] is True
    assert any("blk.0.ffn.up" in f for f in s["failures"])
    assert s["layers"][1]["bit_exact"] is False
    assert "VERIFICATION FAILED" in (out / "report.md").read_text()


def _bad_counter(counter, layer=2):
    def bad(i, r):
        if i == layer:
            r["counters_rtl"][counter] += 1
            if counter == "cycles":
                r["cycles_rtl"] += 1
    return bad


@pytest.mark.parametrize("counter", ["codes", "cycles"])
def test_report_counter_mismatch_fails(tmp_path, counter):
    from sim.report import report_cmd
    cfg, imgs = _make_images(tmp_path)
    sim = _write_results(tmp_path, imgs["ssvq"], cfg, "ssvq", tweak=_bad_counter(counter))
    out = tmp_path / "rep"
    assert report_cmd(_args(imgs["ssvq"], out, sim=sim)) == 1
    s = json.loads((out / "summary.json").read_text())
    assert s["model_matches_rtl"] is False and s["all_bit_exact"] is True
    assert len(s["mismatches"]) == 1
    assert "blk.0.ffn.down" in s["mismatches"][0] and counter in s["mismatches"][0]
    assert s["layers"][2]["model_matches_rtl"] is False
    assert s["layers"][0]["model_matches_rtl"] is True
    assert "MISMATCH" in (out / "report.md").read_text()


def test_every_counter_is_cross_checked(tmp_path):
    from sim.report import build_summary
    cfg, imgs = _make_images(tmp_path)
    for counter in ("header", "codebook", "params", "acts", "codes", "signs", "weights", "out",
                    "cycles"):
        sim = _write_results(tmp_path / counter, imgs["ssvq"], cfg, "ssvq",
                             tweak=_bad_counter(counter, layer=1))
        s = build_summary(imgs["ssvq"], sim_dir=sim)
        assert not s["passed"] and s["model_matches_rtl"] is False, counter
        assert len(s["mismatches"]) == 1 and counter in s["mismatches"][0], counter
        assert "blk.0.ffn.up" in s["mismatches"][0]


def test_report_baseline_mismatch_fails(tmp_path):
    from sim.report import report_cmd

    def bad(i, r):
        r["counters_rtl"]["weights"] -= 1
    cfg, imgs = _make_images(tmp_path)
    bsim = _write_results(tmp_path, imgs["int8"], cfg, "int8", which={3}, tweak=bad)
    assert report_cmd(_args(imgs["ssvq"], tmp_path / "rep", imgs["int8"],
                            baseline_sim=bsim)) == 1
    s = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert s["layers"][3]["baseline_model_matches_rtl"] is False
    assert "blk.1.attn.q" in s["mismatches"][0]


def test_report_stalled_run_compares_beats_only(tmp_path):
    from sim.report import report_cmd

    def stalled(i, r):
        r["stall_prob"] = 0.3
        r["counters_rtl"]["stall"] = 40
        r["counters_rtl"]["cycles"] += 40
        r["cycles_rtl"] += 40
        r["timing_checked"] = False
    cfg, imgs = _make_images(tmp_path)
    sim = _write_results(tmp_path, imgs["ssvq"], cfg, "ssvq", tweak=stalled)
    bsim = _write_results(tmp_path, imgs["int8"], cfg, "int8")
    out = tmp_path / "rep"
    assert report_cmd(_args(imgs["ssvq"], out, imgs["int8"], sim, bsim)) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["model_matches_rtl"] is True
    for r in s["layers"]:
        assert r["cycles_source"] == "model"
        assert r["cycles_rtl"] == r["cycles_model"] + 40
        assert r["speedup"] == pytest.approx(r["baseline_cycles_model"] / r["cycles_model"])


def test_report_without_sim_or_baseline(tmp_path):
    from sim.report import write_report
    cfg, imgs = _make_images(tmp_path)
    out = tmp_path / "rep"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    s = write_report(imgs["ssvq"], out)
    assert not (out / "stale.txt").exists()
    assert s["baseline_source"] == "cost model"
    assert s["layers_simulated"] == 0 and s["all_bit_exact"] is None
    assert s["model_matches_rtl"] is None and s["passed"] is True
    assert (out / "speedup_per_layer.png").is_file() and (out / "bits_per_stream.png").is_file()
    assert not (out / "model_vs_rtl_cycles.png").exists()
    cmp = compare(cfg, LAYERS, "ssvq")
    assert s["speedup"] == pytest.approx(cmp.speedup)
    assert s["bits_per_weight"] == pytest.approx(cmp.bits_per_weight)
    assert s["totals"]["ssvq"]["codes"] == cmp.cost.bits["codes"]
    assert s["totals"]["int8"]["weights"] == cmp.base.bits["weights"]


def test_report_failure_leaves_no_half_report(tmp_path, monkeypatch):
    import sim.report as rep
    cfg, imgs = _make_images(tmp_path)
    out = tmp_path / "rep"
    rep.write_report(imgs["ssvq"], out)
    before = sorted(p.name for p in out.iterdir())

    def boom(*a, **k):
        raise RuntimeError("plot failed")
    monkeypatch.setattr(rep, "plot_bits", boom)
    with pytest.raises(RuntimeError):
        rep.write_report(imgs["ssvq"], out)
    assert sorted(p.name for p in out.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(RuntimeError):
        rep.write_report(imgs["ssvq"], tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


def test_report_baseline_shape_mismatch_is_user_error(tmp_path):
    from ssvq.cli import UserError
    from sim.report import write_report
    cfg, imgs = _make_images(tmp_path)
    rng = np.random.default_rng(3)
    other = write_images(tmp_path / "other", cfg,
                         [_rand_image(cfg, n, "int8", r + 1, c, rng) for n, r, c in LAYERS])
    with pytest.raises(UserError, match="blk.0.attn.q"):
        write_report(imgs["ssvq"], tmp_path / "rep", baseline_images_dir=other)
    assert not (tmp_path / "rep").exists()


def test_report_minilm_shapes_default_config(tmp_path):
    """One layer of each MiniLM shape at K=256, D=8, bus=64, mults=32."""
    from sim.report import write_report
    layers = [("encoder.layer.0.attention.self.query", 384, 384),
              ("encoder.layer.0.intermediate.dense", 1536, 384),
              ("encoder.layer.0.output.dense", 384, 1536)]
    cfg = AccelConfig(k=256, d=8, mults=32, bus=64)
    rng = np.random.default_rng(5)
    img = write_images(tmp_path / "img", cfg,
                       [_rand_image(cfg, n, "ssvq", r, c, rng) for n, r, c in layers])
    sim = _write_results(tmp_path, img, cfg, "ssvq")
    s = write_report(img, tmp_path / "rep", sim_dir=sim)
    assert s["passed"] and s["layers_simulated"] == 3
    assert s["shapes"] == {"384x384": 1, "1536x384": 1, "384x1536": 1}
    for r in s["layers"]:
        assert r["speedup"] >= 3.0
        assert r["cycles_source"] == "model"      # the int8 baseline was not simulated
    assert s["speedup"] >= 3.0
    q = s["layers"][0]
    assert q["bits_per_weight"] == pytest.approx(2 + 16384 / 384 ** 2 + 16 / 384)


def test_crashed_simulation_result_fails(tmp_path):
    """A result the runner writes when the simulator produced nothing."""
    from sim.report import build_summary

    def crashed(i, r):
        if i == 0:
            for k in ("cycles_rtl", "cycles_model", "counters_rtl", "counters_model",
                      "out_cycles_match", "counters_match", "timing_checked"):
                r.pop(k)
            r.update(passed=False, bit_exact=False, error="no result from the simulator")
    cfg, imgs = _make_images(tmp_path)
    sim = _write_results(tmp_path, imgs["ssvq"], cfg, "ssvq", tweak=crashed)
    s = build_summary(imgs["ssvq"], sim_dir=sim)
    assert not s["passed"] and s["all_bit_exact"] is False
    assert any("no result from the simulator" in f for f in s["failures"])
    assert s["layers"][0]["cycles_rtl"] is None and s["layers"][0]["cycles_source"] == "model"
