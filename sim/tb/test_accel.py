"""cocotb test: run the layers of a job back to back through one `ssvq_accel`.

The job is a JSON file named by $SSVQ_TB_JOB (written by sim.runner.run_job):

    {"config": {...AccelConfig...}, "simulator": "icarus", "seed": 1,
     "stall_prob": 0.0, "latency": 0,
     "layers": [{"name", "mode", "rows", "cols",
                 "beats":    path of the input beats (.npy uint8 (n, bus/8) or .hex),
                 "expected": path of the golden int8 outputs (.npy, length rows),
                 "out_cycles": golden acceptance cycle of each output beat,
                 "counters":   golden counters {name: value} (no stalls),
                 "out_dir":  where result.json and outputs.npy go}, ...]}

Each layer is sent only once the previous one has finished (busy low), without
a reset in between, so the counters must clear at every header.

Timing is checked exactly when stall_prob == 0, whatever the latency: the
latency only delays the first beat (the header), cycles are counted from the
cycle the header is accepted, and cnt_cycles/cnt_stall only count busy cycles,
which start with the header.
"""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import Event, First, ReadOnly, RisingEdge, Timer
from cocotb.simtime import get_sim_time
from cocotb.utils import get_sim_steps

from compress.image import hex_to_beats, layer_sections
from hw.config import AccelConfig
from sim.golden import COUNTERS
from sim.tb.driver import StreamDriver
from sim.tb.monitor import StreamMonitor, resolve
from sim.tb.scoreboard import Scoreboard

PERIOD_NS = 10
BUSY_FALL_LIMIT = 64        # cycles allowed between the last output beat and busy low
GRACE_CYCLES = 8            # cycles watched after busy falls for extra output beats


