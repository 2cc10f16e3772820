"""Scoreboard: checks one layer's output stream against the golden model as
the beats appear, then the acceptance cycles and the performance counters.

Pure Python (no simulator access), so it also works on recorded beats.

Checks
  * every beat bit-exact (the zero padding of the last beat included), in
    order, nothing missing, nothing extra;
  * ``timing_checked`` (no random stalls): each beat's acceptance cycle,
    counted from the cycle the header was accepted (= 0), equals golden
    ``timing().out_cycles``, and every counter equals golden ``counters``;
  * with stalls: the beat counters (header .. out) are still exact,
    cnt_cycles >= the no-stall value, and cnt_stall > 0 if the testbench saw a
    stall cycle (the exact count the testbench saw is reported, not asserted);
  * always: cnt_cycles equals the cycles the testbench measured from the header
    to the last output beat, both included.
"""
from __future__ import annotations

import numpy as np

from ssvq.config import COUNTERS, OUT_BITS, AccelConfig
from ssvq.reference import output_beats

MAX_MESSAGES = 10


def _int8s(word: int, n: int) -> list[int]:
    b = np.frombuffer(int(word).to_bytes(n, "little"), np.int8)
    return [int(x) for x in b]


class Scoreboard:
    def __init__(self, cfg: AccelConfig, name: str, mode: str, rows: int, cols: int,
                 expected: np.ndarray, out_cycles: list[int] | None,
                 counters: dict | None, timing_checked: bool, log=None):
        self.cfg, self.name, self.mode, self.rows, self.cols = cfg, name, mode, rows, cols
        self.per = cfg.bus // OUT_BITS
        self.expected_y = np.asarray(expected, np.int8)
        if len(self.expected_y) != rows:
            raise ValueError(f"{name}: expected outputs have length {len(self.expected_y)}, "
                             f"rows={rows}")
        self.expected = output_beats(self.expected_y, cfg)
        self.out_cycles = list(out_cycles) if out_cycles is not None else None
        self.counters_model = dict(counters) if counters is not None else None
        self.timing_checked = bool(timing_checked)
        self.log = log
        self.header_cycle: int | None = None
        self.observed: list[tuple[int | str, int]] = []
        self.mismatches = 0             # output values (rows or padding bytes) that differ
        self.beat_mismatches = 0
        self.timing_mismatches = 0
        self.extra = 0
        self.padding_errors = 0
        self.messages: list[str] = []
        self.on_done = None            # called once when the last expected beat arrived

    # --------------------------------------------------------------- per beat
    def _msg(self, text: str):
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(text)
            if self.log is not None:
                self.log.error(text)

    def _where(self, idx: int) -> str:
        r0 = idx * self.per
        r1 = min(r0 + self.per, self.rows) - 1
        return (f"layer {self.name!r} ({self.mode} {self.rows}x{self.cols}) output beat {idx} "
                f"(rows {r0}..{r1})")

    def on_beat(self, value: int | str, cycle: int):
        idx = len(self.observed)
        self.observed.append((value, cycle))
        rel = cycle - self.header_cycle if self.header_cycle is not None else None
        n = len(self.expected)
        if idx >= n:
            self.extra += 1
            self._msg(f"layer {self.name!r}: extra output beat {idx} (only {n} expected) "
                      f"at cycle {rel}: {value!r}")
            return
        exp = self.expected[idx]
        if not isinstance(value, int):
            self.beat_mismatches += 1
            self.mismatches += self.per
            self._msg(f"{self._where(idx)} at cycle {rel}: expected "
                      f"{_int8s(exp, self.per)}, found unresolved bits {value}")
        elif value != exp:
            self.beat_mismatches += 1
            e, f = _int8s(exp, self.per), _int8s(value, self.per)
            bad = [idx * self.per + i for i in range(self.per) if e[i] != f[i]]
            self.mismatches += len(bad)
            pad = [r for r in bad if r >= self.rows]
            if pad:
                self.padding_errors += 1
            self._msg(f"{self._where(idx)} at cycle {rel}: expected int8 {e}, found {f}; "
                      f"differing rows {bad}" + (f" (padding rows {pad} not zero)" if pad else ""))
        if self.timing_checked and self.out_cycles is not None and rel != self.out_cycles[idx]:
            self.timing_mismatches += 1
            self._msg(f"{self._where(idx)}: accepted on cycle {rel} after the header, "
                      f"golden timing says {self.out_cycles[idx]}")
        if idx == n - 1 and self.on_done is not None:
            self.on_done()

    # ------------------------------------------------------------ end of layer
    @property
    def done(self) -> bool:
        return len(self.observed) >= len(self.expected)

    @property
    def last_cycle(self) -> int | None:
        n = min(len(self.observed), len(self.expected))
        return self.observed[n - 1][1] if n else None

    def outputs(self) -> np.ndarray:
        """int8 outputs observed, in row order, padding dropped (unresolved -> 0)."""
        out = bytearray()
        for value, _ in self.observed[: len(self.expected)]:
            v = value if isinstance(value, int) else 0
            out += v.to_bytes(self.per, "little")
        return np.frombuffer(bytes(out), np.int8)[: self.rows].copy()

    def check_counters(self, counters_rtl: dict | None, cycles_tb: int | None,
                       stall_tb: int | None, stalls_injected: bool) -> tuple[bool | None, bool | None, list[str]]:
        """Returns (out_cycles_match, counters_match, problems)."""
        problems: list[str] = []
        model = self.counters_model
        out_cycles_match = None
        if self.timing_checked and self.out_cycles is not None:
            out_cycles_match = (self.timing_mismatches == 0
                                and len(self.observed) >= len(self.expected))
        if counters_rtl is None or model is None:
            return out_cycles_match, None, ["counters not read"] if counters_rtl is None else []
        if self.timing_checked:
            for k in COUNTERS:
                if counters_rtl.get(k) != model.get(k):
                    problems.append(f"cnt_{k}: expected {model.get(k)}, found {counters_rtl.get(k)}")
        else:
            for k in COUNTERS:
                if k in ("cycles", "stall"):
                    continue
                if counters_rtl.get(k) != model.get(k):
                    problems.append(f"cnt_{k}: expected {model.get(k)}, found {counters_rtl.get(k)}")
            if counters_rtl.get("cycles", -1) < model["cycles"]:
                problems.append(f"cnt_cycles: expected >= {model['cycles']} (no-stall cycles), "
                                f"found {counters_rtl.get('cycles')}")
            if stalls_injected and stall_tb and not counters_rtl.get("stall"):
                problems.append(f"cnt_stall: expected > 0 (testbench saw {stall_tb} stall "
                                f"cycles), found {counters_rtl.get('stall')}")
        if cycles_tb is not None and counters_rtl.get("cycles") != cycles_tb:
            problems.append(f"cnt_cycles: testbench measured {cycles_tb} cycles from the header "
                            f"to the last output beat (both included), found "
                            f"{counters_rtl.get('cycles')}")
        for p in problems:
            self._msg(f"layer {self.name!r}: {p}")
        return out_cycles_match, not problems, problems

    def output_problems(self, missing: bool = True) -> list[str]:
        """The output stream's faults in words (missing beats only if `missing`: a
        layer that timed out already says so)."""
        summ = self.summary()
        out = []
        if missing and summ["missing_beats"]:
            out.append(f"{summ['missing_beats']} output beats missing")
        if summ["extra_beats"]:
            out.append(f"{summ['extra_beats']} extra output beats")
        if summ["beat_mismatches"]:
            out.append(f"{summ['beat_mismatches']} output beats differ ({summ['mismatches']} "
                       f"values); first: {self.messages[0] if self.messages else ''}")
        if self.timing_mismatches:
            out.append(f"{self.timing_mismatches} output beats off the golden cycle")
        return out

    def summary(self) -> dict:
        n = len(self.expected)
        got = min(len(self.observed), n)
        return {"beats_expected": n, "beats_checked": got,
                "outputs_checked": min(got * self.per, self.rows),
                "missing_beats": n - got, "extra_beats": self.extra,
                "mismatches": self.mismatches, "beat_mismatches": self.beat_mismatches,
                "padding_errors": self.padding_errors,
                "timing_mismatches": self.timing_mismatches,
                "bit_exact": self.mismatches == 0 and got == n and self.extra == 0}
