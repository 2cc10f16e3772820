"""sim.report: report numbers against hand computations, verification of the
images before anything is written, strict validation of `ssvq sim` results."""
import hashlib
import json

import numpy as np
import pytest

from rtl_helpers import random_layer
from sim import golden
from sim.report import format_summary, read_result, write_report
from ssvq.config import COUNTERS, AccelConfig, LayerConfig
from ssvq.errors import ImageError, UserError
from ssvq.image import beats_to_hex, manifest_digest, write_images

CFG = AccelConfig()            # mults 32, bus 64
LAYERS = [("blk0.q", "ssvq-k16-d8", 4, 64), ("blk0.ffn", "int3", 3, 70),
          ("blk1.q", "vq-k16-d4-m2-c4", 3, 40)]
# Worked by hand (G = ceil(cols/32); a stream's bits = beats x 64):
#   blk0.q  ssvq-k16-d8 4x64: G=2, group = 4 lanes x 4 code bits + 32 signs = 48 bits,
#           8 groups = 384 bits = 6 beats; codebook 16 x 64 bits = 16 beats
#   blk0.ffn int3 3x70: G=3, group 96 bits, 9 groups = 864 bits -> 14 beats (32 pad)
#   blk1.q  vq-k16-d4-m2-c4 3x40: G=2, group 8 lanes x 2 x (4+4) = 128 bits, 6 groups =
#           12 beats; codebook 32 codewords x 32 bits = 16 beats
HAND_BEATS = {
    "blk0.q": dict(header=2, codebook=16, params=4, acts=8, weights=6, out=1),
    "blk0.ffn": dict(header=2, codebook=0, params=3, acts=12, weights=14, out=1),
    "blk1.q": dict(header=2, codebook=16, params=3, acts=8, weights=12, out=1),
}
HAND_FIELDS = {
    "blk0.q": dict(codes=8 * 16, coefs=0, signs=8 * 32, int_weights=0, padding=0),
    "blk0.ffn": dict(codes=0, coefs=0, signs=0, int_weights=864, padding=32),
    "blk1.q": dict(codes=6 * 64, coefs=6 * 64, signs=0, int_weights=0, padding=0),
}
HAND_BPW = {"blk0.q": (1024 + 384 + 64) / 256, "blk0.ffn": (896 + 48) / 210,
            "blk1.q": (1024 + 768 + 48) / 120}
# int8 weight beats: groups x 256 bits / 64; int4: groups x 128 / 64
HAND_BASE_WEIGHT_BEATS = {"int8": {"blk0.q": 32, "blk0.ffn": 36, "blk1.q": 24},
                          "int4": {"blk0.q": 16, "blk0.ffn": 18, "blk1.q": 12}}


def _make(tmp, name="img", cfg=CFG, layers=LAYERS, seed=0, config=None, meta=None):
    rng = np.random.default_rng(seed)
    imgs = [random_layer(config or lc, r, c, rng, n) for n, lc, r, c in layers]
    return write_images(tmp / name, cfg, imgs, layer_meta=meta)


def _result(name, lc, rows, cols, cfg=CFG, **kw):
    c = golden.timing(cfg, LayerConfig.parse(lc), rows, cols).counters
    r = dict(name=name, config=lc, mode=LayerConfig.parse(lc).mode, rows=rows, cols=cols,
             passed=True, bit_exact=True, cycles_rtl=c["cycles"], cycles_model=c["cycles"],
             counters_rtl=dict(c), counters_model=dict(c), stall_prob=0.0, error=None,
             problems=[])
    r.update(kw)
    return r


def _write_results(tmp, imgdir, which=None, tweak=None, sub="sim", config=None):
    man = json.loads((imgdir / "manifest.json").read_text())
    sim = tmp / sub
    sim.mkdir(exist_ok=True)
    for i, e in enumerate(man["layers"]):
        if which is not None and i not in which:
            continue
        lc = LayerConfig.from_dict(e["config"]).name
        r = _result(e["name"], lc, e["rows"], e["cols"])
        if tweak:
            r = tweak(i, r)
        d = sim / e["dir"].split("/")[-1]
        d.mkdir(exist_ok=True)
        (d / "result.json").write_text(r if isinstance(r, str) else json.dumps(r))
    return sim


