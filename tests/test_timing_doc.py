"""Clean-room timing check: a cycle model written only from docs/ARCH.md
("Timing") and docs/FORMAT.md section 4, compared with sim.golden.timing and
with the RTL (Amaranth simulator, no stalls)."""

import math

import numpy as np
import pytest

from ssvq.config import AccelConfig, LayerConfig
from sim.golden import timing as golden_timing

DECODE_CYCLES = 12
PIPELINE_DEPTH = 31
LOAD_SECTIONS = ("codebook", "params", "acts", "weights")


def doc_timing(cfg, lc, rows, cols):
    """Return (out_cycles tuple, counters dict) per ARCH.md "Timing"."""
    bus = cfg.bus
    cap = cfg.max_record_bits + 2 * bus
    geo = cfg.geometry(lc, rows, cols)
    beats = dict(geo.beats)
    records = dict(geo.records)
    widths = dict(geo.record_bits)
    header_beats = math.ceil(128 / bus)
    # load sections of this layer (codebook skipped for int layers)
    sections = [s for s in LOAD_SECTIONS if s != "codebook" or records[s] > 0]

    per_beat = bus // 8
    out_beats = math.ceil(rows * 8 / bus)
    G = records["acts"]
    # last row of each output beat -> index of its last weight group
    last_group_of_beat = [
        (min(b * per_beat + per_beat, rows) - 1) * G + (G - 1) for b in range(out_beats)
    ]
    group_cycle = {}

    level = 0
    prev_level = 0         # level(n-1): level(-1) = 0
    # input side
    in_state, in_count = "HEADER", 0
    # consumer
    c_state, c_count, c_bits, d = "IDLE", 0, 0, 0
    n = 0
    n_groups = records["weights"]
    while len(group_cycle) < n_groups:
        assert n < 1_000_000
        # ---- input side decision (values at start of cycle n)
        accepted = 0
        next_in_state, next_in_count = in_state, in_count
        if in_state == "HEADER" or in_state in LOAD_SECTIONS:
            if prev_level + 2 * bus <= cap:
                accepted = 1
                want = header_beats if in_state == "HEADER" else beats[in_state]
                next_in_count = in_count + 1
                if next_in_count == want:
                    next_in_count = 0
                    if in_state == "HEADER":
                        next_in_state = "WAIT"
                    else:
                        i = sections.index(in_state)
                        next_in_state = sections[i + 1] if i + 1 < len(sections) else "DONE"
        # ---- consumer decision
        consumed = 0
        nc_state, nc_count, nc_bits, nd = c_state, c_count, c_bits, d
        if c_state == "DECODE":
            nd = d + 1
            if d == DECODE_CYCLES - 1:
                nd = 0
                nc_state = sections[0]
                nc_count, nc_bits = 0, 0
                assert in_state == "WAIT"
                next_in_state, next_in_count = sections[0], 0
        elif c_state in ("IDLE",) + LOAD_SECTIONS:
            sec = "header" if c_state == "IDLE" else c_state
            W = widths[sec]
            if level >= W:
                consumed = W
                nc_bits = c_bits + W
                nc_count = c_count + 1
                if sec == "weights":
                    group_cycle[c_count] = n
                if nc_count == records[sec]:
                    consumed += (-nc_bits) % bus  # padding to beat boundary
                    nc_count, nc_bits = 0, 0
                    if sec == "header":
                        nc_state, nd = "DECODE", 0
                    else:
                        i = sections.index(sec)
                        nc_state = sections[i + 1] if i + 1 < len(sections) else "DRAIN"
        # ---- gearbox
        prev_level = level
        level = level - consumed + bus * accepted
        assert 0 <= level <= cap
        in_state, in_count = next_in_state, next_in_count
        c_state, c_count, c_bits, d = nc_state, nc_count, nc_bits, nd
        n += 1

    out_cycles = tuple(group_cycle[t] + PIPELINE_DEPTH for t in last_group_of_beat)
    counters = {
        "cycles": out_cycles[-1] + 1,
        "stall": 0,
        "header": beats["header"],
        "codebook": beats["codebook"],
        "params": beats["params"],
        "acts": beats["acts"],
        "weights": beats["weights"],
        "out": out_beats,
    }
    return out_cycles, counters


DEFAULT = dict(max_rows=64, max_cols=128)
SMALL = dict(kmax=16, d_set=(2, 4), mults=8, max_rows=64, max_cols=64)

CASES = [
    (DEFAULT, "int1", 9, 70),
    (DEFAULT, "int3", 5, 40),
    (DEFAULT, "int8", 3, 33),
    (DEFAULT, "ssvq-k256-d8", 4, 64),
    (DEFAULT, "vq-k256-d4", 6, 50),
    (DEFAULT, "vq-k16-d8-m2-c4", 10, 96),
    (DEFAULT, "ssvq-k2-d4", 17, 20),
    (SMALL, "int3", 3, 10),
    (SMALL, "vq-k16-d4-m2-c4", 7, 19),
    (SMALL, "ssvq-k4-d2-m2-c3", 2, 11),
    (dict(DEFAULT, bus=128), "int4", 20, 100),
    (dict(DEFAULT, bus=128), "vq-k16-d8-m2-c4", 5, 64),
    (dict(SMALL, bus=128), "ssvq-k16-d4", 9, 30),
]
IDS = [f"{'b128-' if c.get('bus') == 128 else ''}{'small' if 'kmax' in c else 'def'}-{l}-{r}x{k}"
       for c, l, r, k in CASES]


@pytest.mark.parametrize("fields,layer,rows,cols", CASES, ids=IDS)
def test_doc_model_matches_golden(fields, layer, rows, cols):
    cfg = AccelConfig(**fields)
    lc = LayerConfig.parse(layer)
    out_cycles, counters = doc_timing(cfg, lc, rows, cols)
    g = golden_timing(cfg, lc, rows, cols)
    assert out_cycles == tuple(g.out_cycles)
    assert counters == dict(g.counters)


@pytest.mark.parametrize("fields,layer,rows,cols", CASES, ids=IDS)
def test_doc_model_matches_rtl(fields, layer, rows, cols):
    from tests.rtl_helpers import random_layer
    from tests.test_accel_amaranth import run_layers

    cfg = AccelConfig(**fields)
    lc = LayerConfig.parse(layer)
    out_cycles, counters = doc_timing(cfg, lc, rows, cols)
    rng = np.random.default_rng(rows * 1000 + cols)
    (res,) = run_layers(cfg, [random_layer(layer, rows, cols, rng, layer)])
    _img, got, exp, rtl_cycles, rtl_counters = res
    assert list(got) == list(exp)
    assert tuple(rtl_cycles) == out_cycles
    assert dict(rtl_counters) == counters
