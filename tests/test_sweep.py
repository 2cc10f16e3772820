"""`ssvq sweep` (ssvq/app/sweep.py) and the energy table (sim/energy.py): grid parsing
and its errors, one point's cost and energy against a hand computation, resume from
the per-point cache, local vs Ray backends, Pareto selection, and the cost model of two
sweep points against the RTL (Icarus)."""
import json
from pathlib import Path

import numpy as np
import pytest

from ssvq.app import sweep
from ssvq.app.cli import main
from ssvq.config import AccelConfig, LayerConfig
from ssvq.errors import ConfigError

# the synthesis stand-in by import path, as a worker process or Ray task resolves it
# (pytest itself may import this file under another module name)
HERE = "tests.test_sweep"
CALLS = []


def calls() -> list:
    import importlib
    return importlib.import_module(HERE).CALLS


def fake_synth(cfg, out, device="auto", progress=print, pnr=False, freq_mhz=100.0, seed=1):
    """Stands in for hw.synth.synthesize: numbers that depend on the build only."""
    CALLS.append(cfg)
    res = {"LUT4": 1000 + 40 * cfg.mults + cfg.kmax + 7 * len(cfg.modes) + cfg.bus,
           "TRELLIS_FF": 500 + 10 * cfg.mults, "MULT18X18D": cfg.mults + 2, "DP16KD": 4,
           "CCU2C": 0, "lut_sites": 0}
    s = {"resources": res, "wall_s": {"total": 0.0}}
    if pnr:
        s["fmax_mhz"] = 50.0 + cfg.mults
    return s


def no_synth(*a, **k):
    raise AssertionError("synthesis ran although every point was cached")


# ------------------------------------------------------------------ grid
def test_grid_product_points_base_dedupe_skip():
    pts, skipped = sweep.parse_grid({"kmax": [16, 256], "mults": [8, 32]}, "g.json")
    assert [(p.kmax, p.mults) for p in pts] == [(16, 8), (16, 32), (256, 8), (256, 32)]
    assert all(p.d_set == (4, 8) for p in pts) and not skipped
    pts, _ = sweep.parse_grid([{"kmax": 64}, {"kmax": 64}, {"bus": 128}], "g.json")
    assert [(p.kmax, p.bus) for p in pts] == [(64, 64), (256, 128)]       # duplicate dropped
    pts, skipped = sweep.parse_grid(
        {"base": {"max_rows": 2048}, "grid": {"d_set": [[8], [16]], "mults": [8, 32]},
         "points": [{"modes": ["int"]}]}, "g.json")
    # d 16 with 8 multipliers is invalid only as a combination: skipped and listed
    assert [(p.d_set, p.mults) for p in pts[:3]] == [((8,), 8), ((8,), 32), ((16,), 32)]
    assert pts[3].modes == ("int",) and all(p.max_rows == 2048 for p in pts)
    assert len(skipped) == 1 and skipped[0]["point"] == {"d_set": [16], "mults": 8}
    assert "every d must be at most mults" in skipped[0]["reason"]


