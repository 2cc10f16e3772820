"""Registered block RAM and hard multiplier, portable or as ECP5 primitives.

On an ECP5 the slowest paths are an unregistered DP16KD read (about 5.8 ns clock to
output at speed grade 6) and an unregistered MULT18X18D (about 3.9 ns plus its
routing); the registered versions cost well under a nanosecond, but yosys infers
neither the block RAM's output register nor the multiplier's input and output
registers. So, when the design is elaborated for the ECP5 (`ECP5` as the platform
passed to `verilog.convert`), these two components instantiate the primitives with
their registers on; otherwise (the Amaranth simulator, other FPGAs) the same cycle
behaviour is built from `lib.memory` and fabric registers. Both flavours have the
same latency, clock enables and reset, so the timing model does not care which is
built. The generated Verilog of the ECP5 flavour is simulated with the behavioural
models in hw/prims_sim.v (yosys ships only black boxes for both primitives).
"""
from __future__ import annotations

from pathlib import Path

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Mux, ResetSignal, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

SIM_MODELS = Path(__file__).with_name("prims_sim.v")
# its name next to a generated ecp5-target Verilog (hw.verilog.generate)
PRIMS_SIM = "ssvq_prims_sim.v"


class Ecp5:
    """Platform marker: elaborate with ECP5 primitives (hw.verilog target "ecp5")."""
    ecp5_primitives = True


ECP5 = Ecp5()


def use_primitives(platform) -> bool:
    return bool(getattr(platform, "ecp5_primitives", False))


# DP16KD port widths by depth (TN1264): words of one block and the address bits
# below the word address (x18 uses AD1..0 as byte enables).
_DP16KD = ((1024, 18, 4), (2048, 9, 3), (4096, 4, 2), (8192, 2, 1), (16384, 1, 0))


def dp16kd_geometry(depth: int) -> tuple[int, int]:
    """(port width, low address bits) of the narrowest-deep DP16KD holding `depth` words."""
    for words, width, low in _DP16KD:
        if depth <= words:
            return width, low
    raise ValueError(f"DP16KD: depth {depth} above 16384 words")


