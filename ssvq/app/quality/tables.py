"""Markdown tables of result rows."""
from __future__ import annotations


def fmt(v, nd=4):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


DECIMALS = {"bits_per_weight": 3, "speedup_int8": 3, "speedup_int4": 3}


def table(rows: list[dict], cols: list[str]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(fmt(r.get(c), DECIMALS.get(c, 4))
                                     if c != "seconds" else f"{r.get(c, 0):.1f}"
                                     for c in cols) + " |")
    return "\n".join(out)