@pytest.mark.parametrize("data, needle", [
    ({"kmaxx": [16]}, "grid.kmaxx: unknown field; expected one of"),
    ({"kmax": 16}, "grid.kmax: expected a non-empty list of values, found 16"),
    ({"kmax": []}, "grid.kmax: expected a non-empty list of values, found []"),
    ({"kmax": [16, 100]}, "grid.kmax[1]: 100 makes no valid build (accelerator config: kmax: "
                          "expected a power of two, found 100)"),
    ({"d_set": [[64]], "mults": [8, 32]}, "grid.d_set[0]: [64] makes no valid build"),
    ({"modes": [["int", "fp"]]}, "modes: expected distinct names from"),
    ({"grid": {"bus": [32]}}, "grid.bus[0]: 32 makes no valid build (accelerator config: bus: "
                              "expected at least 64 bits, found 32)"),
    ({"points": [{"mults": "32"}]}, "points[0]: mults: expected an integer, found '32'"),
    ({"points": [3]}, "points[0]: expected an object of config fields, found int"),
    ({"base": {"kmax": 3}, "grid": {}}, "base: accelerator config: kmax"),
    ({"grid": {}, "extra": 1}, "unknown key(s) ['extra']; expected base, grid, points"),
    ("kmax", "expected an object (field -> list of values) or a list of points, found str"),
    ({"kmax": [2 ** i for i in range(1, 13)], "mults": [8, 16, 32, 64, 128],
      "bus": [64, 128, 256, 512, 1024, 2048], "modes": [["int"], ["ssvq"]]},
     "expected at most 512 points, found 720"),
    ({"grid": {}}, "expected at least one valid point, found none"),
])
def test_grid_errors(data, needle):
    with pytest.raises(ConfigError) as e:
        sweep.parse_grid(data, "g.json")
    assert str(e.value).startswith("g.json: ") and needle in str(e.value), str(e.value)


def _cli(tmp_path, capsys, grid, *extra):
    g = tmp_path / "grid.json"
    g.write_text(grid if isinstance(grid, str) else json.dumps(grid))
    out = tmp_path / "out"
    rc = main(["sweep", "--grid", str(g), "--out", str(out), "--work",
               str(tmp_path / "work"), *extra])
    err = capsys.readouterr().err.strip()
    return rc, err, g, out


@pytest.mark.parametrize("grid, extra, needle", [
    ('{"kmax": [16,', (), "expected JSON, found a parse error"),
    ({"kmax": [100]}, (), "grid.kmax[0]: 100 makes no valid build"),
    ({"mults": [32]}, ("--plan", "ssvq-k256"), "--plan: expected a name like int4"),
    ({"mults": [32]}, ("--jobs", "0"), "--jobs: expected a number of workers >= 1, found 0"),
    ({"mults": [32]}, ("--min-cosine", "2"), "--min-cosine: expected 0..1, found 2.0"),
    ({"mults": [32]}, ("--quality", "/nonexistent/summary.json"),
     "/nonexistent/summary.json: expected a quality summary.json, found no such file"),
    ({"mults": [32]}, ("--model", "digits"), "--model: expected minilm"),
])
def test_cli_errors_exit_2_one_line_nothing_written(tmp_path, capsys, grid, extra, needle):
    rc, err, g, out = _cli(tmp_path, capsys, grid, *extra)
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("ssvq sweep: error: ") and needle in err, err
    if "grid" in needle or "JSON" in needle:
        assert str(g) in err
    assert not out.exists() and not (tmp_path / "work").exists()


def test_cli_bad_quality_field(tmp_path, capsys):
    q = tmp_path / "q.json"
    q.write_text(json.dumps({"rows": [{"config": "int8", "mean_cosine": "high"}]}))
    rc, err, _, out = _cli(tmp_path, capsys, {"mults": [32]}, "--quality", str(q))
    assert rc == 2 and f"{q}: rows[0].mean_cosine: expected a number, found 'high'" in err
    assert not out.exists()


# ------------------------------------------------------------------ one point by hand
SMALL = [("l", 64, 64)]           # 64 x 64: two groups of 32 per row on the default build