def dp16kd_memory(m, mem):
    """A RecordMemory (hw.memories) as DP16KD blocks with REGMODE OUTREG on both
    ports. Each column of blocks serves two read ports: port A also takes the writes
    (its address is the write address while writing: a layer's memories are written
    only while its pipeline is empty), port B only reads. Every column gets the same
    writes."""
    pw, low = dp16kd_geometry(max(mem.depth, 2))
    cols = -(-mem.width // pw)
    abits = 14 - low
    lowbits = Const((1 << low) - 1 if pw == 18 else 0, low)   # x18: both byte enables
    wa = Signal(abits)
    m.d.comb += wa.eq(mem.w_addr)
    for pair in range(0, mem.n_read, 2):
        ra = Signal(abits, name=f"raddr{pair}")
        rb = Signal(abits, name=f"raddr{pair + 1}")
        m.d.comb += ra.eq(Mux(mem.w_en, wa, mem.r_addr[pair]))
        if pair + 1 < mem.n_read:
            m.d.comb += rb.eq(mem.r_addr[pair + 1])
        outs_a, outs_b = [], []
        for c in range(cols):
            di = Signal(18, name=f"di{pair}_{c}")
            doa = Signal(18, name=f"doa{pair}_{c}")
            dob = Signal(18, name=f"dob{pair}_{c}")
            m.d.comb += di.eq(mem.w_data[c * pw:(c + 1) * pw])
            ada, adb = Cat(lowbits, ra), Cat(lowbits, rb)
            ports = {"p_DATA_WIDTH_A": pw, "p_DATA_WIDTH_B": pw,
                     "p_REGMODE_A": "OUTREG", "p_REGMODE_B": "OUTREG",
                     "p_RESETMODE": "SYNC", "p_ASYNC_RESET_RELEASE": "SYNC",
                     "p_WRITEMODE_A": "NORMAL", "p_WRITEMODE_B": "NORMAL",
                     "p_CSDECODE_A": "0b000", "p_CSDECODE_B": "0b000", "p_GSR": "DISABLED",
                     "i_CLKA": ClockSignal(), "i_CLKB": ClockSignal(),
                     "i_CEA": mem.w_en | mem.r_en, "i_OCEA": mem.r_en, "i_WEA": mem.w_en,
                     "i_RSTA": ResetSignal(),
                     "i_CEB": mem.r_en, "i_OCEB": mem.r_en, "i_WEB": Const(0),
                     "i_RSTB": ResetSignal()}
            for k in range(3):
                ports[f"i_CSA{k}"] = ports[f"i_CSB{k}"] = Const(0)
            for k in range(14):
                ports[f"i_ADA{k}"] = ada[k]
                ports[f"i_ADB{k}"] = adb[k]
            for k in range(18):
                ports[f"i_DIA{k}"] = di[k]
                ports[f"i_DIB{k}"] = Const(0)
                ports[f"o_DOA{k}"] = doa[k]
                ports[f"o_DOB{k}"] = dob[k]
            m.submodules[f"bram{pair}_{c}"] = Instance("DP16KD", **ports)
            outs_a.append(doa[:pw])
            outs_b.append(dob[:pw])
        m.d.comb += mem.r_data[pair].eq(Cat(*outs_a)[:mem.width])
        if pair + 1 < mem.n_read:
            m.d.comb += mem.r_data[pair + 1].eq(Cat(*outs_b)[:mem.width])


class RegisteredMult(wiring.Component):
    """p = a * b (signed, each at most 18 bits), valid TWO cycles after a and b:
    input registers, then the product register; `en` clocks both."""
    LATENCY = 2

    def __init__(self, a_bits: int, b_bits: int):
        assert a_bits <= 18 and b_bits <= 18
        self.a_bits, self.b_bits = a_bits, b_bits
        super().__init__({"en": In(1), "a": In(signed(a_bits)), "b": In(signed(b_bits)),
                          "p": Out(signed(a_bits + b_bits))})

    def elaborate(self, platform):
        m = Module()
        if use_primitives(platform):
            a, b, p = Signal(signed(18)), Signal(signed(18)), Signal(36)
            m.d.comb += [a.eq(self.a), b.eq(self.b), self.p.eq(p)]
            ports = {"p_REG_INPUTA_CLK": "CLK0", "p_REG_INPUTB_CLK": "CLK0",
                     "p_REG_OUTPUT_CLK": "CLK0", "p_REG_PIPELINE_CLK": "NONE",
                     "p_REG_INPUTC_CLK": "NONE", "p_RESETMODE": "SYNC", "p_GSR": "DISABLED",
                     "p_SOURCEB_MODE": "B_SHIFT", "p_MULT_BYPASS": "DISABLED",
                     "i_CLK0": ClockSignal(), "i_CE0": self.en, "i_RST0": ResetSignal(),
                     "i_SIGNEDA": Const(1), "i_SIGNEDB": Const(1),
                     "i_SOURCEA": Const(0), "i_SOURCEB": Const(0)}
            for k in range(18):
                ports[f"i_A{k}"] = a[k]
                ports[f"i_B{k}"] = b[k]
                ports[f"i_C{k}"] = Const(0)
            for k in range(36):
                ports[f"o_P{k}"] = p[k]
            # the spare clocks, enables and resets, the shift chains and the cascade
            # outputs stay unconnected, as yosys's own DSP mapping leaves them (tied to
            # constants, nextpnr fails to route its constant net to them)
            m.submodules.mult = Instance("MULT18X18D", **ports)
            return m
        a, b = Signal.like(self.a), Signal.like(self.b)
        with m.If(self.en):
            m.d.sync += [a.eq(self.a), b.eq(self.b), self.p.eq(a * b)]
        return m
