"""`ssvq compress`: the command-line face of compress.run.compress_model.

Every argument is checked before anything is loaded (a bad plan, flag, calibration
path or output folder exits with status 2 and one line naming it)."""
from __future__ import annotations

from pathlib import Path

from compress.calib import check_calibration_path
from compress.plan import plan_from_args
from compress.quantize import stream_base
from compress.run import check_out_path, compress_model
from ssvq.errors import ConfigError, UserError

BUILTIN_MODELS = ("minilm", "digits")


def compress_cmd(args) -> int:
    plan = plan_from_args(args.config, args.method, args.k, args.d, args.m, args.coef_bits)
    try:
        stream_base(args.mults, args.bus)
    except ConfigError as e:
        raise ConfigError(f"--mults {args.mults} / --bus {args.bus}: "
                          f"{str(e).split(': ', 1)[-1]}") from None
    check_out_path(args.out, args.force)
    if args.calib:
        check_calibration_path(args.calib)
    if args.model not in BUILTIN_MODELS:
        p = Path(args.model).expanduser()
        if not p.is_file():
            raise UserError(f"--model {p}: expected minilm, digits or a state dict file "
                            f"(.pt or .safetensors), found "
                            f"{'a directory' if p.is_dir() else 'no such file'}")
    compress_model(args.model, plan, args.out, seed=args.seed, layers=args.layers or None,
                   calib=args.calib, mults=args.mults, bus=args.bus, force=args.force)
    return 0
