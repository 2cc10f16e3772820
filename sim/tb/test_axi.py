"""cocotb test of the top's AXI interfaces with the community's parts (cocotbext-axi):
AxiStreamSource / AxiStreamSink on s_axis / m_axis (one frame = one layer; pause
generators), AxiLiteMaster on s_axil.

The job ($SSVQ_TB_JOB, sim.runner.run_job with stimulus "axi") is the one
test_accel.py reads plus "axi": {"regs": {name: byte address} (hw/regs.rdl),
"expect": {name: value} (the build's constant registers), "bad": [{"name", "beats"
(path), "cause"}] (malformed streams), "pause_layers": number of layers (from the end)
sent with pause generators on both streams}.

Checked, in order:
  1. ID, VERSION, BUILD*, MAX_* equal the build's values; STATUS, LAYERS and every
     counter zero after rst.
  2. every layer, one frame each: the output frame bit-exact to ssvq.reference (its
     length checks m_axis_tlast: exactly on the layer's last beat), the done interrupt
     (IRQ_ENABLE.done) raised and cleared by writing 1 to IRQ_STATUS.done, LAYERS
     counting, and all eight counters read over AXI4-Lite equal to
     sim.golden.timing (with pauses: the beat counters equal, cycles >= model, stall > 0).
  3. each malformed stream: STATUS.error and .cause set, the error interrupt, the
     whole frame drained (s_axis_tready high, beats dropped: no hang), no output;
     then a soft reset clears STATUS and the next good layer runs exactly.
  4. soft reset while a layer's outputs are held by back-pressure: busy, STATUS,
     LAYERS and counters zero, no output follows, and the next layer is exact.
"""
from __future__ import annotations

import itertools
import json
import os
import random
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge, Timer

from ssvq.config import COUNTERS, AccelConfig

PERIOD_NS = 10