def test_report_numbers_by_hand(tmp_path):
    img = _make(tmp_path, meta={"blk0.q": {"picked_by": "search", "rel_err": 0.1}})
    sim = _write_results(tmp_path, img, which={0, 2})
    out = tmp_path / "rep"
    s = write_report(img, out, sim_dir=sim)
    assert json.loads((out / "summary.json").read_text()) == s
    by = {r["name"]: r for r in s["layers"]}
    assert list(by) == [n for n, *_ in LAYERS]
    for n, lc, rows, cols in LAYERS:
        r = by[n]
        assert r["config"] == lc and r["shape"] == f"{rows}x{cols}"
        assert r["beats"] == HAND_BEATS[n]
        assert r["bits"] == {k: v * 64 for k, v in HAND_BEATS[n].items()}
        assert r["weight_bits"] == HAND_FIELDS[n]
        assert r["bits_per_weight"] == pytest.approx(HAND_BPW[n], rel=1e-12)
        for b in ("int8", "int4"):
            assert r["baseline_bits"][b]["weights"] == HAND_BASE_WEIGHT_BEATS[b][n] * 64
            assert r["baseline_bits"][b]["codebook"] == 0
            assert r["speedup"][b] == pytest.approx(r["baseline_cycles"][b] / r["cycles"])
        assert r["cycles"] > sum(v for k, v in HAND_BEATS[n].items() if k != "out")
        assert 0 < r["bus_utilisation"] <= 1
    assert by["blk0.ffn"]["speedup"]["int8"] > by["blk0.ffn"]["speedup"]["int4"] > 1
    # whole model
    assert s["bits"]["weights"] == (6 + 14 + 12) * 64
    assert s["bits"]["codebook"] == 32 * 64 and s["bits"]["header"] == 6 * 64
    assert s["weight_bits"] == dict(codes=128 + 384, coefs=384, signs=256, int_weights=864,
                                    padding=32)
    assert s["baseline_bits"]["int8"]["weights"] == (32 + 36 + 24) * 64
    assert s["baseline_bits"]["int4"]["weights"] == (16 + 18 + 12) * 64
    assert s["weights"] == 256 + 210 + 120
    assert s["bits_per_weight"] == pytest.approx((1472 + 944 + 1840) / 586)
    for b in ("int8", "int4"):
        assert s["speedup"][b] == pytest.approx(
            sum(r["baseline_cycles"][b] for r in s["layers"]) / sum(r["cycles"]
                                                                    for r in s["layers"]))
    # resolved configuration from the manifest
    assert s["configs"] == {"ssvq-k16-d8": 1, "int3": 1, "vq-k16-d4-m2-c4": 1}
    assert s["layer_configs"][0] == {"name": "blk0.q", "config": "ssvq-k16-d8",
                                     "fields": {"mode": "ssvq", "k": 16, "d": 8, "m": 1,
                                                "coef_bits": 0},
                                     "meta": {"picked_by": "search", "rel_err": 0.1}}
    assert s["layer_configs"][1]["fields"] == {"mode": "int", "bits": 3}
    # verification
    assert s["layers_simulated"] == 2 and s["passed"] is True
    assert s["all_bit_exact"] is True and s["all_cycle_exact"] is True
    assert by["blk0.q"]["cycles_rtl"] == by["blk0.q"]["cycles_model"] == by["blk0.q"]["cycles"]
    assert by["blk0.ffn"]["simulated"] is False and by["blk0.ffn"]["cycles_rtl"] is None
    assert not s["build_widened"] and s["baseline_source"] == "cost model"
    # files
    for f in ("speedup_per_layer.png", "bits_per_stream.png"):
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / f).stat().st_size > 5000
    md = (out / "report.md").read_text()
    for n, lc, *_ in LAYERS:
        assert f"`{n}`" in md and f"`{lc}`" in md
    assert "VERIFICATION FAILED" not in md and "picked_by" in md
    assert f"{s['speedup']['int8']:.3f}x" in md and f"{HAND_BPW['blk0.q']:.4f}" in md
    lines = format_summary(s)
    assert any(f"{s['speedup']['int4']:.3f}x over int4" in x for x in lines)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_widened_build_for_the_baselines(tmp_path):
    cfg = AccelConfig(modes=("ssvq",), int_bits=())
    img = _make(tmp_path, cfg=cfg, layers=[("l", "ssvq-k16-d8", 4, 64)])
    s = write_report(img, tmp_path / "rep")
    assert s["build_widened"] and s["build"]["modes"] == ["int", "ssvq"]
    assert s["build"]["int_bits"] == [4, 8] and s["config"]["modes"] == ["ssvq"]
    assert s["layers"][0]["beats"] == HAND_BEATS["blk0.q"]
    assert "widened" in (tmp_path / "rep" / "report.md").read_text()


