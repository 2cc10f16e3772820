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
from cocotb.triggers import Event, First, ReadOnly, RisingEdge, Timer
from cocotb.utils import get_sim_steps

from sim.coverage import BINS_PER_LAYER, layer_hits, mode_key
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
        self.t0 = None
        self.sections = layer_sections(cfg, self.lc, self.rows, self.cols)
        self.beats = sum(n for _, n in self.sections.values())


def _read_results(dut) -> dict:
    r = {k: _int(getattr(dut, f"res_{k}")) for k in COUNTERS}
    return {"counters": r,
            **{k: _int(getattr(dut, f"res_{k}")) for k in (
                "layer", "hdr_cycle", "last_cycle", "stall_ports", "stall_gen", "gaps",
                "in_beats", "status", "tlast_bad")},
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
    edge, ro = RisingEdge(dut.clk), ReadOnly()
    for _ in range(4):
        await edge
    dut.rst.value = 0
    dut.seed_load.value = 0

    stray: list = []

    async def outputs():
        """Every accepted output beat, routed to its layer as it appears."""
        seen = 0
        while True:
            await dut.out_count.value_change
            await ro
            n = _int(dut.out_count)
            if n != seen + 1:
                raise AssertionError(f"output beats counted {seen} -> {n} in one step")
            seen = n
            value, cyc = resolve(dut.out_data.value), _int(dut.out_cycle)
            li = _int(dut.out_layer)
            pos = _int(dut.out_pos)
            li = li - 1 if pos == 0 else li       # the layer's last beat moved out_layer on
            if 0 <= li < len(layers):
                lay = layers[li]
                if lay.sb.header_cycle is None:
                    lay.sb.header_cycle = _int(dut.hdr_cycle)
                lay.sb.on_beat(value, cyc)
            else:
                stray.append((value, cyc))

    async def layer_ends():
        seen = 0
        while True:
            await dut.layer_events.value_change
            await ro
            seen += 1
            r = _read_results(dut)
            li = r["layer"]
            if li is not None and 0 <= li < len(layers):
                layers[li].res = r
                layers[li].finished.set()

    cocotb.start_soon(outputs())
    cocotb.start_soon(layer_ends())

    base = {"simulator": simulator, "stimulus": "memstream",
            "simulator_version": f"{cocotb.SIM_NAME} {cocotb.SIM_VERSION}",
            "build": cfg.to_dict(), "seed": seed, "stall_prob": p, "stall_prob_in": p_in,
            "stall_prob_out": p_out, "latency": latency, "overlap": overlap}
    failed: list[str] = []
    aborted = None
    t_run = time.perf_counter()
    for lay in layers:
        lay.t0 = time.perf_counter()
        if aborted:
            res = {"name": lay.name, "config": lay.lc_name, "mode": lay.spec["mode"],
                   "rows": lay.rows, "cols": lay.cols, **base, "passed": False,
                   "bit_exact": False, "error": aborted}
            write_json(lay.out_dir / "result.json", res)
            failed.append(f"{lay.name}: not run")
            continue
        if lay.reset:
            res = await _interrupted(dut, lay, base, edge)
        else:
            limit = _cycle_limit(lay, p_in, p_out, latency)
            await First(lay.finished.wait(), Timer(limit * period, unit="step"))
            res = _result(lay, base, limit)
        if not res["passed"]:
            failed.append(f"{lay.name}: {res.get('error') or '; '.join(res['problems'][:3])}")
            if res.get("error"):
                aborted = (f"not run: layer {lay.name!r} before it failed and left the DUT "
                           f"in an unknown state")
    for _ in range(GRACE_CYCLES):
        await edge
    if stray and layers and not aborted:
        lay = layers[-1]
        for value, cyc in stray:
            lay.sb.on_beat(value, cyc)
        failed.append(f"{lay.name}: {len(stray)} output beats after the last layer")
        r = json.loads((lay.out_dir / "result.json").read_text())
        r["passed"] = False
        r.setdefault("problems", []).append(f"{len(stray)} extra output beats after the run")
        write_json(lay.out_dir / "result.json", r)
    # coverage: the testbench's per-layer bins
    dut.dump_cov.value = 1
    for _ in range(2):
        await edge
    cov_path = Path(stim["cov"])
    if cov_path.is_file():
        from sim.coverage import read_cov_file
        hits = read_cov_file(cov_path, len(layers))
        per = cfg.bus // 8
        for lay, h in zip(layers, hits):
            rp = lay.out_dir / "result.json"
            if not rp.is_file():
                continue
            r = json.loads(rp.read_text())
            r["coverage"] = {"mode": mode_key(lay.lc), "hits": h,
                             "has_blocks": lay.rows > per}
            write_json(rp, r)
    dut._log.info("memstream run: %d cycles in %.2f s of layer time",
                  _int(dut.cycle) or 0, time.perf_counter() - t_run)
    assert not failed, "layers failed:\n  " + "\n  ".join(failed)


def _cycle_limit(lay: Layer, p_in: float, p_out: float, latency: int) -> int:
    base = max((lay.counters_model or {}).get("cycles", 0), lay.beats) + latency + 1000
    p = max(p_in, p_out)
    return base * (3 if p == 0 else int(3 / (1 - min(p, 0.95)) ** 2) + 1)


def _result(lay: Layer, base: dict, limit: int, error: str | None = None) -> dict:
    sb = lay.sb
    r = lay.res
    problems: list[str] = []
    counters_rtl = None
    if error is None and r is None:
        error = (f"timeout after {limit} cycles: output stream delivered {len(sb.observed)} "
                 f"of {len(sb.expected)} beats")
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
        if r["hdr_cycle"] != sb.header_cycle:
            problems.append(f"header cycle {r['hdr_cycle']} but the first output beat was "
                            f"timed from {sb.header_cycle}")
    hdr, last = sb.header_cycle, sb.last_cycle
    cycles_tb = last - hdr + 1 if (hdr is not None and last is not None and sb.done) else None
    out_cycles_match, counters_match, cproblems = sb.check_counters(
        counters_rtl, cycles_tb, stall, False)
    problems += cproblems
    summ = sb.summary()
    np.save(lay.out_dir / "outputs.npy", sb.outputs())
    if summ["missing_beats"]:
        problems.append(f"{summ['missing_beats']} output beats missing")
    if summ["extra_beats"]:
        problems.append(f"{summ['extra_beats']} extra output beats")
    if summ["beat_mismatches"]:
        problems.append(f"{summ['beat_mismatches']} output beats differ ({summ['mismatches']} "
                        f"values); first: {sb.messages[0] if sb.messages else ''}")
    if sb.timing_mismatches:
        problems.append(f"{sb.timing_mismatches} output beats off the golden cycle")
    passed = (error is None and summ["bit_exact"] and not problems
              and out_cycles_match is not False and counters_match is True)
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
           "input_beats": lay.beats, "input_gaps": r["gaps"] if r else None,
           "header_cycle": hdr, "busy_fall_delay": 0 if r and r["busy"] == "0" else None,
           "passed": bool(passed), "error": error, "problems": problems,
           "messages": sb.messages,
           "wall_seconds": round(time.perf_counter() - lay.t0, 3)}
    write_json(lay.out_dir / "result.json", res)
    (sb.log.info if passed else sb.log.error)(
        "layer %s (%s %dx%d): %s, %s cycles (model %s), %.2f s", lay.name, lay.lc_name,
        lay.rows, lay.cols, "PASS" if passed else "FAIL", res["cycles_rtl"],
        res["cycles_model"], res["wall_seconds"])
    return res


async def _interrupted(dut, lay: Layer, base: dict, edge) -> dict:
    """A layer cut by reset: the output beats it gave before reset must be a correct
    prefix, none may follow, and reset must leave busy low and every counter zero."""
    where, after = await _reset_at(dut, lay, edge)
    sb = lay.sb
    n_before = len(sb.observed)
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
                                               "output_beats_before": n_before},
           "bit_exact": sb.beat_mismatches == 0, "timing_checked": False,
           "passed": not problems, "error": None, "problems": problems,
           "wall_seconds": round(time.perf_counter() - lay.t0, 3)}
    write_json(lay.out_dir / "result.json", res)
    (sb.log.info if not problems else sb.log.error)(
        "layer %s reset in %s: %s", lay.name, where, "ok" if not problems else problems)
    return res
