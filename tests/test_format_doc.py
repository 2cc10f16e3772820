"""docs/FORMAT.md is sufficient for an independent decoder.

`tests/doc_decoder.py` was written from docs/FORMAT.md alone (no project
imports). These tests check it against the document's worked examples, then
against real images made by `ssvq compress` and the `outputs.npy` that
`ssvq sim` writes: a decoder written only from the document reproduces the
simulated accelerator's outputs bit for bit.
"""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import doc_decoder as dd  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------
# Worked examples of FORMAT.md section 13 (the hex lines copied verbatim)

EX_SMALL = dd.Config(k=16, d=4, cw=8, mults=8, bus=64, max_rows=64, max_cols=64)

HEX_A = """\
3156530005000302
1413121104030201
3433323124232221
5453525144434241
7473727164636261
9493929184838281
b4b3b2b1a4a3a2a1
d4d3d2d1c4c3c2c1
f4f3f2f1e4e3e2e1
000f400000000064
0008012cffffff38
0014ffff00000003
00000005fc03fe01
0000000000970f21
0000000000180312
"""

HEX_B = """\
3156530009000501
9392919083828180
b3b2b1b0a3a2a1a0
d3d2d1d0c3c2c1c0
f3f2f1f0e3e2e1e0
1312111003020100
3332313023222120
5352515043424140
7372717063626160
0001000100000000
000200020000000a
00030003fffffff6
00040004000003e8
00050005fffffc18
fa02f705ff04ff03
0000000000000005
0cba098706540321
0000000000000fed
"""

HEX_C = """\
315653000a000200
000a012cfffffffb
00109c4000000007
f807fa05fc03fe01
000000000000f609
e3d6c9bcafa29588
000000000000fdf0
65584b3e3124170a
0000000000007f72
"""

EX_D_CFG = dd.Config(k=8, d=2, cw=8, mults=8, bus=128, max_rows=64, max_cols=64)

HEX_D = """\
00000000000000003156530013000c02
1308eee3c9bea4997f745a4f352a1005
001207cdfffff060001103e8ffffec78
00140f97fffff83000130bb2fffff448
00161761000000000015137cfffffc18
00181f2b000007d000171b46000003e8
001a26f500000fa00019231000000bb8
001c2ebf00001770001b2ada00001388
3a1d00e3c6a98c6f523518fbdec1a487
00000000000000000000000000917457
7315702af0e62a0055e1cc5018abc398
300e62af0e021cc55e103c398abc0178
f0e62a0055e1cc5018abc39803315787
21004210042108021084010842008421
84210042100421080210840108420084
0000000000000000000001787315702a
00000000000000000000000000000000
00000000000000000000000000000000
00000000000000000000000001084200
00000000000000000000000000000000
"""


def test_config_examples():
    dd.Config(k=16, d=4, cw=8, mults=8, bus=64).validate()
    dd.Config(k=4, d=2, cw=8, mults=8, bus=64).validate()
    with pytest.raises(dd.DocFormatError):
        dd.Config(k=16, d=4, cw=8, mults=8, bus=32).validate()
    dd.Config().validate()