def _rewrite_stream(img, layer_index, mutate):
    """Edits a layer's stream.bin and makes stream.hex, the digests and the manifest
    agree with it, so only the stream's own structure is wrong."""
    mpath = img / "manifest.json"
    man = json.loads(mpath.read_text())
    e = man["layers"][layer_index]
    d = img / e["dir"]
    beats = np.frombuffer((d / "stream.bin").read_bytes(), np.uint8).reshape(-1, 8).copy()
    mutate(beats)
    (d / "stream.bin").write_bytes(beats.tobytes())
    (d / "stream.hex").write_text(beats_to_hex(beats))
    for fn in ("stream.bin", "stream.hex"):
        data = (d / fn).read_bytes()
        e["files"][fn] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    man["manifest_sha256"] = manifest_digest(man)
    mpath.write_text(json.dumps(man, indent=1))


def test_corrupted_stream_raises_before_writing(tmp_path):
    img = _make(tmp_path)
    sim = _write_results(tmp_path, img)
    p = img / "layers" / "001_blk0.ffn" / "stream.bin"
    raw = bytearray(p.read_bytes())
    raw[40] ^= 0x10
    p.write_bytes(bytes(raw))
    with pytest.raises(ImageError, match="001_blk0.ffn/stream.bin: sha256"):
        write_report(img, tmp_path / "rep", sim_dir=sim)
    assert not (tmp_path / "rep").exists()
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".rep")]


def test_structural_corruption_raises_and_keeps_old_report(tmp_path):
    """Digests consistent, but a zero-padding bit of the weight section set: only
    decoding the layer (ImageSet.layer) finds it."""
    img = _make(tmp_path)
    out = tmp_path / "rep"
    write_report(img, out)
    before = {q.name: q.read_bytes() for q in out.iterdir()}

    def set_pad_bit(beats):             # int3 weights: 864 bits in 14 beats, 32 pad bits
        beats[-1, 7] |= 0x80
    _rewrite_stream(img, 1, set_pad_bit)
    with pytest.raises(ImageError, match="weights padding"):
        write_report(img, out)
    assert {q.name: q.read_bytes() for q in out.iterdir()} == before


def test_corrupted_baseline_image_raises(tmp_path):
    img = _make(tmp_path)
    base = _make(tmp_path, "base", config="int8", seed=1)
    _rewrite_stream(base, 2, lambda b: b.__setitem__((0, 0), b[0, 0] ^ 1))   # header mode
    with pytest.raises(ImageError, match=r"base/layers/002_blk1.q/stream.bin: header"):
        write_report(img, tmp_path / "rep", baseline_images_dir=base)
    assert not (tmp_path / "rep").exists()


BAD_RESULTS = [
    # (tweak, field named in the message, expected-text)
    (lambda r: "[1, 2]", None, "expected a JSON object"),
    (lambda r: "{not json", None, "parse error"),
    (lambda r: dict(r, cycles_rtl="1234"), "cycles_rtl", "integer, found str"),
    (lambda r: dict(r, cycles_rtl=12.0), "cycles_rtl", "integer"),
    (lambda r: dict(r, cycles_rtl=True), "cycles_rtl", "integer"),
    (lambda r: {k: v for k, v in r.items() if k != "cycles_rtl"}, "cycles_rtl", "no such field"),
    (lambda r: dict(r, counters_rtl=[1, 2, 3]), "counters_rtl", "an object of integer"),
    (lambda r: dict(r, counters_rtl=dict(r["counters_rtl"], weights="6")),
     "counters_rtl.weights", "integer"),
    (lambda r: dict(r, counters_rtl=dict(r["counters_rtl"], weights=6.5)),
     "counters_rtl.weights", "integer"),
    (lambda r: dict(r, counters_rtl={k: v for k, v in r["counters_rtl"].items()
                                     if k != "stall"}), "counters_rtl", "exactly the counters"),
    (lambda r: dict(r, counters_model=None), "counters_model", "an object"),
    (lambda r: dict(r, bit_exact="yes"), "bit_exact", "true or false"),
    (lambda r: dict(r, stall_prob=1.5), "stall_prob", "[0, 1)"),
    (lambda r: dict(r, problems="oops"), "problems", "list of strings"),
    (lambda r: dict(r, config="int8"), "config", "'ssvq-k16-d8'"),
    (lambda r: dict(r, name="other"), "name", "'blk0.q'"),
    (lambda r: dict(r, rows=5), "rows", "4"),
]