def test_energy_counts_and_pj_by_hand():
    from sim import energy
    cfg = AccelConfig()                              # mults 32, bus 64
    # int8: header 2 beats, params 64 rows x 64 b = 64 beats, acts 2 groups x 256 b = 8,
    # weights 128 groups x 256 b = 512, out 64 x 8 b = 8 beats
    e = energy.layer_energy(cfg, LayerConfig.parse("int8"), 64, 64)
    assert e.counts == {"dram_bits": (2 + 64 + 8 + 512 + 8) * 64,
                        "sram_write_words": (4096 + 512) // 32,
                        "sram_read_words": (128 * 256 + 4096) // 32,
                        "macs": 4096, "coef_mults": 0, "codeword_adds": 0, "requants": 64}
    hand = (594 * 64 * 20 + (144 + 1152) * 5 + 4096 * (0.2 + 0.1) + 64 * (3.1 + 0.1))
    assert e.total_pj == pytest.approx(hand) == pytest.approx(768233.6)
    # ssvq K=16 D=8: codebook 16 x 64 b = 16 beats; a group is 4 codes x 4 b + 32 signs
    # = 48 b, 128 groups = 96 beats; each group reads 4 codewords of 64 b
    e = energy.layer_energy(cfg, LayerConfig.parse("ssvq-k16-d8"), 64, 64)
    assert e.counts["dram_bits"] == (2 + 16 + 64 + 8 + 96 + 8) * 64
    assert e.counts["sram_write_words"] == (1024 + 4096 + 512) // 32
    assert e.counts["sram_read_words"] == (32768 + 32768 + 4096) // 32
    assert e.total_pj == pytest.approx(12416 * 20 + (176 + 2176) * 5 + 1228.8 + 204.8)
    # additive, M=2 with 4-bit coefficients: two coefficient products per weight and
    # one codeword add
    e = energy.layer_energy(cfg, LayerConfig.parse("vq-k16-d8-m2-c4"), 64, 64)
    assert (e.counts["coef_mults"], e.counts["codeword_adds"]) == (8192, 4096)
    assert e.pj["decode"] == pytest.approx(8192 * 0.2 + 4096 * 0.03)
    assert e.counts["sram_read_words"] == (32768 + 2 * 32768 + 4096) // 32


def test_point_metrics_by_hand(tmp_path):
    from sim.golden import timing
    cfg = AccelConfig()
    opts = {"layers": [list(x) for x in SMALL * 3], "plan": ["int8"], "fixed": None,
            "quality": {"int8": {"mean_cosine": 0.99, "trained": False}}, "min_cosine": 0.9,
            "synth_opts": sweep.synth_options(False, f"{HERE}:fake_synth"), "clock_mhz": 125.0,
            "work": str(tmp_path)}
    r = sweep.evaluate_point(cfg.to_dict(), opts)
    m = r["metrics"]
    t = timing(cfg, LayerConfig.parse("int8"), 64, 64).counters
    assert t["weights"] == 512 and t["params"] == 64 and t["acts"] == 8 and t["out"] == 8
    assert m["cycles"] == 3 * t["cycles"] and m["weights"] == 3 * 4096
    assert m["weights_per_cycle"] == pytest.approx(4096 / t["cycles"])
    assert m["weights_per_s"] == pytest.approx(4096 / t["cycles"] * 125e6)
    assert m["token_us"] == pytest.approx(3 * t["cycles"] / 125.0)
    assert m["tokens_per_s"] == pytest.approx(125e6 / (3 * t["cycles"]))
    assert m["energy_pj"] == pytest.approx(3 * 768233.6)
    assert m["energy_uj_per_token"] == pytest.approx(3 * 768233.6e-6)
    assert m["bits_per_weight"] == pytest.approx((512 * 64 + 16 * 64) / 4096)
    assert r["fidelity"] == {"mean_cosine": 0.99, "trained": False}
    assert r["clock_source"].startswith("assumed") and r["synth"]["resources"]["LUT4"] > 0


