"""Low-rank layers as chains: W ~ A.B compressed as two image layers, B then A with
A's activations = B's int8 outputs (`input_from`). Checked against computations
written here: the SVD factors, the requantization by hand, the writer's and reader's
refusals, the cost model's charging against the unfactored layer, and the RTL."""
import json

import numpy as np
import pytest

from compress.plan import CompressionPlan
from compress.run import compress_model
from ssvq.config import AccelConfig
from ssvq.errors import ConfigError, ImageError
from ssvq.image import manifest_digest, read_images, write_images
from tests import doc_decoder
from tests.rtl_helpers import random_layer

PLAN = {"global": {"method": "int8"},
        "layers": {"fc1": {"method": "int8", "rank": 16},
                   "fc2": {"method": "vq", "k": 16, "d": 4, "rank": 24}}}


def _requant_by_hand(w, act, bias, mult, shift):
    acc = w.astype(np.int64) @ act.astype(np.int64) + bias.astype(np.int64)
    y = [(int(a) * int(m) + (1 << (int(s) - 1))) >> int(s) for a, m, s in zip(acc, mult, shift)]
    return np.clip(y, -128, 127)


@pytest.fixture(scope="module")
def chained(tmp_path_factory):
    out = tmp_path_factory.mktemp("chain") / "images"
    return compress_model("digits", PLAN, out, progress=None)


def test_plan_rank_resolution_and_limit():
    p = CompressionPlan.from_dict(PLAN)
    assert p.explain("fc1", 128, 64).rank == 16 and p.explain("fc3", 10, 64).rank == 0
    assert p.explain("fc2", 64, 128).to_meta()["spec"]["rank"] == 24
    # 64*128/(64+128) = 42.7: rank 43 would store more weights than the layer
    with pytest.raises(ConfigError, match=r"rank: expected a rank below .* found 43"):
        CompressionPlan.from_dict({"global": {"method": "int8", "rank": 43}}).explain("x", 64, 128)
    with pytest.raises(ConfigError, match=r"global.rank: expected 0 .* found -1"):
        CompressionPlan.from_dict({"global": {"method": "int8", "rank": -1}})


def test_pairs_are_written_in_order_and_hand_over_exactly(chained):
    s = read_images(chained)
    assert s.layer_names == ["fc1#B", "fc1#A", "fc2#B", "fc2#A", "fc3"]
    shapes = {n: (s.entry(n)["rows"], s.entry(n)["cols"]) for n in s.layer_names}
    assert shapes["fc1#B"] == (16, 64) and shapes["fc1#A"] == (128, 16)
    assert shapes["fc2#B"] == (24, 128) and shapes["fc2#A"] == (64, 24)
    for a, b in (("fc1#A", "fc1#B"), ("fc2#A", "fc2#B")):
        assert s.entry(a)["input_from"] == b and "input_from" not in s.entry(b)
        la, lb = s.layer(a), s.layer(b)
        wb = doc_decoder.decode_image_set(chained)[s.layer_names.index(b)]["weights"]
        assert (la.act == _requant_by_hand(wb, lb.act, lb.bias, lb.mult, lb.shift)).all()
        assert s.entry(a)["meta"]["factor_of"]["layer"] == a[:3]
    # the clean-room decoder checks the hand-over too
    assert [x["input_from"] for x in doc_decoder.decode_image_set(chained)] == \
        [None, "fc1#B", None, "fc2#B", None]


def test_factors_approximate_the_truncated_svd(chained):
    from compress.models import load_model
    from compress.quantize import dequantize

    w = dict((n, w) for n, w, _ in load_model("digits").layers)["fc1"].astype(np.float64)
    s = read_images(chained)
    a, b = s.layer("fc1#A"), s.layer("fc1#B")
    approx = dequantize(a).astype(np.float64) @ dequantize(b).astype(np.float64)
    u, sv, vt = np.linalg.svd(w, full_matrices=False)
    best = (u[:, :16] * sv[:16]) @ vt[:16]                  # Eckart-Young optimum at rank 16
    e_best = np.linalg.norm(w - best) / np.linalg.norm(w)
    e = np.linalg.norm(w - approx) / np.linalg.norm(w)
    assert e_best <= e < e_best + 0.02, (e_best, e)
    assert abs(s.manifest["meta"]["rel_weight_error"]["layers"]["fc1"] - e) < 1e-6


