"""`ssvq quality`'s command handler: runs the chosen experiment and fails the
command when an exported image is not bit-exact."""
from __future__ import annotations

import sys
from pathlib import Path

from ssvq.app.quality import digits, minilm
from ssvq.app.quality.runtime import say
from ssvq.errors import UserError


# ================================================================== CLI
def quality_cmd(args) -> int:
    out = Path(args.out or f"reports/quality-{args.model}")
    budget = float(getattr(args, "budget_minutes", 25.0))
    if budget <= 0:
        raise UserError(f"--budget-minutes: expected a positive number, found {budget}")
    methods = getattr(args, "methods", None)
    if args.model == "digits" and methods:
        from ssvq.app.quality.methods import check_methods
        names = check_methods([m for arg in methods for m in arg.split(",") if m])
        row_seconds = float(getattr(args, "row_seconds", None) or 20.0)
        if row_seconds <= 0:
            raise UserError(f"--row-seconds: expected a positive number, found {row_seconds}")
        fractions = _fractions(getattr(args, "nas_budget", None))
        out.mkdir(parents=True, exist_ok=True)
        res = digits.run_digits_methods(out, names, row_seconds, nas_fractions=fractions)
    elif args.model == "digits":
        out.mkdir(parents=True, exist_ok=True)
        res = digits.run_digits(out, budget)
    else:
        res = minilm.run_minilm(out, budget, getattr(args, "methods", None))
    say(f"report: {out / 'report.md'}")
    failed = [f"{r['method']} {r.get('config', '')}".strip() for r in res["rows"]
              if r.get("images_round_trip") is False or r.get("rtl_bit_exact") is False]
    if failed:
        print(f"ssvq quality: exported images not bit-exact (stream round trip / RTL): "
              f"{', '.join(failed)} (see {out / 'report.md'})", file=sys.stderr)
        return 1
    return 0



def _fractions(text: str | None) -> tuple[float, ...] | None:
    """--nas-budget "0.6,0.4" -> (0.6, 0.4); None -> None (the default)."""
    if text is None:
        return None
    try:
        fr = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        fr = ()
    if not fr or any(not f > 0 for f in fr):
        raise UserError(f"--nas-budget: expected positive fractions of the int8 cycles, comma "
                        f"separated (e.g. 0.6,0.4), found {text!r}")
    return fr