def load_beats(path: str, bus: int) -> list[int]:
    p = Path(path)
    if p.suffix == ".hex":
        beats = hex_to_beats(p.read_text(), bus, str(p))
    else:
        beats = np.load(p)
    beats = np.ascontiguousarray(beats, np.uint8).reshape(-1, bus // 8)
    if bus == 64:
        return beats.view("<u8").reshape(-1).tolist()
    return [int.from_bytes(row.tobytes(), "little") for row in beats]


def _write_json(path: Path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _section_of(sections: dict, beat: int) -> str:
    for name, (first, n) in sections.items():
        if first <= beat < first + n:
            return f"{name} beat {beat - first} of {n}"
    return "past the end"


async def _read_counters(dut) -> dict:
    out = {}
    for k in COUNTERS:
        v = resolve(getattr(dut, f"cnt_{k}").value)
        out[k] = v if isinstance(v, int) else None
    return out


@cocotb.test()
async def run_layers(dut):
    job = json.loads(Path(os.environ["SSVQ_TB_JOB"]).read_text())
    cfg = AccelConfig.from_dict(job["config"])
    seed, p, latency = int(job["seed"]), float(job["stall_prob"]), int(job["latency"])
    simulator = job.get("simulator") or cocotb.SIM_NAME
    dut._log.info("ssvq testbench: seed=%d stall_prob=%g latency=%d simulator=%s (%s %s)",
                  seed, p, latency, simulator, cocotb.SIM_NAME, cocotb.SIM_VERSION)
    period = get_sim_steps(PERIOD_NS, "ns")
    Clock(dut.clk, PERIOD_NS, unit="ns").start()
    edge, ro = RisingEdge(dut.clk), ReadOnly()

    dut.rst.value = 1
    dut.i_stream__valid.value = 0
    dut.o_stream__ready.value = 0
    for _ in range(4):
        await edge
    dut.rst.value = 0
    await edge

    current: dict = {"sb": None, "stray": []}

    def on_beat(value, cycle):
        sb = current["sb"]
        if sb is None:
            current["stray"].append((value, cycle))
        else:
            sb.on_beat(value, cycle)

    driver = StreamDriver(dut, "i_stream", random.Random(f"{seed}:in"), p, latency, period)
    monitor = StreamMonitor(dut, "o_stream", random.Random(f"{seed}:out"), p, period, on_beat)
    monitor.watch = True
    driver.start()
    monitor.start()

    failed: list[str] = []
    results = []
    aborted = None
    for layer in job["layers"]:
        out_dir = Path(layer["out_dir"])
        base = {"name": layer["name"], "mode": layer["mode"], "rows": layer["rows"],
                "cols": layer["cols"], "simulator": simulator,
                "simulator_version": f"{cocotb.SIM_NAME} {cocotb.SIM_VERSION}",
                "config": cfg.to_dict(), "seed": seed, "stall_prob": p, "latency": latency}
        if aborted:
            res = {**base, "passed": False, "bit_exact": False, "error": aborted}
            _write_json(out_dir / "result.json", res)
            results.append(res)
            failed.append(f"{layer['name']}: not run")
            continue
        res, ok_to_continue = await _run_layer(dut, cfg, layer, base, driver, monitor,
                                                current, period, p, latency)
        results.append(res)
        if not res["passed"]:
            failed.append(f"{layer['name']}: {res.get('error') or '; '.join(res['problems'][:3])}")
        if not ok_to_continue:
            aborted = f"not run: layer {layer['name']!r} before it left the DUT in an unknown state"

    driver.stop()
    monitor.stop()
    assert not failed, "layers failed:\n  " + "\n  ".join(failed)


async def _run_layer(dut, cfg, layer, base, driver, monitor, current, period, p, latency):
    t0 = time.perf_counter()
    edge, ro = RisingEdge(dut.clk), ReadOnly()
    out_dir = Path(layer["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("result.json", "outputs.npy"):
        (out_dir / stale).unlink(missing_ok=True)
    name, mode, rows, cols = layer["name"], layer["mode"], int(layer["rows"]), int(layer["cols"])
    beats = load_beats(layer["beats"], cfg.bus)
    expected = np.load(layer["expected"])
    counters_model = layer.get("counters")
    cycles_model = counters_model["cycles"] if counters_model else None
    timing_checked = p == 0.0
    sb = Scoreboard(cfg, name, mode, rows, cols, expected, layer.get("out_cycles"),
                    counters_model, timing_checked, dut._log)
    done = Event()
    sb.on_done = done.set
    current["sb"] = sb
    current["stray"] = []
    n_stalled_before = len(monitor.stalled)
    problems: list[str] = []
    error = None
    continue_ok = True

    # wall-clock and cycle limit for the layer
    base_cycles = max(cycles_model or 0, len(beats)) + latency + 1000
    limit = base_cycles * (3 if p == 0 else int(3 / (1 - min(p, 0.95)) ** 2) + 1)

    start_cycle = get_sim_time() // period

    def on_header(cycle):
        sb.header_cycle = cycle
    driver.on_first = on_header
    driver.send(beats)
    await First(done.wait(), Timer(limit * period, unit="step"))
    if sb.header_cycle is None:
        error = f"timeout: the header beat was not accepted within {limit} cycles"
        continue_ok = False
    elif not sb.done:
        sections = layer_sections(cfg, mode, rows, cols)
        pos = driver.position
        error = (f"timeout after {limit} cycles: input stream accepted {pos} of "
                 f"{len(beats)} beats (next: {_section_of(sections, pos)}), output stream "
                 f"delivered {len(sb.observed)} of {len(sb.expected)} beats")
        continue_ok = False
    counters_rtl = None
    busy_fall = None
    if error is None:
        # busy must fall right after the last output beat; counters are final then
        await edge
        for i in range(BUSY_FALL_LIMIT):
            await ro
            if str(dut.busy.value) == "0":
                busy_fall = i
                break
            await edge
        if busy_fall is None:
            problems.append(f"busy still high {BUSY_FALL_LIMIT} cycles after the last output beat")
            continue_ok = False
        else:
            if busy_fall != 0:
                problems.append(f"busy fell {busy_fall} cycles late (expected low in the cycle "
                                f"after the last output beat is accepted)")
            counters_rtl = await _read_counters(dut)
        driver.watch = False
        for _ in range(GRACE_CYCLES):
            await edge
    current["sb"] = None
    for value, cyc in current["stray"]:
        sb.on_beat(value, cyc)      # counted as extra beats of this layer

    # ---- results
    hdr, last = sb.header_cycle, sb.last_cycle
    cycles_tb = last - hdr + 1 if (hdr is not None and last is not None and sb.done) else None
    stall_tb = None
    if cycles_tb is not None:
        idle = {c for c in driver.layer["idle_ready"] if hdr <= c <= last}
        outs = {c for c in monitor.stalled[n_stalled_before:] if hdr <= c <= last}
        stall_tb = len(idle | outs)
    stalls_injected = p > 0 and (driver.layer["gaps"] > 0 or len(monitor.stalled) > n_stalled_before)
    out_cycles_match, counters_match, cproblems = sb.check_counters(
        counters_rtl, cycles_tb, stall_tb, stalls_injected)
    problems += cproblems
    summ = sb.summary()
    y = sb.outputs()
    np.save(out_dir / "outputs.npy", y)
    if summ["missing_beats"]:
        problems.append(f"{summ['missing_beats']} output beats missing")
    if summ["extra_beats"]:
        problems.append(f"{summ['extra_beats']} extra output beats")
    if summ["beat_mismatches"]:
        problems.append(f"{summ['beat_mismatches']} output beats differ ({summ['mismatches']} "
                        f"values); first: {sb.messages[0] if sb.messages else ''}")
    if sb.timing_mismatches:
        problems.append(f"{sb.timing_mismatches} output beats off the golden cycle")
    if driver.layer["accepted"] != len(beats):
        problems.append(f"input stream accepted {driver.layer['accepted']} of {len(beats)} beats")
    passed = (error is None and summ["bit_exact"] and not problems
              and out_cycles_match is not False and counters_match is True)
    res = {**base, **summ,
           "timing_checked": timing_checked,
           "cycles_rtl": counters_rtl.get("cycles") if counters_rtl else None,
           "cycles_tb": cycles_tb, "cycles_model": cycles_model,
           "counters_rtl": counters_rtl, "counters_model": counters_model,
           "out_cycles_match": out_cycles_match, "counters_match": counters_match,
           "stall_tb": stall_tb,
           "stall_match": (counters_rtl.get("stall") == stall_tb) if counters_rtl and stall_tb is not None else None,
           "input_beats": len(beats), "input_gaps": driver.layer["gaps"],
           "header_cycle": hdr, "start_cycle": start_cycle,
           "busy_fall_delay": busy_fall,
           "passed": bool(passed), "error": error, "problems": problems,
           "messages": sb.messages,
           "wall_seconds": round(time.perf_counter() - t0, 3)}
    _write_json(out_dir / "result.json", res)
    lvl = dut._log.info if passed else dut._log.error
    lvl("layer %s (%s %dx%d): %s, %s cycles (model %s), %.2f s", name, mode, rows, cols,
        "PASS" if passed else "FAIL", res["cycles_rtl"], cycles_model, res["wall_seconds"])
    return res, continue_ok
