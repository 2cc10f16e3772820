"""`make regress`: SSVQ_REGRESS_RUNS (default 1000) seeded runs of sim.regress in parallel;
each failure names the command that reproduces it. Not part of `make test`."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from sim.regress import run_case

REPO = Path(__file__).resolve().parents[2]
RUNS = int(os.environ.get("SSVQ_REGRESS_RUNS", "1000"))
FIRST = int(os.environ.get("SSVQ_REGRESS_FIRST", "0"))
ROOT = Path(os.environ.get("SSVQ_REGRESS_ROOT", REPO / "build" / "regress"))


@pytest.mark.regress
@pytest.mark.parametrize("seed", range(FIRST, FIRST + RUNS))
def test_seeded_run(seed):
    res = run_case(seed, ROOT, REPO / "build" / "sim")
    assert res["passed"], ("\n  ".join(res["failures"])
                           + f"\nreproduce: {res['repro']}")