def write_json(path: Path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def load_bytes(path: str, bus: int) -> bytes:
    p = Path(path)
    b = p.read_bytes() if p.suffix == ".bin" else np.load(p).astype(np.uint8).tobytes()
    assert len(b) % (bus // 8) == 0
    return b


def pauses(seed: str, p: float):
    rng = random.Random(seed)
    return (int(rng.random() < p) for _ in itertools.count())


class Bench:
    def __init__(self, dut, cfg: AccelConfig, regs: dict):
        from cocotbext.axi import (AxiLiteBus, AxiLiteMaster, AxiStreamBus, AxiStreamSink,
                                   AxiStreamSource)
        self.dut, self.cfg, self.regs = dut, cfg, regs
        self.src = AxiStreamSource(AxiStreamBus.from_prefix(dut, "s_axis"), dut.clk, dut.rst)
        self.sink = AxiStreamSink(AxiStreamBus.from_prefix(dut, "m_axis"), dut.clk, dut.rst)
        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst)
        self.problems: list[str] = []

    async def rd(self, name: str) -> int:
        return await self.axil.read_dword(self.regs[name])

    async def wr(self, name: str, value: int):
        await self.axil.write_dword(self.regs[name], value)

    async def counters(self) -> dict:
        return {c: await self.rd(f"CNT_{c.upper()}") for c in COUNTERS}

    def check(self, ok: bool, what: str):
        if not ok:
            self.problems.append(what)
            self.dut._log.error(what)

    async def wait_irq(self, limit: int) -> bool:
        if str(self.dut.irq.value) == "1":
            return True
        for _ in range(limit):
            await RisingEdge(self.dut.clk)
            if str(self.dut.irq.value) == "1":
                return True
        return False

    async def soft_reset(self):
        await self.wr("CTRL", 1)
        await ClockCycles(self.dut.clk, 2)


def unpause(b: "Bench"):
    """No pauses on either stream. (cocotbext-axi's clear_pause_generator leaves
    `pause` at the generator's last value: a sink could stay paused for good.)"""
    for port in (b.src, b.sink):
        port.clear_pause_generator()
        port.pause = False


async def run_layer(b: Bench, spec: dict, paused: bool, seed: int) -> dict:
    cfg, dut = b.cfg, b.dut
    from cocotbext.axi import AxiStreamFrame
    name = spec["name"]
    b.problems = []
    if paused:
        b.src.set_pause_generator(pauses(f"{seed}:{name}:in", 0.3))
        b.sink.set_pause_generator(pauses(f"{seed}:{name}:out", 0.3))
    else:
        unpause(b)
    layers0 = await b.rd("LAYERS")
    data = load_bytes(spec["beats"], cfg.bus)
    await b.src.send(AxiStreamFrame(data))
    limit = 20 * (len(data) // (cfg.bus // 8) + spec["counters"]["cycles"]) + 2000
    task = cocotb.start_soon(b.sink.recv())
    await First(task, Timer(limit * PERIOD_NS, unit="ns"))
    got = task.result() if task.done() else None
    if not task.done():
        task.cancel()
    res = {"name": name, "config": spec["config"], "mode": spec["mode"], "rows": spec["rows"],
           "cols": spec["cols"], "paused": paused}
    if not hasattr(got, "tdata"):
        b.check(False, f"{name}: no output frame within {limit} cycles")
        res.update(passed=False, error="timeout", problems=b.problems)
        return res
    y = np.load(spec["expected"]).astype(np.int8)
    per = cfg.bus // 8
    want = np.zeros(-(-len(y) // per) * per, np.int8)
    want[:len(y)] = y
    out = np.frombuffer(bytes(got.tdata), np.int8)
    b.check(len(out) == len(want), f"{name}: output frame of {len(out)} bytes, expected "
            f"{len(want)} (m_axis_tlast on the layer's last beat only)")
    n = min(len(out), len(want))
    bit_exact = len(out) == len(want) and bool(np.array_equal(out, want))
    b.check(bit_exact, f"{name}: output differs from ssvq.reference in "
            f"{int(np.sum(out[:n] != want[:n]))} bytes")
    b.check(await b.wait_irq(200), f"{name}: no irq after the layer (IRQ_ENABLE.done)")
    st = await b.rd("IRQ_STATUS")
    b.check(st & 1 == 1, f"{name}: IRQ_STATUS {st:#x}, expected done set")
    await b.wr("IRQ_STATUS", 1)                 # W1C
    await ClockCycles(dut.clk, 1)
    b.check(str(dut.irq.value) == "0" and (await b.rd("IRQ_STATUS")) & 1 == 0,
            f"{name}: irq / IRQ_STATUS.done not cleared by writing 1")
    status = await b.rd("STATUS")
    b.check(status == 0b010, f"{name}: STATUS {status:#x}, expected done only")
    b.check(await b.rd("LAYERS") == layers0 + 1, f"{name}: LAYERS did not count the layer")
    cnt = await b.counters()
    model = spec["counters"]
    if paused:
        for c in ("header", "codebook", "params", "acts", "weights", "out"):
            b.check(cnt[c] == model[c], f"{name}: CNT_{c.upper()} {cnt[c]}, model {model[c]}")
        b.check(cnt["cycles"] >= model["cycles"] and cnt["stall"] > 0,
                f"{name}: with pauses CNT_CYCLES {cnt['cycles']} (model {model['cycles']}), "
                f"CNT_STALL {cnt['stall']}")
    else:
        b.check(cnt == model, f"{name}: counters {cnt}, model {model}")
    res.update(counters_rtl=cnt, counters_model=model, bit_exact=bit_exact,
               counters_match=cnt == model, passed=not b.problems, error=None,
               problems=list(b.problems))
    return res


async def bad_stream(b: Bench, bad: dict, good: dict) -> list[str]:
    from cocotbext.axi import AxiStreamFrame
    dut, cfg = b.dut, b.cfg
    b.problems = []
    unpause(b)
    await b.wr("IRQ_ENABLE", 0b10)               # error interrupt only
    data = load_bytes(bad["beats"], cfg.bus)
    frames = bad.get("frames") or [len(data) // (cfg.bus // 8)]
    pos = 0
    for nb in frames:                            # tlast cases: several frames
        await b.src.send(AxiStreamFrame(data[pos:pos + nb * (cfg.bus // 8)]))
        pos += nb * (cfg.bus // 8)
    b.check(await b.wait_irq(5000), f"{bad['name']}: no error interrupt")
    task = cocotb.start_soon(b.src.wait())
    await First(task, Timer(20 * len(data) * PERIOD_NS, unit="ns"))
    if not task.done():
        task.cancel()
    b.check(b.src.empty() and b.src.idle(),
            f"{bad['name']}: the input did not drain after the error (hang)")
    status = await b.rd("STATUS")
    b.check(status >> 2 & 1 == 1 and status >> 8 & 15 == bad["cause"],
            f"{bad['name']}: STATUS {status:#x}, expected error with cause {bad['cause']}")
    b.check((await b.rd("IRQ_STATUS")) & 2 == 2, f"{bad['name']}: IRQ_STATUS.error not set")
    await ClockCycles(dut.clk, 50)
    b.check(b.sink.empty() or bad["cause"] >= 11,
            f"{bad['name']}: output beats after a bad header")
    await b.soft_reset()
    b.sink.clear()
    status = await b.rd("STATUS")
    b.check(status == 0 and await b.rd("LAYERS") == 0 and await b.rd("IRQ_STATUS") == 0,
            f"{bad['name']}: after soft reset STATUS {status:#x}, expected 0")
    await b.wr("IRQ_ENABLE", 0b11)
    r = await run_layer(b, good, False, 0)
    b.problems += [f"after {bad['name']}: {p}" for p in r["problems"]]
    return b.problems


async def reset_in_drain(b: Bench, spec: dict, good: dict) -> list[str]:
    """Soft reset while the layer's output is held by back-pressure."""
    from cocotbext.axi import AxiStreamFrame
    dut, cfg = b.dut, b.cfg
    b.problems = []
    b.sink.pause = True
    await b.src.send(AxiStreamFrame(load_bytes(spec["beats"], cfg.bus)))
    await b.src.wait()
    for _ in range(spec["counters"]["cycles"] + 100):
        await RisingEdge(dut.clk)
        if str(dut.m_axis_tvalid.value) == "1":
            break
    b.check(str(dut.m_axis_tvalid.value) == "1", "soft reset test: no output beat waiting")
    await b.soft_reset()
    b.check(str(dut.m_axis_tvalid.value) == "0" and str(dut.busy.value) == "0",
            "after soft reset: m_axis_tvalid or busy still high")
    status = await b.rd("STATUS")
    cnt = await b.counters()
    b.check(status == 0 and all(v == 0 for v in cnt.values()) and await b.rd("LAYERS") == 0,
            f"after soft reset: STATUS {status:#x}, counters {cnt}")
    b.sink.pause = False
    await ClockCycles(dut.clk, 20)
    b.check(b.sink.empty(), "output beats after the soft reset")
    r = await run_layer(b, good, False, 0)
    b.problems += [f"after the soft reset: {p}" for p in r["problems"]]
    return b.problems


@cocotb.test()
async def axi_interfaces(dut):
    job = json.loads(Path(os.environ["SSVQ_TB_JOB"]).read_text())
    cfg = AccelConfig.from_dict(job["config"], "job config")
    axi = job["axi"]
    regs = axi["regs"]
    Clock(dut.clk, PERIOD_NS, unit="ns").start()
    dut.rst.value = 1
    b = Bench(dut, cfg, regs)
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)
    failed = []
    # 1. identification and build registers, clean state after rst
    for name, want in axi["expect"].items():
        got = await b.rd(name)
        if got != want:
            failed.append(f"register {name}: {got:#x}, expected {want:#x}")
    for name in ["STATUS", "LAYERS", "IRQ_STATUS"] + [f"CNT_{c.upper()}" for c in COUNTERS]:
        if await b.rd(name) != 0:
            failed.append(f"register {name} not 0 after rst")
    await b.wr("IRQ_ENABLE", 0b11)
    if await b.rd("IRQ_ENABLE") != 0b11:
        failed.append("IRQ_ENABLE does not read back")
    # 2. layers
    layers = job["layers"]
    n_pause = int(axi.get("pause_layers", 0))
    for i, spec in enumerate(layers):
        r = await run_layer(b, spec, i >= len(layers) - n_pause, int(job["seed"]))
        write_json(Path(spec["out_dir"]) / "result.json", r)
        failed += r["problems"]
    # 3. malformed streams, 4. soft reset
    extra = {}
    for bad in axi.get("bad", []):
        probs = await bad_stream(b, bad, layers[0])
        extra[bad["name"]] = probs
        failed += probs
    if layers:
        probs = await reset_in_drain(b, layers[-1], layers[0])
        extra["soft_reset_in_drain"] = probs
        failed += probs
    write_json(Path(job["axi"]["report"]), extra)
    assert not failed, "\n  ".join(["AXI test failed:"] + failed)
