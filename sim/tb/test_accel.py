"""cocotb test: run the layers of a job back to back through one `ssvq_accel`.

The job is a JSON file named by $SSVQ_TB_JOB (written by sim.runner.run_job):

    {"config": {...AccelConfig...}, "simulator": "icarus", "seed": 1,
     "stall_prob": 0.0, "latency": 0, "overlap": false,
     "layers": [{"name", "config" (layer config name), "mode", "rows", "cols",
                 "beats":    path of the input beats (.npy uint8 (n, bus/8), or an
                             image's stream.bin / stream.hex),
                 "expected": path of the golden int8 outputs (.npy, length rows),
                 "out_cycles": golden acceptance cycle of each output beat,
                 "counters":   golden counters {name: value} (no stalls),
                 "out_dir":  where result.json and outputs.npy go}, ...]}

There is no reset between layers, so the counters must clear at each header.
By default a layer's stream starts once the previous layer has finished (busy
low). With "overlap" the memory model queues the next layer's stream right
behind the previous one's last beat, so its header waits at the input while
the previous layer still computes.

Timing is checked exactly when stall_prob == 0, whatever the latency: the
latency only delays the first beat (the header), cycles are counted from the
cycle the header is accepted, and cnt_cycles/cnt_stall only count busy cycles,
which start with the header.

Per layer, result.json and outputs.npy are written before the test fails, so
a failing run still leaves everything there is to know.
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
from cocotb.simtime import get_sim_time
from cocotb.triggers import Event, First, ReadOnly, RisingEdge, Timer
from cocotb.utils import get_sim_steps

from ssvq.config import COUNTERS, AccelConfig, LayerConfig
from ssvq.image import layer_sections
from sim.stimulus import beats_as_ints, load_beats as read_beats
from sim.tb.driver import StreamDriver
from sim.tb.monitor import StreamMonitor
from sim.tb.scoreboard import Scoreboard

PERIOD_NS = 10
BUSY_FALL_LIMIT = 64        # cycles allowed between the last output beat and busy low
GRACE_CYCLES = 8            # cycles watched after a layer for extra output beats


def load_beats(path: str, bus: int) -> list[int]:
    """A layer stream (stream.bin, stream.hex or .npy) as one int per beat."""
    return beats_as_ints(read_beats(path, bus))


def write_json(path: Path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _section_of(sections: dict, beat: int) -> str:
    for name, (first, n) in sections.items():
        if first <= beat < first + n:
            return f"{name} beat {beat - first} of {n}"
    return "past the end"


STATUS_ADDR, CNT_ADDR = 0x24, 0x40      # hw/regs.rdl (a test checks them against it)


async def _read_counters(axil) -> tuple[dict, int]:
    """The counter bank (the last finished layer's counters) and STATUS, over AXI4-Lite."""
    # all reads queued at once: they go out back to back (2 cycles each), done long
    # before even the smallest next layer could finish and overwrite the bank
    addrs = [CNT_ADDR + 4 * i for i in range(len(COUNTERS))] + [STATUS_ADDR]
    tasks = [cocotb.start_soon(axil.read_dword(a)) for a in addrs]
    vals = [await t for t in tasks]
    return dict(zip(COUNTERS, vals[:-1])), vals[-1]


class LayerRun:
    """One layer of the job: its stream, scoreboard and result."""

    def __init__(self, cfg: AccelConfig, spec: dict, timing_checked: bool, log):
        self.cfg, self.spec = cfg, spec
        self.name, self.mode, self.lc_name = spec["name"], spec["mode"], spec["config"]
        self.rows, self.cols = int(spec["rows"]), int(spec["cols"])
        self.out_dir = Path(spec["out_dir"])
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("result.json", "outputs.npy"):
            (self.out_dir / stale).unlink(missing_ok=True)
        self.counters_model = spec.get("counters")
        self.sb = Scoreboard(cfg, self.name, self.mode, self.rows, self.cols,
                             np.load(spec["expected"]), spec.get("out_cycles"),
                             self.counters_model, timing_checked, log)
        self.outputs_done = Event()
        self.sb.on_done = self.outputs_done.set
        self.transfer = None
        self.n_beats = None
        self.t0 = None

    def set_header(self, cycle: int):
        self.sb.header_cycle = cycle

    def send(self, driver: StreamDriver, on_last=None):
        beats = load_beats(self.spec["beats"], self.cfg.bus)
        self.n_beats = len(beats)
        self.t0 = time.perf_counter()
        self.transfer = driver.send(beats, on_first=self.set_header, on_last=on_last)

    def cycle_limit(self, p: float, latency: int) -> int:
        base = max((self.counters_model or {}).get("cycles", 0), self.n_beats or 0)
        base += latency + 1000
        return base * (3 if p == 0 else int(3 / (1 - min(p, 0.95)) ** 2) + 1)


@cocotb.test()
async def run_layers(dut):
    job = json.loads(Path(os.environ["SSVQ_TB_JOB"]).read_text())
    cfg = AccelConfig.from_dict(job["config"], "job config")
    seed, p, latency = int(job["seed"]), float(job["stall_prob"]), int(job["latency"])
    overlap = bool(job.get("overlap", False))
    simulator = job.get("simulator") or cocotb.SIM_NAME
    dut._log.info("ssvq testbench: seed=%d stall_prob=%g latency=%d overlap=%s simulator=%s "
                  "(%s %s), %d layer(s)", seed, p, latency, overlap, simulator,
                  cocotb.SIM_NAME, cocotb.SIM_VERSION, len(job["layers"]))
    period = get_sim_steps(PERIOD_NS, "ns")
    Clock(dut.clk, PERIOD_NS, unit="ns").start()
    edge = RisingEdge(dut.clk)

    dut.rst.value = 1
    dut.s_axis_tvalid.value = 0
    dut.m_axis_tready.value = 0
    from cocotbext.axi import AxiLiteBus, AxiLiteMaster
    axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst)
    for _ in range(4):
        await edge
    dut.rst.value = 0
    await edge

    timing_checked = p == 0.0
    runs = [LayerRun(cfg, spec, timing_checked, dut._log) for spec in job["layers"]]
    route = {"i": 0, "stray": []}

    def on_beat(value, cycle):
        i = route["i"]
        if i is None or i >= len(runs):
            route["stray"].append((value, cycle))
            return
        sb = runs[i].sb
        sb.on_beat(value, cycle)
        if overlap and sb.done:
            route["i"] = i + 1          # the next beat belongs to the next layer

    driver = StreamDriver(dut, "s_axis", random.Random(f"{seed}:in"), p, latency, period)
    monitor = StreamMonitor(dut, "m_axis", random.Random(f"{seed}:out"), p, period, on_beat)
    monitor.watch = True
    driver.start()
    monitor.start()

    def chain(i):
        # overlap: queue layer i+1 as soon as layer i's last beat is in
        if i + 1 < len(runs):
            return lambda _cycle: runs[i + 1].send(driver, on_last=chain(i + 1))
        return None

    base = {"simulator": simulator,
            "simulator_version": f"{cocotb.SIM_NAME} {cocotb.SIM_VERSION}",
            "build": cfg.to_dict(), "seed": seed, "stall_prob": p, "latency": latency,
            "overlap": overlap}
    failed: list[str] = []
    aborted = None
    if overlap and runs:
        runs[0].send(driver, on_last=chain(0))
    for i, run in enumerate(runs):
        if aborted:
            res = {"name": run.name, "config": run.lc_name, "mode": run.mode, "rows": run.rows,
                   "cols": run.cols,
                   **base, "passed": False, "bit_exact": False, "error": aborted}
            write_json(run.out_dir / "result.json", res)
            failed.append(f"{run.name}: not run")
            continue
        if not overlap:
            route["i"] = i
            route["stray"] = []
            run.send(driver)
        res, healthy = await _finish_layer(dut, run, driver, monitor, route, period, p,
                                           latency, overlap, base, axil)
        if not res["passed"]:
            failed.append(f"{run.name}: {res.get('error') or '; '.join(res['problems'][:3])}")
        if not healthy:
            aborted = (f"not run: layer {run.name!r} before it failed and left the DUT in an "
                       f"unknown state")

    driver.stop()
    monitor.stop()
    assert not failed, "layers failed:\n  " + "\n  ".join(failed)


