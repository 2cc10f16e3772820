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
    if args.model == "digits":
        if getattr(args, "methods", None):
            raise UserError("--methods: only for --model minilm (the digits run trains every "
                            "row in a few minutes)")
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

