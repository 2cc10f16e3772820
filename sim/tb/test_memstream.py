"""cocotb test: the layers of a job through `ssvq_memstream_tb` (sim/tb/memstream.v),
which feeds the streams from memory and makes the input gaps and the output
back-pressure itself, so Python wakes once per output beat and once per layer.

The job file ($SSVQ_TB_JOB) is the one sim.runner.run_job writes (see test_accel.py)
plus "stimulus": {"in", "tab", "marks", "cov"} (sim.stimulus.write_stimulus) and,
optionally, "resets": [{"layer": i, "phase": P}] — assert rst while layer i is in
phase P (header, codebook, params, acts, weights, drain, backpressure; see RESET_PHASES)
and check that the next layer runs bit-exact, cycle-exact and with clean counters.

Checks per layer (sim.tb.scoreboard): every output beat bit-exact as it appears,
its cycle against the golden timing when there are no stalls, every counter at the
end; with stalls on either side cnt_stall must equal the stall cycles the testbench
saw on the ports and the cycles its generators made (docs/ARCH.md defines cnt_stall).
"""
from __future__ import annotations

import json
import os
import time
import zlib
from pathlib import Path

import cocotb
import numpy as np
from cocotb.triggers import Event, First, ReadOnly, Timer
from cocotb.utils import get_sim_steps

from sim.coverage import mode_key
from sim.tb.monitor import resolve
from sim.tb.scoreboard import Scoreboard
from ssvq.config import COUNTERS, AccelConfig, LayerConfig
from ssvq.image import layer_sections

PERIOD_NS = 10
GRACE_CYCLES = 8
RESET_CYCLES = 3
RESET_PHASES = ("header", "codebook", "params", "acts", "weights", "drain", "backpressure")