async def _finish_layer(dut, run: LayerRun, driver, monitor, route, period, p, latency,
                        overlap, base, axil):
    edge, ro = RisingEdge(dut.clk), ReadOnly()
    sb = run.sb
    problems: list[str] = []
    error = None
    healthy = True
    while run.transfer is None:         # overlap: queued by the previous layer
        await edge
    limit = run.cycle_limit(p, latency)
    start_cycle = get_sim_time() // period
    if not sb.done:
        await First(run.outputs_done.wait(), Timer(limit * period, unit="step"))
    if sb.header_cycle is None:
        error = f"timeout: the header beat was not accepted within {limit} cycles"
        healthy = False
    elif not sb.done:
        sections = layer_sections(run.cfg, LayerConfig.parse(run.lc_name), run.rows, run.cols)
        pos = run.transfer.accepted
        error = (f"timeout after {limit} cycles: input stream accepted {pos} of "
                 f"{run.n_beats} beats (next: {_section_of(sections, pos)}), output stream "
                 f"delivered {len(sb.observed)} of {len(sb.expected)} beats")
        healthy = False
    counters_rtl = None
    busy_fall = None
    if error is None:
        # busy must be low in the cycle after the last output beat; the counters are
        # final then and the top latches them into its counter bank, which AXI4-Lite
        # reads (a queued next header clears the live counters, not the bank)
        await edge
        for k in range(BUSY_FALL_LIMIT):
            await ro
            if str(dut.busy.value) == "0":
                busy_fall = k
                break
            await edge
        if busy_fall is None:
            problems.append(f"busy still high {BUSY_FALL_LIMIT} cycles after the last output beat")
            healthy = False
        else:
            if busy_fall != 0:
                problems.append(f"busy fell {busy_fall} cycles late (expected low in the cycle "
                                f"after the last output beat is accepted)")
            counters_rtl, status = await _read_counters(axil)
            if status & 0xF04:
                problems.append(f"STATUS {status:#x}: error {status >> 2 & 1}, cause "
                                f"{status >> 8 & 15} (expected none)")
        if not overlap:
            for _ in range(GRACE_CYCLES):
                await edge
            route["i"] = None
            for value, cyc in route["stray"]:
                sb.on_beat(value, cyc)          # counted as extra beats of this layer
            route["stray"] = []

    # ---- results
    tr = run.transfer
    hdr, last = sb.header_cycle, sb.last_cycle
    if error is None and hdr is not None and last is not None:
        tl = [c for c in monitor.tlast if hdr <= c <= last]
        if tl != [last]:
            problems.append(f"m_axis_tlast high in cycles {tl[:5]}, expected only in the "
                            f"layer's last output beat's cycle {last}")
    cycles_tb = last - hdr + 1 if (hdr is not None and last is not None and sb.done) else None
    stall_tb = None
    if cycles_tb is not None:
        idle = {c for c in driver.idle_ready if hdr <= c <= last}
        outs = {c for c in monitor.stalled if hdr <= c <= last}
        stall_tb = len(idle | outs)
    stalls_injected = p > 0 and bool(stall_tb)
    out_cycles_match, counters_match, cproblems = sb.check_counters(
        counters_rtl, cycles_tb, stall_tb, stalls_injected)
    problems += cproblems
    summ = sb.summary()
    np.save(run.out_dir / "outputs.npy", sb.outputs())
    problems += sb.output_problems()
    if tr.accepted != run.n_beats:
        problems.append(f"input stream accepted {tr.accepted} of {run.n_beats} beats")
    passed = (error is None and summ["bit_exact"] and not problems
              and out_cycles_match is not False and counters_match is True)
    res = {"name": run.name, "config": run.lc_name, "mode": run.mode, "rows": run.rows,
           "cols": run.cols, **base,
           **summ,
           "timing_checked": sb.timing_checked,
           "cycles_rtl": counters_rtl.get("cycles") if counters_rtl else None,
           "cycles_tb": cycles_tb, "cycles_model": (run.counters_model or {}).get("cycles"),
           "counters_rtl": counters_rtl, "counters_model": run.counters_model,
           "out_cycles_match": out_cycles_match, "counters_match": counters_match,
           "stall_tb": stall_tb,
           "stall_match": (counters_rtl.get("stall") == stall_tb
                           if counters_rtl and stall_tb is not None else None),
           "input_beats": run.n_beats, "input_gaps": tr.gaps,
           "header_cycle": hdr, "start_cycle": start_cycle, "busy_fall_delay": busy_fall,
           "passed": bool(passed), "error": error, "problems": problems,
           "messages": sb.messages,
           "wall_seconds": round(time.perf_counter() - run.t0, 3)}
    write_json(run.out_dir / "result.json", res)
    (dut._log.info if passed else dut._log.error)(
        "layer %s (%s %dx%d): %s, %s cycles (model %s), %.2f s", run.name, run.lc_name, run.rows,
        run.cols, "PASS" if passed else "FAIL", res["cycles_rtl"], res["cycles_model"],
        res["wall_seconds"])
    return res, healthy
