import json
import re
import subprocess
import sys

import pytest

from hw.config import AccelConfig
from hw.verilog import LINT_WAIVERS, generate, lint, strip_memory_init


@pytest.mark.parametrize("cfgd", [dict(), dict(k=16, d=1), dict(k=4096, d=16, max_rows=512)])
def test_verilog_lints_clean_and_has_no_inline_memory_init(tmp_path, cfgd):
    cfg = AccelConfig(**cfgd)
    v = generate(cfg, tmp_path)
    text = v.read_text()
    assert re.search(r"^module ssvq_accel\(", text, re.M)
    assert not re.search(r"^\s*initial begin", text, re.M)   # memories load at run time
    assert not re.search(r"^\s*\w+\[\d+\] = \d+'h", text, re.M)   # no per-word init lines
    r = lint(v)
    assert r.returncode == 0, r.stderr[-3000:]
    params = json.loads((tmp_path / "params.json").read_text())
    assert params["config"] == cfg.to_dict() and params["lanes"] == cfg.mults // cfg.d
    assert all(reason for reason in LINT_WAIVERS.values())


def test_strip_memory_init_keeps_nonzero_contents():
    zero = "  initial begin\n    mem[0] = 8'h00;\n    mem[1] = 8'h00;\n  end\n"
    real = "  initial begin\n    rom[0] = 8'h01;\n  end\n"
    out, n = strip_memory_init("a\n" + zero + real + "b\n")
    assert n == 1 and out == "a\n" + real + "b\n"


def test_verilog_cli_rejects_bad_config(tmp_path):
    bad = tmp_path / "cfg.json"
    bad.write_text(json.dumps({"k": 300, "d": 8}))
    r = subprocess.run([sys.executable, "-m", "ssvq.cli", "verilog", "--config", str(bad),
                        "--out", str(tmp_path / "v")], capture_output=True, text=True)
    assert r.returncode == 2
    assert "k must be a power of two, found 300" in r.stderr and str(bad) in r.stderr
    assert not (tmp_path / "v").exists()