def write_json(path: Path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def threshold(p: float) -> int:
    """Probability -> the 16-bit draw threshold of memstream.v (draw < thr)."""
    return min(65535, int(round(p * 65536)))


def seed32(seed: int, side: str) -> int:
    return zlib.crc32(f"{seed}:{side}".encode()) or 1


def _int(sig) -> int | None:
    v = resolve(sig.value)
    return v if isinstance(v, int) else None


class Layer:
    def __init__(self, cfg: AccelConfig, spec: dict, index: int, timing_checked: bool,
                 reset: str | None, log):
        self.cfg, self.spec, self.index = cfg, spec, index
        self.name, self.lc_name = spec["name"], spec["config"]
        self.lc = LayerConfig.parse(self.lc_name)
        self.rows, self.cols = int(spec["rows"]), int(spec["cols"])
        self.reset = reset
        self.out_dir = Path(spec["out_dir"])
        self.counters_model = spec.get("counters")
        self.sb = Scoreboard(cfg, self.name, spec["mode"], self.rows, self.cols,
                             np.load(spec["expected"]), spec.get("out_cycles"),
                             self.counters_model, timing_checked and reset is None, log)
        self.finished = Event()
        self.res: dict | None = None
        self.t0 = self.t1 = self.c0 = self.c1 = None
        self.got = None             # output beats accepted, when not all (timeout, reset)
        self.error = None           # why the layer has no result (timeout, not run)
        self.limit = None
        self.reset_info = None      # (where, state after reset) for a layer cut by reset
        self.extra_after_run = 0
        self.sections = layer_sections(cfg, self.lc, self.rows, self.cols)
        self.beats = sum(n for _, n in self.sections.values())


def _read_results(dut) -> dict:
    r = {k: _int(getattr(dut, f"res_{k}")) for k in COUNTERS}
    return {"counters": r,
            **{k: _int(getattr(dut, f"res_{k}")) for k in (
                "layer", "hdr_cycle", "last_cycle", "stall_ports", "stall_gen", "gaps",
                "in_beats", "status", "tlast_bad", "mismatches", "late")},
            "rd_overrun": _int(dut.rd_overrun),
            "busy": str(dut.res_busy.value)}


async def _reset_at(dut, layer: Layer, edge):
    """Waits for `layer` to reach its reset phase, then holds rst for RESET_CYCLES.
    Returns a description of where reset hit."""
    ph = layer.reset
    i = layer.index
    ro = ReadOnly()
    await edge          # the caller may be in a ReadOnly phase (a layer just ended)
    if ph in ("header", "codebook", "params", "acts", "weights"):
        first, n = layer.sections[ph]
        # header: after its first beat (so the header is half in, or being decoded);
        # otherwise in the middle of the section
        target = first + 1 if ph == "header" else first + max(0, n // 2)
        while True:
            await ro
            if _int(dut.src_layer) != i or _int(dut.src_pos) >= target:
                break
            await edge
        where = f"{ph}: input beat {_int(dut.src_pos)} of the layer's {layer.beats} accepted"
    elif ph == "drain":
        while True:         # every input beat in, output beats still to come
            await ro
            if _int(dut.src_layer) > i:
                break
            await edge
        where = f"drain: all {layer.beats} input beats in, {_int(dut.out_pos)} output beats out"
    elif ph == "backpressure":
        first, _ = layer.sections["weights"]
        while True:
            await ro
            if _int(dut.src_layer) != i or _int(dut.src_pos) >= first:
                break
            await edge
        await edge
        dut.force_bp.value = 1
        for _ in range(100000):         # wait for an output beat held by back-pressure
            await ro
            if str(dut.o_valid.value) == "1":
                break
            await edge
        for _ in range(4):
            await edge
        await ro
        where = (f"backpressure: output beat waiting, {_int(dut.src_pos)} input beats and "
                 f"{_int(dut.out_pos)} output beats of the layer through")
    else:
        raise ValueError(f"reset phase: expected one of {RESET_PHASES}, found {ph!r}")
    await edge
    dut.rst.value = 1
    for _ in range(RESET_CYCLES):
        await edge
    dut.rst.value = 0
    dut.force_bp.value = 0
    await ro
    layer.got = _int(dut.reset_out_pos)
    busy = str(dut.busy.value)
    # what reset promises (docs/ARCH.md "Reset"): busy low and counters zero; the
    # counters are read over AXI4-Lite by the testbench's read sequencer (rd_req)
    n = _int(dut.reg_events)
    await edge
    dut.rd_req.value = 1
    for _ in range(200):
        await edge
        await ro
        if _int(dut.reg_events) != n:
            break
    await edge
    dut.rd_req.value = 0
    after = {"busy": busy, "status": _int(dut.res_status),
             **{k: _int(getattr(dut, f"res_{k}")) for k in COUNTERS}}
    return where, after


@cocotb.test()
async def run_layers(dut):
    job = json.loads(Path(os.environ["SSVQ_TB_JOB"]).read_text())
    cfg = AccelConfig.from_dict(job["config"], "job config")
    seed, p, latency = int(job["seed"]), float(job["stall_prob"]), int(job["latency"])
    p_in = float(job.get("stall_prob_in", p))
    p_out = float(job.get("stall_prob_out", p))
    overlap = bool(job.get("overlap", False))
    stim = job["stimulus"]
    resets = {int(r["layer"]): r["phase"] for r in job.get("resets", [])}
    simulator = job.get("simulator") or cocotb.SIM_NAME
    dut._log.info("ssvq memstream: seed=%d stall in %g out %g latency=%d overlap=%s (%s %s), "
                  "%d layer(s), %d reset(s)", seed, p_in, p_out, latency, overlap,
                  cocotb.SIM_NAME, cocotb.SIM_VERSION, len(job["layers"]), len(resets))
    timing_checked = p_in == 0.0 and p_out == 0.0
    layers = [Layer(cfg, spec, i, timing_checked, resets.get(i), dut._log)
              for i, spec in enumerate(job["layers"])]
    for lay in layers:
        lay.out_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("result.json", "outputs.npy"):
            (lay.out_dir / stale).unlink(missing_ok=True)

    period = get_sim_steps(PERIOD_NS, "ns")
    dut.rst.value = 1
    dut.seed_load.value = 1
    dut.in_gap_thr.value = threshold(p_in)
    dut.out_bp_thr.value = threshold(p_out)
    dut.in_seed.value = seed32(seed, "in")
    dut.out_seed.value = seed32(seed, "out")
    dut.latency.value = latency
    dut.overlap.value = int(overlap)
    dut.n_layers.value = len(layers)
    dut.force_bp.value = 0
    dut.dump_cov.value = 0
    dut.rd_req.value = 0
    # the testbench's `cycle` register moves at every rising edge; its clock rises and
    # falls in one time step, which a RisingEdge(clk) trigger would not see
    edge, ro = dut.cycle.value_change, ReadOnly()
    for _ in range(4):
        await edge
    dut.rst.value = 0
    dut.seed_load.value = 0

    # Verilator calls value-change callbacks once the time step has settled; Icarus may
    # call them while other registers of the same edge are still to be updated
    settle = not cocotb.SIM_NAME.lower().startswith("verilator")

    async def layer_ends():
        while True:
            await dut.layer_events.value_change
            if settle:
                await ro
            r = _read_results(dut)
            li = r["layer"]
            if li is not None and 0 <= li < len(layers):
                layers[li].res = r
                layers[li].finished.set()

    cocotb.start_soon(layer_ends())
    dut.check_cycles.value = int(timing_checked)

    base = {"simulator": simulator, "stimulus": "memstream",
            "simulator_version": f"{cocotb.SIM_NAME} {cocotb.SIM_VERSION}",
            "build": cfg.to_dict(), "seed": seed, "stall_prob": p, "stall_prob_in": p_in,
            "stall_prob_out": p_out, "latency": latency, "overlap": overlap}
    # ---- the run: Python waits per layer; the testbench compares every beat
    aborted = None
    t_run = time.perf_counter()
    for lay in layers:
        lay.t0, lay.c0 = time.perf_counter(), time.process_time()
        if aborted:
            lay.error, lay.got = aborted, 0
            continue
        if lay.reset:
            lay.reset_info = await _reset_at(dut, lay, edge)
            lay.t1, lay.c1 = time.perf_counter(), time.process_time()
            continue
        lay.limit = _cycle_limit(lay, p_in, p_out, latency)
        await First(lay.finished.wait(), Timer(lay.limit * period, unit="step"))
        lay.t1, lay.c1 = time.perf_counter(), time.process_time()
        if lay.res is None:
            await ro
            lay.got = _int(dut.out_pos) if _int(dut.out_layer) == lay.index else 0
            lay.error = (f"timeout after {lay.limit} cycles: output stream delivered "
                         f"{lay.got} of {len(lay.sb.expected)} beats")
            aborted = (f"not run: layer {lay.name!r} before it failed and left the DUT in "
                       f"an unknown state")
    for _ in range(GRACE_CYCLES):
        await edge
    await ro
    extra = _int(dut.extra_beats)
    sim_s = time.perf_counter() - t_run
    # ---- the accepted beats, their cycles and the coverage, written by the testbench
    await edge
    dut.dump_cov.value = 1
    for _ in range(2):
        await edge
    out_words = _read_mem(Path(stim["out"]))
    out_cyc = _read_mem(Path(stim["outcyc"]))
    from sim.coverage import read_cov_file
    hits = read_cov_file(Path(stim["cov"]), len(layers)) if Path(stim["cov"]).is_file() else None
    per = cfg.bus // 8
    failed: list[str] = []
    for lay in layers:
        start = int(stim["out_start"][lay.index])
        n = lay.got if lay.got is not None else len(lay.sb.expected)
        lay.sb.header_cycle = 0                     # cycles are counted from the header
        for k in range(n):
            lay.sb.on_beat(out_words.get(start + k, "unwritten"), out_cyc.get(start + k))
        if lay is layers[-1] and extra and not aborted:
            lay.extra_after_run = extra
        res = (_interrupted(lay, base) if lay.reset else _result(lay, base))
        if hits is not None and lay.error is None:
            res["coverage"] = {"mode": mode_key(lay.lc), "hits": hits[lay.index],
                               "has_blocks": lay.rows > per}
        write_json(lay.out_dir / "result.json", res)
        if not res["passed"]:
            failed.append(f"{lay.name}: {res.get('error') or '; '.join(res['problems'][:3])}")
    dut._log.info("memstream run: %d cycles in %.2f s (layers and checks)",
                  _int(dut.cycle) or 0, sim_s)
    assert not failed, "layers failed:\n  " + "\n  ".join(failed)


def _read_mem(path: Path) -> dict:
    """A $writememh dump -> {address: int} (unwritten words, x, are left out)."""
    out, addr = {}, 0
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("//") or not line:
            continue
        if line.startswith("@"):
            addr = int(line[1:], 16)
            continue
        for w in line.split():
            if all(c in "0123456789abcdefABCDEF" for c in w):
                out[addr] = int(w, 16)
            addr += 1
    return out


def _cycle_limit(lay: Layer, p_in: float, p_out: float, latency: int) -> int:
    base = max((lay.counters_model or {}).get("cycles", 0), lay.beats) + latency + 1000
    p = max(p_in, p_out)
    return base * (3 if p == 0 else int(3 / (1 - min(p, 0.95)) ** 2) + 1)


def _result(lay: Layer, base: dict) -> dict:
    sb = lay.sb
    r = lay.res
    error = lay.error
    problems: list[str] = []
    counters_rtl = None
    stall = None
    if r is not None:
        counters_rtl = r["counters"]
        if r["busy"] != "0":
            problems.append("busy still high in the cycle after the last output beat")
        stall = r["stall_ports"]
        if counters_rtl.get("stall") != r["stall_ports"]:
            problems.append(f"cnt_stall: expected {r['stall_ports']} (busy cycles with input "
                            f"ready and not valid or output valid and not ready, seen on the "
                            f"ports), found {counters_rtl.get('stall')}")
        if r["stall_ports"] != r["stall_gen"]:
            problems.append(f"stall cycles on the ports ({r['stall_ports']}) differ from the "
                            f"stall cycles the generators made ({r['stall_gen']})")
        if r["status"] is None or r["status"] & 0xF04:
            problems.append(f"STATUS after the layer: error {(r['status'] or 0) >> 2 & 1}, "
                            f"cause {(r['status'] or 0) >> 8 & 15} (expected none)")
        if r["tlast_bad"]:
            problems.append(f"{r['tlast_bad']} output beats with the wrong m_axis_tlast "
                            f"(expected high on the layer's last beat only)")
        if r["rd_overrun"]:
            problems.append("a layer finished while the testbench was still reading the "
                            "previous layer's counters")
        if r["in_beats"] != lay.beats:
            problems.append(f"input stream accepted {r['in_beats']} of {lay.beats} beats")
        # the testbench's comparator and the scoreboard must agree beat for beat
        if r["mismatches"] != sb.beat_mismatches:
            problems.append(f"the testbench counted {r['mismatches']} output beats differing "
                            f"from golden, the scoreboard {sb.beat_mismatches}")
        if sb.timing_checked and r["late"] != sb.timing_mismatches:
            problems.append(f"the testbench counted {r['late']} output beats off their golden "
                            f"cycle, the scoreboard {sb.timing_mismatches}")
    if lay.extra_after_run:
        problems.append(f"{lay.extra_after_run} extra output beats after the run")
    last = sb.last_cycle
    cycles_tb = last + 1 if (last is not None and sb.done) else None
    out_cycles_match, counters_match, cproblems = sb.check_counters(
        counters_rtl, cycles_tb, stall, False)
    problems += cproblems
    summ = sb.summary()
    np.save(lay.out_dir / "outputs.npy", sb.outputs())
    problems += sb.output_problems(missing=error is None)
    passed = (error is None and summ["bit_exact"] and not problems
              and out_cycles_match is not False and counters_match is True)
    wall = (lay.t1 - lay.t0) if lay.t1 is not None else None
    cpu = (lay.c1 - lay.c0) if lay.c1 is not None else None
    res = {"name": lay.name, "config": lay.lc_name, "mode": lay.spec["mode"], "rows": lay.rows,
           "cols": lay.cols, **base, **summ,
           "timing_checked": sb.timing_checked,
           "cycles_rtl": counters_rtl.get("cycles") if counters_rtl else None,
           "cycles_tb": cycles_tb, "cycles_model": (lay.counters_model or {}).get("cycles"),
           "counters_rtl": counters_rtl, "counters_model": lay.counters_model,
           "out_cycles_match": out_cycles_match, "counters_match": counters_match,
           "stall_tb": stall, "stall_generated": r["stall_gen"] if r else None,
           "stall_match": (counters_rtl.get("stall") == stall == r["stall_gen"]
                           if r else None),
           "tb_mismatches": r["mismatches"] if r else None,
           "tb_late": r["late"] if r else None,
           "input_beats": lay.beats, "input_gaps": r["gaps"] if r else None,
           "header_cycle": r["hdr_cycle"] if r else None,
           "busy_fall_delay": 0 if r and r["busy"] == "0" else None,
           "passed": bool(passed), "error": error, "problems": problems,
           "messages": sb.messages,
           # from the start of the wait to the layer's end (checks and writing excluded)
           "wall_seconds": round(wall, 4) if wall is not None else None,
           # CPU time of the simulator process (Verilator/Icarus and cocotb's Python):
           # the speed the machine's other load does not change
           "cpu_seconds": round(cpu, 4) if cpu is not None else None}
    (sb.log.info if passed else sb.log.error)(
        "layer %s (%s %dx%d): %s, %s cycles (model %s)", lay.name, lay.lc_name,
        lay.rows, lay.cols, "PASS" if passed else "FAIL", res["cycles_rtl"],
        res["cycles_model"])
    return res


def _interrupted(lay: Layer, base: dict) -> dict:
    """A layer cut by reset: the output beats it gave before reset must be a correct
    prefix, none may follow, and reset must leave busy low and every counter zero."""
    where, after = lay.reset_info
    sb = lay.sb
    problems = []
    if (after["busy"] != "0" or after["status"] != 0
            or any(after[k] != 0 for k in COUNTERS)):
        problems.append(f"after reset: expected busy 0 and every counter 0, found {after}")
    if sb.beat_mismatches:
        problems.append(f"{sb.beat_mismatches} output beats before the reset differ; first: "
                        f"{sb.messages[0] if sb.messages else ''}")
    res = {"name": lay.name, "config": lay.lc_name, "mode": lay.spec["mode"], "rows": lay.rows,
           "cols": lay.cols, **base, "reset": {"phase": lay.reset, "where": where,
                                               "after": after,
                                               "output_beats_before": lay.got},
           "bit_exact": sb.beat_mismatches == 0, "timing_checked": False,
           "passed": not problems, "error": None, "problems": problems,
           "wall_seconds": round(lay.t1 - lay.t0, 4)}
    (sb.log.info if not problems else sb.log.error)(
        "layer %s reset in %s: %s", lay.name, where, "ok" if not problems else problems)
    return res
