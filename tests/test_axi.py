"""The top's AXI interfaces: register map (hw/regs.rdl) against the Amaranth block
and the generated C header / markdown, and the cocotb test sim/tb/test_axi.py
(cocotbext-axi: AxiStreamSource/Sink with pause generators, AxiLiteMaster) on
Icarus and Verilator: registers, every counter equal to sim.golden.timing, the done interrupt
(W1C), soft reset, malformed headers and tlast errors. Also one Python-driven
(stimulus "python", sim/tb/test_accel.py) job, which reads the counters over
AXI4-Lite too.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from ssvq.config import AccelConfig, COUNTERS

REPO = Path(__file__).resolve().parents[1]
BUILD_ROOT = REPO / "build" / "sim"
CFG = AccelConfig(kmax=16, d_set=(1, 2, 4), mults=8, max_rows=256, max_cols=256)
SHAPES = [("int4", 5, 9), ("ssvq-k16-d4", 13, 37), ("vq-k16-d2-m2-c4", 6, 21),
          ("ssvq-k8-d4-m2-c2", 3, 17), ("int8", 11, 20)]
PAUSED = 2          # the last two layers with pause generators on both streams


def const_words(cfg: AccelConfig) -> dict:
    """The constant registers' values for a build, from the RDL table."""
    from hw.regs import build_values, port_name, register_map
    vals = build_values(cfg)
    out = {}
    for r in register_map():
        names = [port_name(r.name, f.name) for f in r.fields]
        if all(n in vals for n in names):
            out[r.name] = sum(vals[port_name(r.name, f.name)] << f.lsb for f in r.fields)
    return out


def test_rdl_table_matches_the_register_block():
    """The register block's ports come from the compiled RDL; its defaults (the
    default build's values) equal build_values; every field fits its register."""
    from hw.regs import AxiLiteRegs, build_values, port_name, register_map
    regs = register_map()
    names = {r.name: r for r in regs}
    assert names["ID"].addr == 0 and names["STATUS"].addr == 0x24
    assert [names[f"CNT_{c.upper()}"].addr for c in COUNTERS] == [0x40 + 4 * i for i in range(8)]
    block = AxiLiteRegs()
    vals = build_values(AccelConfig())
    for r in regs:
        used = 0
        for f in r.fields:
            assert 0 <= f.lsb and f.lsb + f.width <= 32
            mask = ((1 << f.width) - 1) << f.lsb
            assert not used & mask, (r.name, f.name)
            used |= mask
            n = port_name(r.name, f.name)
            assert len(getattr(block, n)) == f.width
            if n in vals:
                assert vals[n] == f.reset, (n, vals[n], f.reset)   # RDL documents the default
    # the testbenches' addresses
    from sim.tb.test_accel import CNT_ADDR, STATUS_ADDR
    assert (CNT_ADDR, STATUS_ADDR) == (names["CNT_CYCLES"].addr, names["STATUS"].addr)


def test_generated_header_and_markdown(tmp_path):
    from hw.regs import register_map, write_outputs
    h, md = write_outputs(tmp_path)
    text = h.read_text()
    # the register struct's member offsets (uint32_t members, uint8_t reserved arrays)
    body = re.search(r"typedef struct[^{]*\{(.*?)\} ssvq_regs_t;", text, re.S).group(1)
    offsets, off = {}, 0
    for typ, name, n in re.findall(r"(uint32_t|uint8_t) (\w+)(?:\[0x([0-9a-f]+)\])?;", body):
        offsets[name] = off
        off += 4 if typ == "uint32_t" else int(n, 16)
    for r in register_map():
        assert offsets.get(r.name) == r.addr, r.name
        assert f"#define SSVQ_REGS__{r.name}__" in text
        assert f"| {r.addr:#04x} |".upper().replace("0X", "0x") in md.read_text()
    docs = REPO / "docs" / "regs"
    assert (docs / "ssvq_regs.h").read_text() == text, "docs/regs/ssvq_regs.h is stale"
    assert (docs / "regs.md").read_text() == md.read_text(), "docs/regs/regs.md is stale"


def _images(tmp: Path, shapes, seed=11):
    from sim.regress import random_layer
    from ssvq.image import write_images
    rng = np.random.default_rng(seed)
    layers = [random_layer(n, r, c, rng, f"l{i}_{n}_{r}x{c}") for i, (n, r, c) in
              enumerate(shapes)]
    return write_images(tmp / "images", CFG, layers)