def test_geometry_examples():
    small = dd.Config(k=16, d=4, mults=8, bus=64)
    want = {"int8": (64, 0, 1, 1, 0), "vq": (8, 0, 8, 1, 0), "ssvq": (8, 8, 8, 1, 1)}
    for mode, w in want.items():
        g = dd.geometry(small, mode, 3, 5)
        assert g.L == 2 and g.code_bits == 4
        assert (g.P, g.S, g.N, g.primary_beats, g.sign_beats) == w
    dflt = dd.Config()
    g = dd.geometry(dflt, "ssvq", 1, 1)
    assert (g.L, g.P, g.S, g.N, g.primary_beats, g.sign_beats) == (4, 32, 32, 2, 1, 1)
    g = dd.geometry(dflt, "vq", 1, 1)
    assert (g.N, g.primary_beats) == (2, 1)
    g = dd.geometry(dflt, "int8", 1, 1)
    assert (g.P, g.N, g.primary_beats) == (256, 1, 4)
    g = dd.geometry(dd.Config(k=8, d=2, mults=8, bus=128), "ssvq", 1, 1)
    assert (g.L, g.code_bits, g.P, g.S, g.N, g.primary_beats, g.sign_beats) == (4, 3, 12, 8, 32, 3, 2)
    # the closed form of section 2 agrees with the definition
    for cfg in (small, dflt, dd.Config(k=8, d=2, mults=8, bus=128), dd.Config(k=4096, d=16, bus=256)):
        for mode in ("int8", "vq", "ssvq"):
            g = dd.geometry(cfg, mode, 1, 1)
            from math import gcd
            closed = max(cfg.bus // gcd(g.P, cfg.bus), cfg.bus // gcd(g.S, cfg.bus) if g.S else 1)
            assert g.N == closed


def test_example_a():
    cfg = EX_SMALL.validate()
    beats = dd.beats_from_hex(HEX_A, 64)
    data = dd.beats_to_bin(beats, 64)
    assert data[:16] == bytes.fromhex("02 03 00 05 00 53 56 31 01 02 03 04 11 12 13 14")
    assert len(data) == 120 and len(HEX_A) == 255
    assert hashlib.sha256(data).hexdigest() == \
        "d3a5708bf88639f710783c5e6b200b34120d3b548d526bbc7c9434e0d3597bdc"
    assert hashlib.sha256(HEX_A.encode()).hexdigest() == \
        "3a211004cc58026428369b81e3eea960d56b08c963f9f3b1a52e908ce902dae5"
    assert dd.beats_to_hex(beats, 64) == HEX_A
    L = dd.decode_stream(data, cfg)
    assert (L.mode, L.rows, L.cols) == ("ssvq", 3, 5)
    assert L.geo.sections() == {"header": [0, 1], "codebook": [1, 8], "params": [9, 3],
                                "acts": [12, 1], "weights": [13, 2]}
    assert L.geo.total_beats == 15
    k, j = np.meshgrid(np.arange(16), np.arange(4), indexing="ij")
    assert (L.codebook == 16 * k + j + 1).all()
    assert L.codes.tolist() == [[1, 2], [15, 0], [7, 9]]
    assert L.signs.tolist() == [[0, 1, 0, 0, 1], [1, 1, 0, 0, 0], [0, 0, 0, 1, 1]]
    assert L.bias.tolist() == [100, -200, 3]
    assert L.mult.tolist() == [16384, 300, 65535]
    assert L.shift.tolist() == [15, 8, 20]
    assert L.act.tolist() == [1, -2, 3, -4, 5]
    assert dd.weight_matrix(L).tolist() == [[17, -18, 19, 20, -33],
                                            [-241, -242, 243, 244, 1],
                                            [113, 114, 115, -116, -145]]
    assert dd.accumulate(L) == [-135, 1, -31]
    y = dd.outputs(L)
    assert y.tolist() == [-17, -128, -2]
    assert dd.output_beats(y, 64) == [0x0000000000fe80ef]
    assert dd.outputs_from_beats([0x0000000000fe80ef], 3, 64).tolist() == [-17, -128, -2]


def test_example_b():
    L = dd.decode_hex_text(HEX_B, EX_SMALL)
    assert (L.mode, L.rows, L.cols) == ("vq", 5, 9)
    g = L.geo
    assert (g.G, g.padded_cols, g.V, g.vectors_per_row, g.N, g.B, g.weight_blocks) == (2, 16, 3, 4, 8, 1, 2)
    assert g.sections() == {"header": [0, 1], "codebook": [1, 8], "params": [9, 5],
                            "acts": [14, 2], "weights": [16, 2]}
    k, j = np.meshgrid(np.arange(16), np.arange(4), indexing="ij")
    assert (L.codebook == 16 * k + j - 128).all()
    assert L.codes.tolist() == [[(3 * r + v + 1) % 16 for v in range(3)] for r in range(5)]
    assert L.bias.tolist() == [0, 10, -10, 1000, -1000]
    assert L.mult.tolist() == [1, 2, 3, 4, 5]
    assert L.shift.tolist() == [1, 2, 3, 4, 5]
    assert L.act.tolist() == [3, -1, 4, -1, 5, -9, 2, -6, 5]
    assert dd.accumulate(L) == [-211, -115, -19, 77, 173]
    y = dd.outputs(L)
    assert y.tolist() == [-105, -52, -11, 127, -128]
    assert dd.output_beats(y, 64) == [0x000000807ff5cc97]


def test_example_c():
    L = dd.decode_hex_text(HEX_C, EX_SMALL)
    assert (L.mode, L.rows, L.cols) == ("int8", 2, 10)
    assert L.codebook is None and L.codes is None and L.signs is None
    assert L.geo.sections() == {"header": [0, 1], "codebook": [1, 0], "params": [1, 2],
                                "acts": [3, 2], "weights": [5, 4]}
    assert L.weights.tolist() == [[13 * (10 * r + c) - 120 for c in range(10)] for r in range(2)]
    assert L.bias.tolist() == [-5, 7]
    assert L.mult.tolist() == [300, 40000]
    assert L.shift.tolist() == [10, 16]
    assert L.act.tolist() == [1, -2, 3, -4, 5, -6, 7, -8, 9, -10]
    assert dd.accumulate(L) == [-50, -700]
    y = dd.outputs(L)
    assert y.tolist() == [-16, -128]
    assert dd.output_beats(y, 64) == [0x00000000000080f0]


def test_example_d():
    L = dd.decode_hex_text(HEX_D, EX_D_CFG.validate())
    assert (L.mode, L.rows, L.cols) == ("ssvq", 12, 19)
    g = L.geo
    assert (g.L, g.code_bits, g.G, g.padded_cols, g.V, g.vectors_per_row) == (4, 3, 3, 24, 10, 12)
    assert (g.P, g.S, g.N, g.primary_beats, g.sign_beats, g.B, g.weight_blocks) == (12, 8, 32, 3, 2, 5, 2)
    assert g.sections() == {"header": [0, 1], "codebook": [1, 1], "params": [2, 6],
                            "acts": [8, 2], "weights": [10, 10]}
    k, j = np.meshgrid(np.arange(8), np.arange(2), indexing="ij")
    assert (L.codebook == (37 * k + 11 * j + 5) % 256).all()
    assert L.codes.tolist() == [[(5 * r + 3 * v) % 8 for v in range(10)] for r in range(12)]
    assert L.signs.tolist() == [[1 if (7 * r + 3 * c) % 5 == 0 else 0 for c in range(19)]
                                for r in range(12)]
    assert L.act.tolist() == [((29 * c + 7) % 256) - 128 for c in range(19)]
    assert L.bias.tolist() == [1000 * r - 5000 for r in range(12)]
    assert L.mult.tolist() == [1000 + 997 * r for r in range(12)]
    assert L.shift.tolist() == [17 + r for r in range(12)]
    assert dd.accumulate(L) == [-34239, 12821, -44635, -35943, 6029, -24423, 1525, -60451,
                                -1679, 22809, -12287, -4667]
    y = dd.outputs(L)
    assert y.tolist() == [-128, 67, -128, -128, 12, -35, 2, -28, 0, 4, -1, 0]
    assert dd.output_beats(y, 128) == [0x0000000000ff0400e402dd0c80804380]


def _flip(hex_text, bus, beat, bit):
    beats = dd.beats_from_hex(hex_text, bus)
    beats[beat] ^= 1 << bit
    return dd.beats_to_bin(beats, bus)


@pytest.mark.parametrize("beat,bit,what", [
    (0, 63, "header magic"),
    (0, 3, "mode id"),
    (9, 60, "reserved"),
    (12, 40, "acts padding"),
    (13, 30, "padding groups"),
    (14, 5, "signs padding columns"),
    (14, 30, "signs padding groups"),
])
def test_decoder_rejects_bad_padding(beat, bit, what):
    with pytest.raises(dd.DocFormatError, match=what):
        dd.decode_stream(_flip(HEX_A, 64, beat, bit), EX_SMALL)


def test_decoder_rejects_bad_code_padding_and_shift():
    # example B: vector 3 of row 0 is padding (block 0 byte 1, high nibble)
    with pytest.raises(dd.DocFormatError, match="codes padding"):
        dd.decode_stream(_flip(HEX_B, 64, 16, 12), EX_SMALL)
    # example C: row 0 column 10 (int8 padding) lives in block 1 byte 2
    with pytest.raises(dd.DocFormatError, match="weights padding columns"):
        dd.decode_stream(_flip(HEX_C, 64, 6, 16), EX_SMALL)
    # example A: row 0 shift 15 -> 0 needs all four low shift bits cleared
    beats = dd.beats_from_hex(HEX_A, 64)
    beats[9] &= ~(0x3F << 48)
    with pytest.raises(dd.DocFormatError, match="shift"):
        dd.decode_stream(dd.beats_to_bin(beats, 64), EX_SMALL)
    # one beat too many
    with pytest.raises(dd.DocFormatError, match="beat count"):
        dd.decode_stream(dd.beats_to_bin(dd.beats_from_hex(HEX_A, 64) + [0], 64), EX_SMALL)


# --------------------------------------------------------------------------
# Real images from the CLI, simulated on Icarus

def _cli(*args, timeout=1200):
    r = subprocess.run([sys.executable, "-m", "ssvq.cli", *args], cwd=REPO,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"ssvq {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r


def _folder_name(i, name):
    safe = "".join(ch if (ch.isalnum() or ch in "._-") else "_" for ch in name)
    return f"layers/{i:03d}_{safe}"


def _manifest_digest(m):
    """Section 4: SHA-256 of the canonical JSON of the manifest without its own digest."""
    body = {k: v for k, v in m.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                          .encode("utf-8")).hexdigest()


def _check_manifest_as_written(img):
    path = os.path.join(img, "manifest.json")
    raw = open(path, "rb").read()
    m = json.loads(raw)
    assert raw.decode("ascii") == json.dumps(m, indent=1)    # indent=1, ASCII, no trailing newline
    assert list(m) == ["format", "version", "config", "meta", "layers", "manifest_sha256"]
    assert m["manifest_sha256"] == _manifest_digest(m)
    assert set(m["config"]) == {"k", "d", "cw", "mults", "bus", "max_rows", "max_cols"}
    for i, e in enumerate(m["layers"]):
        assert list(e) == ["name", "mode", "rows", "cols", "dir", "beats", "sections", "files"]
        assert e["dir"] == _folder_name(i, e["name"])
        assert list(e["sections"]) == list(dd.SECTION_NAMES)
    return m


def _check_arrays_npz(layer):
    """arrays.npz (section 11) holds the same integers as the stream."""
    z = layer.extra
    assert np.array_equal(z["bias"], layer.bias)
    assert np.array_equal(z["mult"], layer.mult)
    assert np.array_equal(z["shift"], layer.shift)
    assert np.array_equal(z["act"], layer.act)
    if layer.mode == "int8":
        assert np.array_equal(z["weights"], layer.weights)
        assert "codebook" not in z and "codes" not in z
    else:
        assert np.array_equal(z["codebook"], layer.codebook)
        assert np.array_equal(z["codes"], layer.codes)
    if layer.mode == "ssvq":
        assert np.array_equal(z["signs"], layer.signs)
    else:
        assert "signs" not in z
    for key, val in z.items():
        if key.startswith("scale_"):
            assert val.dtype == np.float32


def _check_sim(img, sim, names):
    image = dd.Image(img)
    for name in names:
        e = image.entry(name)
        folder = os.path.join(sim, os.path.basename(e["dir"]))
        outs = np.load(os.path.join(folder, "outputs.npy"))
        assert outs.dtype == np.int8 and outs.shape == (e["rows"],)
        layer = image.layer(name)
        y = dd.outputs(layer)
        assert np.array_equal(y, outs), f"{name}: doc decoder {y.tolist()} != sim {outs.tolist()}"
        # the output stream round trip of section 10
        assert np.array_equal(dd.outputs_from_beats(dd.output_beats(y, image.cfg.bus), e["rows"],
                                                    image.cfg.bus), y)
        assert len(dd.output_beats(y, image.cfg.bus)) == layer.geo.out_beats
        res = json.load(open(os.path.join(folder, "result.json")))
        assert (res["name"], res["mode"], res["rows"], res["cols"]) == \
            (name, e["mode"], e["rows"], e["cols"])
        assert res["bit_exact"] is True and res["passed"] is True
        assert set(res["counters_rtl"]) >= {"cycles", "stall", "header", "codebook", "params",
                                            "acts", "codes", "signs", "weights", "out"}
        assert isinstance(res["cycles_rtl"], int)


def _check_all_layers(img):
    m = _check_manifest_as_written(img)
    image = dd.Image(img)
    for e in m["layers"]:
        layer = image.layer(e["name"])
        assert layer.mode == e["mode"]
        _check_arrays_npz(layer)
        y = dd.outputs(layer)
        assert y.dtype == np.int8 and y.shape == (e["rows"],)
    return m


@pytest.fixture(scope="module")
def odd_model(tmp_path_factory):
    """A state_dict with shapes that are not multiples of d or mults (a conv too)."""
    import torch
    g = torch.Generator().manual_seed(3)
    sd = {"a.weight": torch.randn(7, 19, generator=g), "a.bias": torch.randn(7, generator=g),
          "b.weight": torch.randn(12, 37, generator=g),
          "conv.weight": torch.randn(3, 2, 3, 3, generator=g)}
    path = tmp_path_factory.mktemp("odd") / "odd.pt"
    torch.save(sd, path)
    return str(path)


@pytest.mark.xdist_group("format_doc_cli")
@pytest.mark.parametrize("method", ["ssvq", "vq", "int8"])
def test_digits_images_match_simulation(tmp_path, method):
    img, sim = str(tmp_path / "img"), str(tmp_path / "sim")
    _cli("compress", "--model", "digits", "--method", method, "--k", "16", "--d", "4", "--out", img)
    m = _check_all_layers(img)
    assert [e["mode"] for e in m["layers"]] == [method] * len(m["layers"])
    names = [e["name"] for e in m["layers"]][-2:]      # the two smallest digits layers
    _cli("sim", "--images", img, "--layers", *names, "--simulator", "icarus", "--out", sim)
    _check_sim(img, sim, names)
    if method == "ssvq":
        # stalls and memory latency change the timing, never the outputs
        sim2 = str(tmp_path / "sim_stall")
        _cli("sim", "--images", img, "--layers", names[-1], "--simulator", "icarus",
             "--seed", "5", "--stall-prob", "0.3", "--latency", "3", "--out", sim2)
        _check_sim(img, sim2, names[-1:])


@pytest.mark.xdist_group("format_doc_cli")
@pytest.mark.parametrize("method", ["ssvq", "vq", "int8"])
def test_odd_shapes_wide_bus_match_simulation(tmp_path, odd_model, method):
    """3-bit codes on a 128-bit bus (straddling fields, several records per beat) and
    shapes with partial vectors and groups."""
    img, sim = str(tmp_path / "img"), str(tmp_path / "sim")
    _cli("compress", "--model", odd_model, "--method", method, "--k", "8", "--d", "2",
         "--mults", "8", "--bus", "128", "--out", img)
    m = _check_all_layers(img)
    assert m["config"]["bus"] == 128 and m["config"]["k"] == 8
    names = [e["name"] for e in m["layers"]]
    assert [(e["rows"], e["cols"]) for e in m["layers"]] == [(7, 19), (12, 37), (3, 18)]
    _cli("sim", "--images", img, "--layers", *names, "--simulator", "icarus", "--out", sim)
    _check_sim(img, sim, names)


@pytest.mark.xdist_group("format_doc_cli")
def test_int8_padding_group_in_last_block(tmp_path, odd_model):
    img, sim = str(tmp_path / "img"), str(tmp_path / "sim")
    _cli("compress", "--model", odd_model, "--method", "int8", "--mults", "8", "--bus", "128",
         "--layers", "conv", "--out", img)
    image = dd.Image(img)
    g = image.layer("conv").geo
    assert g.N == 2 and g.rows * g.G % g.N == 1          # 3 x 18: G=3, 9 groups, 5 blocks
    _cli("sim", "--images", img, "--layers", "conv", "--simulator", "icarus", "--out", sim)
    _check_sim(img, sim, ["conv"])


def _rewrite_stream(img, entry, beats, bus, fix_manifest=True):
    """Write `beats` as the layer's stream.bin / stream.hex (section 5); optionally
    update the manifest's sizes and digests (section 4) as the writer would."""
    ldir = os.path.join(img, *entry["dir"].split("/"))
    files = {"stream.bin": dd.beats_to_bin(beats, bus),
             "stream.hex": dd.beats_to_hex(beats, bus).encode("ascii")}
    for fn, data in files.items():
        with open(os.path.join(ldir, fn), "wb") as f:
            f.write(data)
    if fix_manifest:
        mpath = os.path.join(img, "manifest.json")
        m = json.load(open(mpath))
        for e in m["layers"]:
            if e["name"] == entry["name"]:
                for fn, data in files.items():
                    e["files"][fn] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        m["manifest_sha256"] = _manifest_digest(m)
        with open(mpath, "w") as f:
            f.write(json.dumps(m, indent=1))


@pytest.mark.xdist_group("format_doc_cli")
def test_tampered_images_rejected_as_documented(tmp_path, odd_model):
    """Sections 4, 7 and 12: a sign bit set on a padded column, re-hashed into the
    manifest, is refused by `ssvq sim` with the documented message and status 2,
    exactly where the doc decoder refuses it; an edit without re-hashing fails the
    SHA-256 check."""
    img = str(tmp_path / "img")
    _cli("compress", "--model", odd_model, "--method", "ssvq", "--k", "8", "--d", "2",
         "--mults", "8", "--bus", "128", "--layers", "a", "--out", img)
    image = dd.Image(img)
    entry = image.entry("a")
    g = image.layer("a").geo                       # 7 x 19: G=3, padded_cols=24
    bus = image.cfg.bus
    ldir = os.path.join(img, *entry["dir"].split("/"))
    beats = dd.beats_from_bin(open(os.path.join(ldir, "stream.bin"), "rb").read(), bus)
    # row 0, column 20 = group t=2 (slot 2 of block 0), element 4; sign part after the primary beats
    bit = g.sections()["weights"][0] * bus + g.primary_beats * bus + 2 * 8 + 4
    beats[bit // bus] ^= 1 << (bit % bus)
    _rewrite_stream(img, entry, beats, bus)
    with pytest.raises(dd.DocFormatError, match="signs padding columns"):
        dd.Image(img).layer("a")
    r = subprocess.run([sys.executable, "-m", "ssvq.cli", "sim", "--images", img, "--layers", "a",
                        "--simulator", "icarus", "--out", str(tmp_path / "sim")],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "stream.bin: signs padding columns: expected zero, found non-zero" in r.stderr

    # flip it back without re-hashing: now the digest no longer matches
    beats[bit // bus] ^= 1 << (bit % bus)
    _rewrite_stream(img, entry, beats, bus, fix_manifest=False)
    with pytest.raises(dd.DocFormatError, match="sha256"):
        dd.Image(img).layer("a")
    r = subprocess.run([sys.executable, "-m", "ssvq.cli", "sim", "--images", img, "--layers", "a",
                        "--simulator", "icarus", "--out", str(tmp_path / "sim2")],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "stream.bin: sha256: expected " in r.stderr