@pytest.mark.parametrize("tweak,field,text", BAD_RESULTS)
def test_bad_result_json_rejected(tmp_path, tweak, field, text):
    img = _make(tmp_path)
    sim = _write_results(tmp_path, img, tweak=lambda i, r: tweak(r) if i == 0 else r)
    with pytest.raises(UserError) as ei:
        write_report(img, tmp_path / "rep", sim_dir=sim)
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(str(sim / "000_blk0.q" / "result.json") + ":")
    if field:
        assert f": {field}: expected" in msg
    assert text in msg and "found" in msg
    assert not (tmp_path / "rep").exists()


def test_read_result_accepts_a_good_result(tmp_path):
    p = tmp_path / "r.json"
    r = _result("x", "int4", 8, 40)
    p.write_text(json.dumps(r))
    got = read_result(p)
    assert got["counters_rtl"] == r["counters_rtl"] and set(got["counters_rtl"]) == set(COUNTERS)
    assert got["crashed"] is False and got["stall_prob"] == 0.0


def test_not_bit_exact_and_not_cycle_exact_fail_verification(tmp_path):
    img = _make(tmp_path)

    def bad(i, r):
        if i == 0:
            r["bit_exact"], r["passed"] = False, False
            r["problems"] = ["row 2: expected 5, found 7"]
        if i == 2:
            r["counters_rtl"]["cycles"] += 1
            r["cycles_rtl"] += 1
        return r
    sim = _write_results(tmp_path, img, tweak=bad)
    s = write_report(img, tmp_path / "rep", sim_dir=sim)
    assert s["passed"] is False
    assert s["all_bit_exact"] is False and s["all_cycle_exact"] is False
    assert s["layers"][0]["bit_exact"] is False and s["layers"][0]["cycle_exact"] is True
    assert s["layers"][1]["cycle_exact"] is True
    assert s["layers"][2]["bit_exact"] is True and s["layers"][2]["cycle_exact"] is False
    assert len(s["failures"]) == 2 and all("blk0.q" in f for f in s["failures"])
    assert any("row 2: expected 5" in f for f in s["failures"])
    assert len(s["mismatches"]) == 1 and "blk1.q" in s["mismatches"][0]
    assert "cycles RTL" in s["mismatches"][0]
    assert "VERIFICATION FAILED" in (tmp_path / "rep" / "report.md").read_text()
    assert any("VERIFICATION FAILED" in x for x in format_summary(s))


@pytest.mark.parametrize("counter", [c for c in COUNTERS if c != "cycles"])
def test_every_counter_is_checked(tmp_path, counter):
    img = _make(tmp_path, layers=LAYERS[:1])

    def bad(i, r):
        r["counters_rtl"][counter] += 1
        return r
    s = write_report(img, tmp_path / "rep", sim_dir=_write_results(tmp_path, img, tweak=bad))
    assert not s["passed"] and s["all_cycle_exact"] is False
    assert len(s["mismatches"]) == 1 and f"{counter} RTL" in s["mismatches"][0]


def test_stale_sim_model_is_a_mismatch(tmp_path):
    img = _make(tmp_path, layers=LAYERS[:1])

    def stale(i, r):
        for k in ("counters_rtl", "counters_model"):
            r[k]["weights"] += 2
        return r
    s = write_report(img, tmp_path / "rep", sim_dir=_write_results(tmp_path, img, tweak=stale))
    assert not s["passed"] and "stale" in s["mismatches"][0]