def _layers(tmp: Path, images: Path):
    from sim.runner import prepare_images
    imgs, cfg, prepared = prepare_images(images, build_cfg=CFG)
    layers = []
    for entry, layer, beats, y, t in prepared:
        np.save(tmp / f"{layer.name}.npy", y)
        layers.append({"name": layer.name, "config": layer.config.name, "mode": layer.mode,
                       "rows": layer.rows, "cols": layer.cols,
                       "beats": str(imgs.root / entry["dir"] / "stream.bin"),
                       "expected": str(tmp / f"{layer.name}.npy"),
                       "out_cycles": list(t.out_cycles), "counters": t.counters})
    return layers


def _bad_streams(tmp: Path, good: dict) -> list[dict]:
    from hw.regs import CAUSES
    from ssvq.image import layer_sections
    from ssvq.config import LayerConfig
    raw = bytearray(Path(good["beats"]).read_bytes())
    per = CFG.bus // 8
    n = len(raw) // per
    out = []

    def edit(name, cause, fn, frames=None):
        b = bytearray(raw)
        fn(b)
        p = tmp / f"bad_{name}.bin"
        p.write_bytes(bytes(b))
        out.append({"name": name, "beats": str(p), "cause": CAUSES[cause],
                    **({"frames": frames} if frames else {})})

    def magic(b): b[5] ^= 0xFF                        # header bits 40..47
    def v1(b): b[7] = 0x31                           # "SV1": a version-1 header
    def mode(b): b[0] = 3                            # no such mode
    def rows(b): b[1:3] = (CFG.max_rows + 1).to_bytes(2, "little")
    edit("bad_magic", "magic", magic)
    edit("version_1", "version", v1)
    edit("mode_not_built", "mode", mode)
    edit("rows_over_max", "rows", rows)
    w_first, _ = layer_sections(CFG, LayerConfig.parse(good["config"]), good["rows"],
                                good["cols"])["weights"]
    edit("tlast_early", "tlast_early", lambda b: None, frames=[w_first, n - w_first])
    # the layer and a copy of it in one frame: no tlast on the layer's last beat
    p = tmp / "bad_tlast_missing.bin"
    p.write_bytes(bytes(raw) * 2)
    out.append({"name": "tlast_missing", "beats": str(p), "cause": CAUSES["tlast_missing"]})
    return out


@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_axi_interfaces(tmp_path, simulator):
    from sim.runner import run_job
    images = _images(tmp_path, SHAPES)
    layers = _layers(tmp_path, images)
    from hw.regs import register_map
    regs = {r.name: r.addr for r in register_map()}
    report = tmp_path / "axi_report.json"
    extra = {"axi": {"regs": regs, "expect": const_words(CFG), "pause_layers": PAUSED,
                     "bad": _bad_streams(tmp_path, layers[0]), "report": str(report)}}
    results = run_job(CFG, layers, simulator, seed=5, out_dir=tmp_path / "job",
                      build_root=BUILD_ROOT, stimulus="axi", extra=extra)
    log = (tmp_path / "job" / "sim.log").read_text(errors="replace")
    assert all(r["passed"] for r in results), (
        [(r["name"], r.get("problems") or r.get("error")) for r in results if not r["passed"]],
        log[-3000:])
    rep = json.loads(report.read_text())
    assert set(rep) == {"bad_magic", "version_1", "mode_not_built", "rows_over_max",
                        "tlast_early", "tlast_missing", "soft_reset_in_drain"}
    assert all(v == [] for v in rep.values()), rep
    assert "FAIL=0" in log or " 0 failed" in log or "PASS=1" in log, log[-2000:]
    for r in results[:-PAUSED]:
        assert r["counters_match"] and r["bit_exact"] and not r["paused"]
    for r in results[-PAUSED:]:
        assert r["paused"] and r["counters_rtl"]["stall"] > 0


def test_python_driver_reads_counters_over_axil(tmp_path):
    """sim/tb/test_accel.py (the Python driver and monitor on s_axis/m_axis, tlast
    driven and checked, counters over AXI4-Lite) on a few layers, no stalls."""
    from sim.runner import simulate_images
    images = _images(tmp_path, SHAPES[:3], seed=12)
    summary = simulate_images(images, None, "icarus", out_dir=tmp_path / "out",
                              build_root=BUILD_ROOT, progress=None, stimulus="python",
                              build_cfg=CFG)
    bad = [(l["name"], l["error"], l["problems"]) for l in summary["layers"] if not l["passed"]]
    assert not bad, bad
    assert all(l["counters_match"] and l["timing_checked"] for l in summary["layers"])