def _pair(rng, broken=False):
    b = random_layer("int4", 6, 20, rng, "b")
    a = random_layer("int8", 5, 6, rng, "a")
    from ssvq.reference import outputs
    a.act = outputs(b)
    if broken:
        a.act = a.act.copy()
        a.act[2] ^= 1
    a.input_from = "b"
    return b, a


def test_writer_refuses_broken_chains(tmp_path):
    rng = np.random.default_rng(1)
    cfg = AccelConfig(max_rows=64, max_cols=64)
    b, a = _pair(rng, broken=True)
    with pytest.raises(ImageError, match=r"a\.act: expected the int8 outputs of b \(input_from\), "
                                         r"found 1 of 6 differ"):
        write_images(tmp_path / "x", cfg, [b, a])
    b, a = _pair(rng)
    with pytest.raises(ImageError, match=r"a\.input_from: expected the name of an earlier layer"):
        write_images(tmp_path / "x", cfg, [a, b])
    a.input_from = "b"
    a2 = random_layer("int8", 5, 7, rng, "a")
    a2.input_from = "b"
    with pytest.raises(ImageError, match=r"expected a layer with 7 rows .* found b with 6 rows"):
        write_images(tmp_path / "x", cfg, [b, a2])
    assert not (tmp_path / "x").exists()


def _edit_manifest(root, fn):
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    m["manifest_sha256"] = manifest_digest(m)
    (root / "manifest.json").write_text(json.dumps(m, indent=1))


def test_reader_refuses_broken_chains(tmp_path):
    rng = np.random.default_rng(2)
    cfg = AccelConfig(max_rows=64, max_cols=64)
    b, a = _pair(rng)
    other = random_layer("int8", 5, 6, rng, "c")          # its act is not b's outputs
    root = write_images(tmp_path / "x", cfg, [b, a, other])
    _edit_manifest(root, lambda m: m["layers"][2].update(input_from="b"))
    s = read_images(root)
    s.layer("a")
    with pytest.raises(ImageError, match=r"layer c: c\.act: expected the int8 outputs of b"):
        s.layer("c")
    _edit_manifest(root, lambda m: m["layers"][0].update(input_from="a"))
    with pytest.raises(ImageError, match=r"layers\[0\]\.input_from: expected the name of an "
                                         r"earlier layer, found 'a'"):
        read_images(root)


def test_cost_charges_the_pair_against_the_unfactored_layer(chained, tmp_path):
    from sim.golden import timing
    from sim.report import write_report
    from ssvq.config import LayerConfig

    s = write_report(chained, tmp_path / "rep")
    imgs = read_images(chained)
    int8 = LayerConfig.parse("int8")
    base = sum(timing(s_cfg, int8, r, c).counters["cycles"]
               for s_cfg in [AccelConfig.from_dict(s["build"])]
               for r, c in ((128, 64), (64, 128), (10, 64)))
    assert s["baseline_cycles"]["int8"] == base
    assert s["weights"] == 128 * 64 + 64 * 128 + 10 * 64
    assert s["speedup"]["int8"] == pytest.approx(base / s["cycles"])
    bits = imgs.manifest["meta"]["bits_per_weight"]["total"]
    assert s["bits_per_weight"] == pytest.approx(bits, rel=1e-9)


def test_rtl_runs_the_chain(chained, tmp_path):
    from sim.runner import pick_layers, simulate_images

    s = read_images(chained)
    names = pick_layers(s.manifest["layers"], False)
    assert {"fc1#B", "fc1#A", "fc2#B", "fc2#A"} <= set(names)
    summ = simulate_images(chained, names, "icarus", out_dir=tmp_path / "sim", progress=None)
    by = {l["name"]: l for l in summ["layers"]}
    assert summ["all_passed"]
    assert by["fc1#A"]["input_matches_rtl"] is True and by["fc2#A"]["input_matches_rtl"] is True
    assert by["fc1#B"]["input_matches_rtl"] is None
    for n in names:
        assert by[n]["cycles_rtl"] == by[n]["cycles_model"]
