"""Verilog generation (hw/verilog.py): lint-clean for three builds, no inline memory
initialisation, params.json as the config implies, every lint waiver needed, and the
`ssvq verilog` command's errors."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hw.verilog as hv
from hw.verilog import LINT_WAIVERS, generate, lint, strip_memory_init
from ssvq.config import AccelConfig
from ssvq.image import write_images
from tests.rtl_helpers import random_layer

ROOT = Path(__file__).resolve().parents[1]

BUILDS = {
    "default": AccelConfig(),
    "small": AccelConfig(kmax=16, d_set=(1, 2, 4), mults=8, max_rows=64, max_cols=64),
    "codebook-only": AccelConfig(kmax=4096, d_set=(8, 16), modes=("vq", "ssvq"), m_max=1,
                                 coef_bits_max=0, max_rows=64, max_cols=64),
}
# (lanes_max, weight_bits, max_group_bits, max_record_bits) worked out by hand:
#  default: 32 mults / d 4 = 8 lanes; 9 + 4 coef + 1 (m=2) = 14; int8 32 x 8 = 256
#           (vq 8 x 2 x (8 + 4) = 192, ssvq + 32 = 224); max(128, 64, 32 x 8, 8 x 8, 256)
#  small:   8 / 1 = 8; 14; ssvq 8 x 2 x (4 + 4) + 8 = 136 (int8 64); max(128, 64, 64, 32, 136)
#  codebook-only: 32 / 8 = 4; 9 (no coef, m=1, no int); ssvq 4 x 12 + 32 = 80;
#           max(128, 64, 256, 16 x 8, 80)
BY_HAND = {"default": (8, 14, 256, 256), "small": (8, 14, 136, 136),
           "codebook-only": (4, 9, 80, 256)}
# DP16KD blocks (TN1264: a block is 1K x 18, 2K x 9 or 4K x 4; each of its two ports
# serves one read port) = per memory: ceil(read ports / 2) x ceil(width / port width):
#  default: codebooks 2 x (256 x 64 bits, 8 ports): 2 x 4 x 4 = 32; params 4096 x 64: 16
#           columns of 4K x 4; acts 128 x 256 bits: 15 columns of 1K x 18  -> 63
#  small: codebooks 2 x (16 x 32, 8 ports): 2 x 4 x 2 = 16; params 64 x 64: 4; acts 8 x 64: 4
#  codebook-only: codebook 1 x (4096 x 128, 4 ports): 2 x 32 = 64; params 4; acts 2 x 256: 15
DP16KD_BY_HAND = {"default": 63, "small": 24, "codebook-only": 83}
# MULT18X18D: one per MAC multiplier, three limbs of the requantizer's (acc + bias) x mult,
# three in the loader's geometry (rows x G, G x group bits, rows x row bits)
MULT_BY_HAND = {"default": 32 + 3 + 3, "small": 8 + 3 + 3, "codebook-only": 32 + 3 + 3}


def _expected_params(cfg: AccelConfig) -> dict:
    """params.json's derived numbers, from the config fields alone."""
    lanes_max = cfg.mults // min(cfg.d_set)
    cb = [m for m in cfg.modes if m != "int"]
    weight_bits = max([8] * ("int" in cfg.modes)
                      + [9 + cfg.coef_bits_max + (cfg.m_max - 1).bit_length()] * bool(cb))
    groups = [cfg.mults * b for b in cfg.int_bits] if "int" in cfg.modes else []
    code_bits = cfg.kmax.bit_length() - 1
    for m in cb:
        groups.append(lanes_max * cfg.m_max * (code_bits + cfg.coef_bits_max)
                      + (cfg.mults if m == "ssvq" else 0))
    max_group_bits = max(groups)
    max_record_bits = max(128, 64, cfg.mults * 8, max(cfg.d_set) * 8, max_group_bits)
    return {"lanes_max": lanes_max, "weight_bits": weight_bits,
            "max_group_bits": max_group_bits, "max_record_bits": max_record_bits}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = {}
    for name, cfg in BUILDS.items():
        d = tmp_path_factory.mktemp(f"v-{name}")
        out[name] = (cfg, d, generate(cfg, d))
    return out