def test_plan_choice():
    q = {"int8": {"mean_cosine": 0.999, "trained": False},
         "int4": {"mean_cosine": 0.98, "trained": True},
         "ssvq-k256-d8": {"mean_cosine": 0.94, "trained": True},
         "vq-k256-d4": {"mean_cosine": 0.88, "trained": True}}
    L = sweep.MINILM_LAYERS
    assert sweep.choose_plan(AccelConfig(), L, None, q, 0.9)["name"] == "ssvq-k256-d8"
    assert sweep.choose_plan(AccelConfig(), L, None, q, 0.95)["name"] == "int4"
    assert sweep.choose_plan(AccelConfig(kmax=64), L, None, q, 0.9)["name"] == "int4"
    # 16 multipliers, 128-bit bus: int8 and int4 take the same cycles (compute-bound),
    # int4 moves half the DRAM bits; SSVQ's codebook loads cost 1.3% more cycles
    assert sweep.choose_plan(AccelConfig(mults=16, bus=128), L, None, q, 0.9)["name"] == "int4"
    assert sweep.choose_plan(AccelConfig(modes=("vq",)), L, None, q, 0.9) is None
    assert sweep.choose_plan(AccelConfig(modes=("vq",)), L, None, q, 0.85)["name"] == "vq-k256-d4"
    plan = [LayerConfig.parse(n) for n in ("ssvq-k256-d8", "int8")]
    assert sweep.choose_plan(AccelConfig(d_set=(4,)), L, plan, q)["name"] == "int8"
    assert sweep.choose_plan(AccelConfig(), L, None, {}, 0.9)["name"] == "ssvq-k256-d8"  # ladder
    assert len(L) == 36 and sum(r * c for _, r, c in L) == 6 * (4 * 384 * 384 + 2 * 1536 * 384)


# ------------------------------------------------------------------ resume, backends
GRID = {"mults": [16, 32], "kmax": [16, 256]}


def _run(tmp_path, backend="local", jobs=1, synth=f"{HERE}:fake_synth", out="out", **kw):
    pts, _ = sweep.parse_grid(GRID, "grid")
    lines = []
    s = sweep.run_sweep(pts, tmp_path / out, layers=SMALL * 2, plan=[LayerConfig.parse("int4")],
                        backend=backend, jobs=jobs, work=tmp_path / "work", synth=synth,
                        progress=lines.append, **kw)
    return s, lines


def _numbers(s):
    return [(p["hash"], p["synth"]["resources"], p["metrics"]) for p in s["points"]]


def test_outputs_and_resume(tmp_path):
    calls().clear()
    s1, lines = _run(tmp_path)
    assert len(calls()) == 4 and len(lines) == 4
    assert lines[0].startswith("[1/4] ") and "ETA" in lines[0] and "elapsed" in lines[0]
    out = tmp_path / "out"
    for f in ("sweep.json", "sweep.md", "pareto_area.png", "pareto_energy.png"):
        assert (out / f).stat().st_size > 0
    assert len(list((out / "points").glob("*.json"))) == 4
    assert not list(out.glob(".*tmp*"))
    md = (out / "sweep.md").read_text()
    assert "100 MHz assumed (no --pnr; Fmax not measured)" in md and md.count("| 100* |") == 4
    assert json.loads((out / "sweep.json").read_text())["points"] == s1["points"]
    # second run: every point from the cache, no synthesis at all
    calls().clear()
    s2, lines = _run(tmp_path, synth=f"{HERE}:fake_synth")
    assert calls() == [] and all(p["cached"] for p in s2["points"])
    assert all("cached" in l for l in lines) and _numbers(s2) == _numbers(s1)
    # the cache key includes the synthesis function: another one misses every entry
    s_other, _ = _run(tmp_path, synth=f"{HERE}:no_synth", out="out")
    assert all(p["error"].startswith("synthesis failed: AssertionError")
               for p in s_other["points"])
    # a damaged cache entry is redone, the rest reused
    victim = sorted((out / "points").glob("*.json"))[0]
    victim.write_text("{")
    s3, _ = _run(tmp_path)
    assert len(calls()) == 1 and _numbers(s3) == _numbers(s1)


def test_pnr_clock(tmp_path):
    s, _ = _run(tmp_path, pnr=True)
    for p in s["points"]:
        assert p["metrics"]["clock_mhz"] == 50.0 + p["config"]["mults"]
        assert p["clock_source"] == "nextpnr Fmax"
    assert "clock: nextpnr Fmax." in (tmp_path / "out" / "sweep.md").read_text()


