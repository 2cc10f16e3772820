"""Energy estimate of a layer from its access counts: one per-access table, in one place.

Source of the per-access energies: M. Horowitz, "Computing's energy problem (and what
we can do about it)", ISSCC 2014, 45 nm, 0.9 V -- the figures as Han et al. use them
for EIE ("EIE: Efficient Inference Engine on Compressed Deep Neural Network", ISCA 2016,
Table I; also "Learning both Weights and Connections", NeurIPS 2015, Table 1):

    access / operation                      pJ      charged here for
    DRAM, one 32-bit word                   640     every bit of every input stream (header, codebook,
                                                    params, acts, weights, as streamed with padding)
                                                    and of the output stream: 640 / 32 = 20 pJ per bit
    SRAM (8 KB), one 32-bit read            5       codebook / activation / params memory reads and,
                                                    at the same cost per 32-bit word, their writes
                                                    while a layer loads
    8-bit integer multiply                  0.2     every MAC product (9x8-bit, one per multiplier per
                                                    weight group, column padding included) and every
                                                    coefficient x codeword product (coef_bits > 0)
    32-bit integer add                      0.1     every accumulate (the 40-bit accumulator) and the
                                                    per-row bias add
    8-bit integer add                       0.03    the sum of the m = 2 codewords of an additive decode
    32-bit integer multiply                 3.1     the per-row requantization multiply

Access counts (per layer on build `cfg`, from cfg.geometry and the golden timing's
stream beats, the same numbers sim.cost charges):

    dram_bits          sum of the input streams' beats x bus + output beats x bus
    sram_write_bits    codebook m*k*d*8 + params rows*64 + acts G*mults*8 (loaded once per layer)
    sram_read_bits     per weight group (rows*G of them): the activation word (mults*8 bits)
                       and, for vq/ssvq, m codewords per lane (m*mults*8 bits); per row its
                       64-bit params record
    macs               rows * G * mults
    coef_mults         vq/ssvq with coefficients: rows * G * mults * m
    codeword_adds      vq/ssvq with m = 2: rows * G * mults * (m - 1)
    rows               requantizations (one 32-bit multiply + one 32-bit add each)

SRAM bits are charged as ceil(bits / 32) words per access kind and layer. Not charged:
registers, the gearbox and control logic, leakage, the FPGA's own overheads (the table
is ASIC 45 nm; on an ECP5 every figure is higher, the ratios are what the sweep compares).
"""
from __future__ import annotations

from dataclasses import dataclass

from sim import golden
from ssvq.config import ACT_BITS, CW_BITS, PARAM_BITS, SECTIONS, AccelConfig, LayerConfig

SOURCE = ("M. Horowitz, \"Computing's energy problem (and what we can do about it)\", "
          "ISSCC 2014, 45 nm; per-access figures as used by Han et al., EIE (ISCA 2016)")

# pJ per access (see the module docstring for what each is charged for)
PJ = {
    "dram_32b": 640.0,
    "sram_32b": 5.0,
    "mult_8b": 0.2,
    "add_32b": 0.1,
    "add_8b": 0.03,
    "mult_32b": 3.1,
}
PJ_PER_DRAM_BIT = PJ["dram_32b"] / 32
PARTS = ("dram", "sram", "mac", "decode", "requant")


@dataclass(frozen=True)
class LayerEnergy:
    counts: dict        # access kind -> count (see module docstring)
    pj: dict            # PARTS -> pJ

    @property
    def total_pj(self) -> float:
        return sum(self.pj.values())

    def to_dict(self) -> dict:
        return {"counts": dict(self.counts), "pj": dict(self.pj), "total_pj": self.total_pj}


def _words(bits: int) -> int:
    return -(-bits // 32)


def access_counts(cfg: AccelConfig, lc: LayerConfig, rows: int, cols: int) -> dict:
    """The access counts of one layer (module docstring)."""
    lc = LayerConfig.parse(lc) if isinstance(lc, str) else lc
    t = golden.timing(cfg, lc, rows, cols)
    geo = cfg.geometry(lc, rows, cols)
    groups = rows * geo.groups_per_row
    cb = lc.mode != "int"
    dram_bits = (sum(t.counters[s] for s in SECTIONS) + t.counters["out"]) * cfg.bus
    sram_write = ((lc.m * lc.k * lc.d * CW_BITS if cb else 0) + rows * PARAM_BITS
                  + geo.groups_per_row * cfg.mults * ACT_BITS)
    sram_read = (groups * cfg.mults * ACT_BITS
                 + (groups * lc.m * cfg.mults * CW_BITS if cb else 0)
                 + rows * PARAM_BITS)
    macs = groups * cfg.mults
    return {"dram_bits": dram_bits, "sram_write_words": _words(sram_write),
            "sram_read_words": _words(sram_read), "macs": macs,
            "coef_mults": macs * lc.m if cb and lc.coef_bits else 0,
            "codeword_adds": macs * (lc.m - 1) if cb else 0,
            "requants": rows}


def layer_energy(cfg: AccelConfig, lc, rows: int, cols: int) -> LayerEnergy:
    c = access_counts(cfg, lc, rows, cols)
    pj = {"dram": c["dram_bits"] * PJ_PER_DRAM_BIT,
          "sram": (c["sram_write_words"] + c["sram_read_words"]) * PJ["sram_32b"],
          "mac": c["macs"] * (PJ["mult_8b"] + PJ["add_32b"]),
          "decode": c["coef_mults"] * PJ["mult_8b"] + c["codeword_adds"] * PJ["add_8b"],
          "requant": c["requants"] * (PJ["mult_32b"] + PJ["add_32b"])}
    return LayerEnergy(c, pj)


def model_energy(cfg: AccelConfig, layers) -> LayerEnergy:
    """layers: [(name, LayerConfig or name, rows, cols)]; counts and pJ summed."""
    es = [layer_energy(cfg, lc, r, c) for _, lc, r, c in layers]
    counts = {k: sum(e.counts[k] for e in es) for k in es[0].counts}
    pj = {k: sum(e.pj[k] for e in es) for k in PARTS}
    return LayerEnergy(counts, pj)