@pytest.mark.parametrize("name", BUILDS)
def test_verilog_lints_clean_and_has_no_inline_memory_init(built, name):
    cfg, d, v = built[name]
    assert v == d / "ssvq_accel.v"
    text = v.read_text()
    assert len(re.findall(r"^module ssvq_accel\(", text, re.M)) == 1
    # ecp5 target: every memory is DP16KD blocks, every hard multiplier a MULT18X18D
    assert len(re.findall(r"^\s*DP16KD\s", text, re.M)) == DP16KD_BY_HAND[name]
    assert len(re.findall(r"^\s*MULT18X18D\s", text, re.M)) == MULT_BY_HAND[name]
    assert not re.search(r"^\s*reg .*\] \w+ ?\[\d+:\d+\];$", text, re.M)  # no inferred RAM
    assert not re.search(r"^\s*initial begin", text, re.M)            # but load at run time
    assert not re.search(r"^\s*\w+\[\d+\] = \d+'[hdbo]", text, re.M)   # no per-word init lines
    assert not list(d.glob(".*.tmp"))
    r = lint(v)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "%Warning" not in r.stderr and "%Error" not in r.stderr, r.stderr[-3000:]


@pytest.mark.parametrize("name", BUILDS)
def test_params_json(built, name):
    from hw.accel import PIPELINE_DEPTH

    cfg, d, _ = built[name]
    params = json.loads((d / "params.json").read_text())
    expect = _expected_params(cfg)
    assert tuple(expect[k] for k in ("lanes_max", "weight_bits", "max_group_bits",
                                     "max_record_bits")) == BY_HAND[name]
    assert params == {"top": "ssvq_accel", "target": "ecp5", "config": cfg.to_dict(),
                      "pipeline_depth": PIPELINE_DEPTH, **expect}
    assert AccelConfig.from_dict(params["config"]) == cfg
    assert type(PIPELINE_DEPTH) is int and PIPELINE_DEPTH > 0


def test_raw_amaranth_output_has_the_memory_init_that_is_stripped():
    from amaranth.back import verilog

    from hw.accel import Accelerator

    raw = verilog.convert(Accelerator(BUILDS["small"]), name="ssvq_accel", emit_src=False)
    assert re.search(r"^\s*initial begin", raw, re.M)
    _, n = strip_memory_init(raw)
    assert n > 0


def test_strip_memory_init_keeps_nonzero_contents():
    zero = "  initial begin\n    mem[0] = 8'h00;\n    mem[1] = 8'h00;\n  end\n"
    real = "  initial begin\n    rom[0] = 8'h01;\n  end\n"
    out, n = strip_memory_init("a\n" + zero + real + "b\n")
    assert n == 1 and out == "a\n" + real + "b\n"


def test_strip_memory_init_decimal_words():
    """Yosys writes 32-bit memory words in decimal (`32'd0`), e.g. the small build's
    codebook memory (4 x 8 bits); those all-zero blocks must go too."""
    zero = "  initial begin\n    mem[0] = 32'd0;\n    mem[1] = 32'd0;\n  end\n"
    real = "  initial begin\n    rom[0] = 32'd7;\n  end\n"
    out, n = strip_memory_init("a\n" + zero + real + "b\n")
    assert n == 1 and out == "a\n" + real + "b\n"


@pytest.mark.parametrize("waiver", list(LINT_WAIVERS))
def test_each_lint_waiver_is_needed(built, monkeypatch, waiver):
    """Linting without this one waiver reports that warning for at least one build
    (a waiver no build needs would hide future warnings for nothing)."""
    monkeypatch.setattr(hv, "LINT_WAIVERS", {k: v for k, v in LINT_WAIVERS.items() if k != waiver})
    needed_by = []
    for name, (_, _, v) in built.items():
        r = lint(v)
        found = set(re.findall(r"%Warning-(\w+)", r.stderr))
        assert found <= {waiver}, (name, found)          # only the one left out appears
        if waiver in found:
            assert r.returncode != 0
            needed_by.append(name)
    assert needed_by, f"lint waiver {waiver} is not needed by any build"


