"""The FuseSoC core file `ssvq verilog` writes next to the Verilog (hw.verilog.write_core):
`fusesoc run --target lint` (Verilator --lint-only -Wall with the project's waivers)
passes, offline, with the generated folder as the only cores root."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ssvq.config import AccelConfig

TINY = AccelConfig(kmax=16, d_set=(4,), mults=8, max_rows=64, max_cols=64)


def _fusesoc():
    here = Path(sys.executable).parent / "fusesoc"
    return str(here) if here.is_file() else shutil.which("fusesoc")


def test_fusesoc_lint_target(tmp_path):
    # fusesoc is a dependency (pyproject.toml): missing, it is a failure, not a skip
    assert _fusesoc(), f"fusesoc: expected next to {sys.executable} or on PATH, found none"
    from hw.verilog import CORE_NAME, generate, verilator_env
    ip = tmp_path / "ip"
    generate(TINY, ip)
    core = (ip / "ssvq_accel.core").read_text()
    assert core.startswith("CAPI=2:") and all(f"\n  {t}:" in core for t in ("lint", "sim", "synth"))
    env = verilator_env()
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    env["HOME"] = str(tmp_path)                  # no user fusesoc.conf / library
    env.pop("XDG_CONFIG_HOME", None)
    r = subprocess.run([_fusesoc(), "--cores-root", str(ip), "run", "--build-root",
                        str(tmp_path / "build"), "--target", "lint", CORE_NAME],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "%Warning" not in r.stdout + r.stderr and "%Error" not in r.stdout + r.stderr