def test_no_plan_point_not_synthesised(tmp_path):
    calls().clear()
    pts, _ = sweep.parse_grid({"modes": [["int"], ["vq"]]}, "grid")
    s = sweep.run_sweep(pts, tmp_path / "o", layers=SMALL, plan=[LayerConfig.parse("int4")],
                        jobs=1, work=tmp_path / "w", synth=f"{HERE}:fake_synth",
                        progress=lambda m: None)
    assert len(calls()) == 1 and s["points"][1]["error"].startswith("no plan")
    assert s["pareto"]["area"] == [s["points"][0]["hash"]]


def test_local_processes_vs_ray(tmp_path):
    local, _ = _run(tmp_path, "local", jobs=2, out="local")
    ray = pytest.importorskip("ray", reason="ray is not importable: Ray backend untested")
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        remote, _ = _run(tmp_path, "ray", jobs=2, out="ray")
    finally:
        ray.shutdown()
    assert _numbers(remote) == _numbers(local)
    assert remote["pareto"] == local["pareto"]


# ------------------------------------------------------------------ Pareto
def test_pareto_hand_made():
    items = [(10, 5), (20, 9), (15, 4), (10, 3), (30, 9), (25, 12), (10, 5), (None, 50)]
    front = sweep.pareto(items, lambda x: x[0], lambda x: x[1])
    # (10,5) twice (ties dominate neither), (20,9), (25,12); (15,4) < (10,5), (10,3) <
    # (10,5), (30,9) < (20,9); None is left out
    assert front == [0, 6, 1, 5]
    assert sweep.pareto([], lambda x: x, lambda x: x) == []


# ------------------------------------------------------------------ against the RTL
def test_sweep_cycles_match_rtl(tmp_path):
    """Two sweep points' cost model (the numbers a sweep reports) against Icarus runs of
    the same builds on a small image set: every layer's RTL cycles and counters (about
    20 s with both Icarus builds)."""
    from sim.runner import simulate_images
    from ssvq.image import read_images, write_images
    from tests.rtl_helpers import random_layer

    rng = np.random.default_rng(3)
    points, _ = sweep.parse_grid({"base": {"kmax": 16, "max_rows": 64, "max_cols": 64},
                                  "grid": {"mults": [8, 16], "bus": [64, 128]}}, "g")
    points = [points[0], points[3]]                      # x8 bus64, x16 bus128
    for i, cfg in enumerate(points):
        layers = [random_layer(n, r, c, rng, f"{n}-{r}x{c}") for n, r, c in
                  (("ssvq-k16-d8", 12, 40), ("int4", 9, 33), ("vq-k16-d4-m2-c4", 5, 20))]
        img = write_images(tmp_path / f"img{i}", cfg, layers)
        imgs = read_images(img)
        ents = imgs.manifest["layers"]
        opts = {"layers": [[e["name"], e["rows"], e["cols"]] for e in ents],
                "fixed": [imgs.layer_config(e["name"]).to_dict() for e in ents],
                "synth_opts": sweep.synth_options(False, f"{HERE}:fake_synth"),
                "clock_mhz": 100.0, "work": str(tmp_path)}
        r = sweep.evaluate_point(cfg.to_dict(), opts)
        sim = simulate_images(img, [e["name"] for e in ents], "icarus",
                              out_dir=tmp_path / f"sim{i}", progress=None,
                              build_root=str(Path("build/sim").resolve()))
        assert sim["all_passed"]
        assert r["metrics"]["cycles"] == sim["total_cycles_rtl"]
        dram = sum(sum(v for k, v in l["counters_rtl"].items()
                       if k not in ("cycles", "stall")) for l in sim["layers"]) * cfg.bus
        assert r["metrics"]["access_counts"]["dram_bits"] == dram