def test_lint_is_not_vacuous(tmp_path):
    v = tmp_path / "ssvq_accel.v"
    v.write_text("module ssvq_accel(input a, output o);\n  wire u;\n  assign o = a & u;\n"
                 "endmodule\n")
    r = lint(v)
    assert r.returncode != 0 and "%Warning-UNDRIVEN" in r.stderr


# ------------------------------------------------------------------ the command
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ssvq.app.cli", "verilog", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("content,expect", [
    ('{"kmax": 300}', "accelerator config: kmax: expected a power of two, found 300"),
    ('{"kmax": 8192}', "kmax: expected 2..4096, found 8192"),
    ('{"d_set": [3]}', "d_set: expected distinct powers of two up to 64, found (3,)"),
    ('{"mults": "32"}', "mults: expected an integer, found '32'"),
    ('{"modes": ["int", "pq"]}', "modes: expected distinct names from"),
    ('{"kmax": 256, "dd": 8}', "unknown field(s) ['dd']"),
    ('{"kmax": 256,', "expected JSON, found a parse error"),
    ('[1, 2]', "expected an object of config fields, found list"),
])
def test_verilog_cli_rejects_bad_config(tmp_path, content, expect):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    r = _cli("--config", str(bad), "--out", str(tmp_path / "v"))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"ssvq verilog: error: {bad}: "), lines[0]
    assert expect in lines[0], lines[0]
    assert r.stdout == "" and not (tmp_path / "v").exists()


def test_verilog_cli_missing_config(tmp_path):
    r = _cli("--config", str(tmp_path / "nope.json"), "--out", str(tmp_path / "v"))
    assert r.returncode == 2
    assert r.stderr.strip() == (f"ssvq verilog: error: {tmp_path / 'nope.json'}: expected a "
                                f"config JSON file, found no such file")


def test_verilog_cli_partial_config_and_images(tmp_path):
    # a partial config: the missing fields take the defaults
    cfgf = tmp_path / "cfg.json"
    cfgf.write_text(json.dumps({"kmax": 16, "d_set": [4], "mults": 8, "max_rows": 64,
                                "max_cols": 64}))
    r = _cli("--config", str(cfgf), "--out", str(tmp_path / "v1"))
    assert r.returncode == 0, r.stderr
    p = json.loads((tmp_path / "v1" / "params.json").read_text())
    assert p["config"] == AccelConfig(kmax=16, d_set=(4,), mults=8, max_rows=64,
                                      max_cols=64).to_dict()
    # --images: the build the images were written for
    cfg = AccelConfig(kmax=32, d_set=(4,), modes=("int", "ssvq"), int_bits=(4,), m_max=1,
                      coef_bits_max=0, mults=8, max_rows=32, max_cols=32)
    rng = np.random.default_rng(0)
    root = write_images(tmp_path / "img", cfg, [random_layer("ssvq-k32-d4", 3, 9, rng, "a"),
                                                random_layer("int4", 2, 5, rng, "b")])
    r = _cli("--images", str(root), "--out", str(tmp_path / "v2"))
    assert r.returncode == 0, r.stderr
    p = json.loads((tmp_path / "v2" / "params.json").read_text())
    assert p["config"] == cfg.to_dict() and p["lanes_max"] == 2
    assert (tmp_path / "v2" / "ssvq_accel.v").stat().st_size > 0
    # an image folder with a broken manifest: one line naming it
    (root / "manifest.json").write_text('{"format": "ssvq-image", "version": 1}')
    r = _cli("--images", str(root), "--out", str(tmp_path / "v3"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"ssvq verilog: error: {root / 'manifest.json'}: version: expected 2, found 1 (a version "
        f"1 image set, which this accelerator no longer reads; recompress it with "
        f"`ssvq compress`)"]
    assert not (tmp_path / "v3").exists()