def test_stalled_run_compares_beats_only(tmp_path):
    img = _make(tmp_path)

    def stalled(i, r):
        r["stall_prob"] = 0.3
        r["counters_rtl"]["stall"] = 40
        r["counters_rtl"]["cycles"] += 40
        r["cycles_rtl"] += 40
        return r
    s = write_report(img, tmp_path / "rep", sim_dir=_write_results(tmp_path, img, tweak=stalled))
    assert s["passed"] and s["all_bit_exact"] is True and s["all_cycle_exact"] is None
    assert all(r["cycle_exact"] is None for r in s["layers"])

    def stalled_bad(i, r):
        r = stalled(i, r)
        r["counters_rtl"]["acts"] -= 1
        return r
    s = write_report(img, tmp_path / "rep2",
                     sim_dir=_write_results(tmp_path, img, tweak=stalled_bad, sub="sim2"))
    assert not s["passed"] and len(s["mismatches"]) == 3
    assert all("acts RTL" in m for m in s["mismatches"])


def test_crashed_run_is_a_failure(tmp_path):
    img = _make(tmp_path, layers=LAYERS[:1])

    def crashed(i, r):
        for k in ("cycles_rtl", "cycles_model", "counters_rtl", "counters_model"):
            r.pop(k)
        r.update(passed=False, bit_exact=False, error="no result from the simulator")
        return r
    s = write_report(img, tmp_path / "rep", sim_dir=_write_results(tmp_path, img, tweak=crashed))
    assert not s["passed"] and s["all_bit_exact"] is False
    assert any("no result from the simulator" in f for f in s["failures"])
    assert s["layers"][0]["cycles_rtl"] is None

    def no_error(i, r):        # not crashed (no error): the cycles are required
        r = crashed(i, r)
        r["error"] = None
        return r
    with pytest.raises(UserError, match="cycles_rtl: expected"):
        write_report(img, tmp_path / "rep2",
                     sim_dir=_write_results(tmp_path, img, tweak=no_error, sub="sim2"))


def test_baseline_images_and_sims_beside(tmp_path):
    img = _make(tmp_path)
    base = _make(tmp_path, "base", config="int8", seed=1)
    sim = _write_results(tmp_path, img)
    bsim = _write_results(tmp_path, base, which={0, 1}, sub="bsim")
    s = write_report(img, tmp_path / "rep", sim_dir=sim, baseline_images_dir=base,
                     baseline_sim_dir=bsim)
    assert s["passed"] and s["baseline_source"] == "images"
    assert s["layers_simulated"] == 3 and s["baseline_layers_simulated"] == 2
    r0, r2 = s["layers"][0], s["layers"][2]
    assert r0["baseline_simulated"] and r0["baseline_cycle_exact"] is True
    assert r0["baseline_cycles_model"] == r0["baseline_cycles"]["int8"]   # same build
    assert r0["speedup_rtl_int8"] == pytest.approx(r0["baseline_cycles_rtl"] / r0["cycles_rtl"])
    assert r2["baseline_simulated"] is False and r2["baseline_cycles_rtl"] is None
    assert s["speedup_rtl"]["layers"] == 2
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "int8 cycles RTL" in md

    def bad(i, r):
        r["bit_exact"] = False
        return r
    bsim2 = _write_results(tmp_path, base, tweak=bad, sub="bsim2")
    s = write_report(img, tmp_path / "rep2", baseline_images_dir=base, baseline_sim_dir=bsim2)
    assert not s["passed"] and s["all_bit_exact"] is False and len(s["failures"]) == 3


def test_bad_inputs_are_user_errors(tmp_path):
    img = _make(tmp_path)
    with pytest.raises(UserError, match="expected a folder written by `ssvq sim`"):
        write_report(img, tmp_path / "rep", sim_dir=tmp_path / "nope")
    int4 = _make(tmp_path, "int4", config="int4")
    with pytest.raises(UserError, match="layer blk0.q: expected int8 4x64, found int4"):
        write_report(img, tmp_path / "rep", baseline_images_dir=int4)
    other = _make(tmp_path, "other", config="int8", layers=LAYERS[:2])
    with pytest.raises(UserError, match="'blk1.q'"):
        write_report(img, tmp_path / "rep", baseline_images_dir=other)
    with pytest.raises(UserError, match="baseline images"):
        write_report(img, tmp_path / "rep", baseline_sim_dir=tmp_path)
    with pytest.raises(ImageError, match="manifest"):
        write_report(tmp_path / "missing", tmp_path / "rep")
    assert not (tmp_path / "rep").exists()
