"""FPGA synthesis flow (hw/synth.py): Yosys on a tiny config, and the CLI's config errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ssvq.config import AccelConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(kmax=16, d_set=(4,), mults=8, max_rows=64, max_cols=64)


@pytest.mark.parametrize("speeds", ["5", "6,6", "x", ""])
def test_cli_bad_speeds(tmp_path, speeds):
    r = _cli("--speeds", speeds, "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines == [f"ssvq synth: error: --speeds: expected distinct ECP5 speed grades from "
                     f"6, 7, 8, comma separated, found {speeds!r}"], r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_yosys_tiny_config(tmp_path):
    from hw.synth import synthesize

    cfg = AccelConfig(**TINY)
    lines = []
    s = synthesize(cfg, tmp_path, pnr=False, progress=lines.append)
    res = s["resources"]
    # every one of the `mults` 9x8 products gets a hard multiplier (the requantization
    # multiply and rows*groups take a few more)
    assert res["MULT18X18D"] >= cfg.mults
    assert res["LUT4"] > 0 and res["TRELLIS_FF"] > 0
    assert res["DP16KD"] + res["TRELLIS_DPR16X4"] > 0          # memories were inferred
    netlist = json.loads((tmp_path / "netlist.json").read_text())
    # Yosys writes integer attributes as binary strings
    tops = [name for name, mod in netlist["modules"].items()
            if int(mod.get("attributes", {}).get("top", "0"), 2)]
    assert tops == ["ssvq_accel"]
    on_disk = json.loads((tmp_path / "synth.json").read_text())
    assert on_disk["resources"]["LUT4"] == res["LUT4"]
    assert on_disk["tools"]["yosys"].startswith("Yosys")
    assert on_disk["wall_s"]["yosys"] > 0
    assert any("yosys" in l for l in lines)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ssvq.app.cli", "synth", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("content, expect", [
    ('{"kmax": 100, "d_set": [8]}', "kmax: expected a power of two, found 100"),
    ('{"kmax": 256, "dd": 8}', "unknown field(s) ['dd']"),
    ('{"kmax": 256,', "expected JSON"),
    ('[1, 2]', "expected an object of config fields, found list"),
])
def test_cli_bad_config(tmp_path, content, expect):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    r = _cli("--config", str(bad), "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ssvq synth: error: {bad}: "), r.stderr
    assert expect in lines[0], r.stderr
    assert not (tmp_path / "out" / "synth.json").exists()


def test_cli_missing_config(tmp_path):
    r = _cli("--config", str(tmp_path / "nope.json"), "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    assert "nope.json" in r.stderr and "no such file" in r.stderr, r.stderr


@pytest.mark.slow
def test_place_and_route_tiny_config(tmp_path):
    """The whole flow: wrapper, device choice, nextpnr's Fmax and utilisation."""
    from hw.synth import WRAPPER, synthesize

    s = synthesize(AccelConfig(**TINY), tmp_path, progress=lambda _: None)
    assert s["device"]["part"] == "LFE5U-25F"                  # tiny fits the smallest
    assert s["fmax_mhz"] > 0 and s["critical_path"]["delay_ns"] > 0
    util = s["pnr_utilisation"]
    assert util["TRELLIS_IO"]["used"] == s["wrapper"]["pins"]
    assert util["MULT18X18D"]["used"] == s["resources"]["MULT18X18D"]
    assert s["wrapper_resources"]["MULT18X18D"] == 0
    assert (tmp_path / f"{WRAPPER}.v").exists() and (tmp_path / "ssvq_accel.config").exists()


def test_synthesize_refuses_bad_arguments(tmp_path):
    from hw.synth import synthesize
    from ssvq.config import AccelConfig
    from ssvq.errors import ConfigError
    with pytest.raises(ConfigError, match="expected an AccelConfig, found dict"):
        synthesize({"kmax": 16}, tmp_path / "a", pnr=False)
    with pytest.raises(ConfigError, match="device must be 'auto' or one of"):
        synthesize(AccelConfig(), tmp_path / "b", device="LFE5U-12F", pnr=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
