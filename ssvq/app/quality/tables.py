"""Markdown tables of result rows."""
from __future__ import annotations


def fmt(v, nd=4):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def table(rows: list[dict], cols: list[str]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(fmt(r.get(c), 3 if c == "bits_per_weight" else 4)
                                     if c != "seconds" else f"{r.get(c, 0):.1f}"
                                     for c in cols) + " |")
    return "\n".join(out)
