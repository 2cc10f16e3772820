"""Clean-room checks of docs/FORMAT.md (ssvq-image version 2).

``doc_decoder`` is an independent decoder written from the document alone.
These tests

(a) reproduce every worked example of FORMAT.md section 12 from the numbers
    printed in the document (parsed from the document itself at test time, so
    an edit of the document is checked too), in both directions;
(b) cross-check the implementation at its public API only (``AccelConfig``,
    ``LayerConfig.parse``, ``LayerImage``, ``write_images``, ``outputs``),
    on random layers of every mode, written with ``write_images`` and decoded
    with ``doc_decoder``;
(c) check rejection cases the document specifies against the decoder's own
    errors (with the document's messages).
"""

import ast
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import doc_decoder as D  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "FORMAT.md").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------
# parsing section 12 of the document

def _between(text, start, end):
    i = text.index(start)
    j = text.index(end, i + len(start))
    return text[i:j]


SEC12 = _between(DOC, "\n## 12. Worked examples", "\n## 13. ")


def _subsections(text):
    parts = re.split(r"\n(?=### 12\.\d+ )", text)
    out = {}
    for p in parts:
        mt = re.match(r"### (12\.\d+) ", p)
        if mt:
            out[mt.group(1)] = p
    return out


SUBS = _subsections(SEC12)
EXAMPLE_IDS = ["12.2", "12.3", "12.4", "12.5", "12.6", "12.7"]


def _json_block_after(text, marker):
    i = text.index(marker)
    mt = re.compile(r"```json\n(.*?)```", re.S).search(text, i)
    return json.loads(mt.group(1))


EXAMPLE_BUILD = _json_block_after(SUBS["12.1"], "Examples 12.2")


def _code_block_after(text, marker):
    i = text.index(marker)
    mt = re.compile(r"```\n(.*?)```", re.S).search(text, i)
    return mt.group(1)


def _range(s):
    a, _, b = s.partition("..")
    return int(a), int(b or a)


def parse_example(eid):
    t = SUBS[eid]
    ex = {"id": eid, "text": t}
    mt = re.search(r"Layer `([^`]+)`, `rows = (\d+)`, `cols = (\d+)`; "
                   r"`to_dict\(\)` = `(\{[^`]*\})`", t)
    ex["name"], ex["rows"], ex["cols"] = mt.group(1), int(mt.group(2)), int(mt.group(3))
    ex["to_dict"] = ast.literal_eval(mt.group(4))
    ex["build"] = (_json_block_after(t, "Build:") if "Build:" in t
                   else EXAMPLE_BUILD)
    geo_line = re.search(r"^Geometry: (.*)$", t, re.M).group(1)
    ex["geometry"] = {k: int(v.split("=")[-1])
                      for k, v in re.findall(r"`([\w*]+) = ([^`]+)`", geo_line)}
    ex["sections"] = {}
    for mt in re.finditer(r"^\| (header|codebook|params|acts|weights) \| (\d+) \| "
                          r"(\d+) \| (\d+) \| (\d+) \| (\d+) \|$", t, re.M):
        ex["sections"][mt.group(1)] = tuple(int(x) for x in mt.groups()[1:])
    ex["total"] = int(re.search(r"^\| total \| \| \| \| (\d+) \| \|$", t, re.M).group(1))
    ex["out_beats"] = int(re.search(r"`out_beats = (\d+)`", t).group(1))
    arrays = {}
    for line in _code_block_after(t, "Logical arrays").splitlines():
        mt = re.match(r"^(\w+)\s*= (.*?)\s+# (\w+) \(([\d, ]*)\)$", line)
        name, val, dtype, shape = mt.groups()
        shape = tuple(int(x) for x in shape.replace(" ", "").split(",") if x)
        arr = np.array(ast.literal_eval(val), dtype=dtype)
        assert arr.shape == shape, (eid, name)
        arrays[name] = arr
    ex["arrays"] = arrays
    ex["header"] = int(re.search(r"Header record \(128 bits\): `0x([0-9a-f]+)`", t).group(1), 16)
    mt = re.search(r"`stream.hex` \((\d+) lines, (\d+) bytes\):\n\n```\n(.*?)```", t, re.S)
    ex["hex_lines"], ex["hex_bytes"], ex["hex"] = int(mt.group(1)), int(mt.group(2)), mt.group(3)
    ex["contents"] = [(int(a), s, int(sb), c) for a, s, sb, c in re.findall(
        r"^\| (\d+) \| (header|codebook|params|acts|weights) (\d+) \| (.+) \|$", t, re.M)]
    ex["groups"] = [tuple(int(x, 16) if i == 11 else int(x) for i, x in enumerate(mt))
                    for mt in re.findall(
        r"^\| (\d+) \| (\d+) \| (\d+) \| (\d+)\.\.(\d+) \| (\d+), (\d+) \(stream beat (\d+)\) \| "
        r"(\d+), (\d+) \(stream beat (\d+)\) \| `0x([0-9a-f]+)` \|$", t, re.M)]
    ex["fields"] = re.findall(
        r"^\| ((?:sign |slot|e)[^|]*?) \| ([\d.]+) \| ([\d.]+) \| ([^|]+?) \| "
        r"(\d+) \(`([01]+)`\) \| ([^|]+?) \|$", t, re.M)
    comp = _code_block_after(t, "Compute (section 7)")
    ex["W"] = np.array(ast.literal_eval(re.search(r"^W\s*= (.*)$", comp, re.M).group(1)))
    ex["acc"] = ast.literal_eval(re.search(r"^acc = (.*)$", comp, re.M).group(1))
    ex["y"] = ast.literal_eval(re.search(r"^y\s*= (.*)$", comp, re.M).group(1))
    ex["out_stream"] = int(re.search(r"^output stream: 0x([0-9a-f]+)$", comp, re.M).group(1), 16)
    ex["row_lines"] = re.findall(
        r"^row (\d+): \(\((-?\d+) \+ (-?\d+)\) \* (\d+) \+ 2\^(\d+)\) >> (\d+) = "
        r"\((-?\d+) \+ (\d+)\) >> (\d+) = (-?\d+)(?: -> saturates to (-?\d+))?$", comp, re.M)
    mt = re.search(r"`stream.bin`: (\d+) bytes, SHA-256 `([0-9a-f]{64})`; its first 16 bytes "
                   r"are `([0-9a-f ]+)`\. `stream.hex`: (\d+) bytes, SHA-256 `([0-9a-f]{64})`", t)
    ex["bin_bytes"], ex["bin_sha"] = int(mt.group(1)), mt.group(2)
    ex["bin_first16"] = bytes.fromhex(mt.group(3))
    ex["hex_bytes2"], ex["hex_sha"] = int(mt.group(4)), mt.group(5)
    return ex


EXAMPLES = {eid: parse_example(eid) for eid in EXAMPLE_IDS}


def ex_stream(ex):
    return D.hex_to_beats(ex["hex"].encode("ascii"), ex["build"]["bus"], "doc")


def test_document_parsed():
    assert set(SUBS) >= {"12.1", "12.2", "12.3", "12.4", "12.5", "12.6", "12.7",
                         "12.8", "12.9"}
    for ex in EXAMPLES.values():
        assert len(ex["sections"]) == 5
        assert ex["contents"] and ex["groups"] and ex["row_lines"]
        assert len(ex["row_lines"]) == ex["rows"]
    # every example with a field-by-field table was parsed
    for eid in ("12.2", "12.3", "12.4", "12.5", "12.6"):
        assert EXAMPLES[eid]["fields"], eid


# ---------------------------------------------------------------------------
# (a) worked examples

@pytest.mark.parametrize("eid", EXAMPLE_IDS)
def test_example_geometry(eid):
    ex = EXAMPLES[eid]
    build = D.make_build(ex["build"])
    lc = D.lc_parse(ex["name"])
    assert D.lc_to_dict(lc) == ex["to_dict"]
    assert D.lc_name(D.lc_from_dict(ex["to_dict"])) == ex["name"]
    g = D.geometry(build, lc, ex["rows"], ex["cols"])
    names = {"G": "G", "padded_cols": "padded_cols", "L": "L", "V": "V",
             "code_bits": "code_bits", "S": "S", "group_bits": "group_bits"}
    for k, v in ex["geometry"].items():
        if k == "G*L":
            assert g["G"] * g["L"] == v
        else:
            assert g[names[k]] == v, k
    for s, (nrec, rbits, used, beats, first) in ex["sections"].items():
        assert g["records"][s] == (nrec, rbits), s
        assert nrec * rbits == used, s
        assert g["sections"][s] == (first, beats), s
    assert g["total"] == ex["total"] == ex["hex_lines"]
    assert g["out_beats"] == ex["out_beats"]
    assert D.header_record(lc, ex["rows"], ex["cols"]) == ex["header"]


def _expected_logical(ex):
    """Logical arrays as the decoder returns them (6, "Reading the values")."""
    a = dict(ex["arrays"])
    if "weights" in a:
        a["int_weights"] = a.pop("weights")
    return a


@pytest.mark.parametrize("eid", EXAMPLE_IDS)
def test_example_decode(eid):
    ex = EXAMPLES[eid]
    data = ex_stream(ex)
    lay = D.decode_stream(data, ex["build"])
    assert lay["config"] == ex["to_dict"]
    assert (lay["rows"], lay["cols"]) == (ex["rows"], ex["cols"])
    assert lay["header"] == ex["header"]
    mode = ex["to_dict"]["mode"]
    dtypes = {"bias": np.int32, "mult": np.uint16, "shift": np.uint8,
              "act": np.int8, "int_weights": np.int8, "codes": np.int32,
              "coefs": np.int8, "signs": np.uint8,
              "codebook": np.int8 if mode == "vq" else np.uint8}
    for name, arr in _expected_logical(ex).items():
        got = lay[name]
        assert got.dtype == dtypes[name], name
        assert got.dtype == arr.dtype, name       # the document's dtypes too
        assert got.shape == arr.shape, name
        assert np.array_equal(got, arr), name
    for name in ("codebook", "codes", "coefs", "signs", "int_weights"):
        if name not in _expected_logical(ex):
            assert name not in lay, name
    assert lay["weights"].dtype == np.int64
    assert np.array_equal(lay["weights"], ex["W"])
    assert lay["acc"].tolist() == ex["acc"]
    assert lay["outputs"].tolist() == ex["y"]
    assert ex["out_beats"] == 1 and lay["out_beats"] == [ex["out_stream"]]
    # W also from the logical arrays given (7.1)
    a = ex["arrays"]
    W = D.weight_matrix(D.lc_parse(ex["name"]), ex["cols"], a.get("codebook"),
                        a.get("codes"), a.get("coefs"), a.get("signs"),
                        a.get("weights"))
    assert np.array_equal(W, ex["W"])


@pytest.mark.parametrize("eid", EXAMPLE_IDS)
def test_example_encode_and_files(eid):
    """The other direction: the logical arrays pack to the printed beats."""
    ex = EXAMPLES[eid]
    data = D.encode_stream(ex["build"], ex["name"], ex["rows"], ex["cols"],
                           ex["arrays"])
    assert data == ex_stream(ex)
    hx = D.beats_to_hex(data, ex["build"]["bus"])
    assert hx.decode("ascii") == ex["hex"]
    assert len(hx) == ex["hex_bytes"] == ex["hex_bytes2"]
    assert hashlib.sha256(hx).hexdigest() == ex["hex_sha"]
    assert len(data) == ex["bin_bytes"]
    assert data[:16] == ex["bin_first16"]
    assert data[5:8] == b"SV2"
    assert hashlib.sha256(data).hexdigest() == ex["bin_sha"]


@pytest.mark.parametrize("eid", EXAMPLE_IDS)
def test_example_compute_lines(eid):
    ex = EXAMPLES[eid]
    a = ex["arrays"]
    for (r, acc, bias, mult, e, s, prod, rnd, s2, val, sat) in ex["row_lines"]:
        r, acc, bias, mult, e, s = map(int, (r, acc, bias, mult, e, s))
        assert acc == ex["acc"][r] and bias == a["bias"][r]
        assert mult == a["mult"][r] and s == a["shift"][r] == int(s2)
        assert e == s - 1 and int(rnd) == 2 ** e
        assert int(prod) == (acc + bias) * mult
        assert int(val) == (int(prod) + int(rnd)) >> s
        y = max(-128, min(127, int(val)))
        assert (sat != "") == (y != int(val))
        assert ex["y"][r] == (int(sat) if sat else int(val)) == y
    y8 = np.array(ex["y"], np.int8)
    beats = D.output_beats(y8, ex["build"]["bus"])
    assert len(beats) == ex["out_beats"] == 1
    assert beats[0] == ex["out_stream"]


@pytest.mark.parametrize("eid", EXAMPLE_IDS)
def test_example_group_records(eid):
    ex = EXAMPLES[eid]
    build = D.make_build(ex["build"])
    bus = build["bus"]
    lc = D.lc_parse(ex["name"])
    g = D.geometry(build, lc, ex["rows"], ex["cols"])
    gb = g["group_bits"]
    first = g["sections"]["weights"][0]
    bits = D._to_bits(ex_stream(ex))
    assert len(ex["groups"]) == ex["rows"] * g["G"]
    for (t, r, q, s0, s1, b0s, b0b, b0st, b1s, b1b, b1st, rec) in ex["groups"]:
        assert t == r * g["G"] + q
        assert (s0, s1) == (t * gb, t * gb + gb - 1)
        assert (b0s, b0b) == divmod(s0, bus) and b0st == first + b0s
        assert (b1s, b1b) == divmod(s1, bus) and b1st == first + b1s
        val = int("".join(str(x) for x in bits[first * bus + s0:first * bus + s1 + 1][::-1]), 2)
        assert val == rec, t
        assert len(f"{rec:x}") <= D.ceil_div(gb, 4)


def _check_item(ex, build, g, lay, bits, section, sb, lo, hi, item):
    bus = build["bus"]
    s0, s1 = sb * bus + lo, sb * bus + hi
    nrec, w = g["records"][section]
    first = g["sections"][section][0]

    def sbits(a, b):
        return bits[first * bus + a:first * bus + b + 1]

    if section == "header":
        mt = re.fullmatch(r"header record(?:, record bits (\d+)\.\.(\d+))?", item)
        a, b = (int(mt.group(1)), int(mt.group(2))) if mt.group(1) else (0, 127)
        assert (s0, s1) == (a, b)
        return
    mt = re.fullmatch(r"codeword (\d+) \(codebook (\d+), entry (\d+)\)", item)
    if mt:
        wd, i, j = map(int, mt.groups())
        assert section == "codebook" and wd == i * ex["to_dict"]["k"] + j
        assert i < ex["to_dict"]["m"]
        assert (s0, s1) == (wd * w, wd * w + w - 1)
        return
    mt = re.fullmatch(r"row (\d+) \(bias (-?\d+), mult (\d+), shift (\d+)\)", item)
    if mt:
        r, bias, mult, shift = map(int, mt.groups())
        assert section == "params" and (s0, s1) == (r * 64, r * 64 + 63)
        assert (lay["bias"][r], lay["mult"][r], lay["shift"][r]) == (bias, mult, shift)
        return
    mt = re.fullmatch(r"act\[(\d+)\.\.(\d+)\]", item)
    if mt:
        a, b = map(int, mt.groups())
        assert section == "acts" and (s0, s1) == (a * 8, b * 8 + 7) and b < ex["cols"]
        return
    mt = re.fullmatch(r"padding columns? (\d+)(?:\.\.(\d+))? \(0\)", item)
    if mt:
        a = int(mt.group(1))
        b = int(mt.group(2) or a)
        assert section == "acts" and (a, b) == (ex["cols"], g["padded_cols"] - 1)
        assert (s0, s1) == (a * 8, b * 8 + 7) and not sbits(s0, s1).any()
        return
    mt = re.fullmatch(r"group (\d+) \(row (\d+), q (\d+)\)(?:, record bits (\d+)\.\.(\d+))?", item)
    if mt:
        t, r, q = map(int, mt.groups()[:3])
        a, b = (int(mt.group(4)), int(mt.group(5))) if mt.group(4) else (0, w - 1)
        assert section == "weights" and t == r * g["G"] + q
        assert (s0, s1) == (t * w + a, t * w + b)
        return
    assert item == "tail (0)", item
    assert s0 == nrec * w and hi == bus - 1 and not sbits(s0, s1).any()


@pytest.mark.parametrize("eid", EXAMPLE_IDS)
def test_example_contents_table(eid):
    """The per-beat contents tables agree with the layout of sections 4, 5."""
    ex = EXAMPLES[eid]
    build = D.make_build(ex["build"])
    lc = D.lc_parse(ex["name"])
    g = D.geometry(build, lc, ex["rows"], ex["cols"])
    data = ex_stream(ex)
    lay = D.decode_stream(data, build)
    bits = D._to_bits(data)
    assert [c[0] for c in ex["contents"]] == list(range(g["total"]))
    for beat, section, sb, cell in ex["contents"]:
        first, nb = g["sections"][section]
        assert beat == first + sb and sb < nb
        nxt = 0
        for item in cell.split("; "):
            mt = re.fullmatch(r"bits (\d+)\.\.(\d+): (.*)", item)
            lo, hi, what = int(mt.group(1)), int(mt.group(2)), mt.group(3)
            assert lo == nxt, (beat, item)
            _check_item(ex, build, g, lay, bits, section, sb, lo, hi, what)
            nxt = hi + 1
        assert nxt == build["bus"], beat


def _where_bits(where, bus):
    out = []
    for part in where.strip("*").split(" and "):
        beat, _, rng = part.partition(": ")
        a, b = _range(rng)
        out += [int(beat) * bus + x for x in range(a, b + 1)]
    return out


@pytest.mark.parametrize("eid", ["12.2", "12.3", "12.4", "12.5", "12.6"])
def test_example_field_tables(eid):
    """The field-by-field tables (straddling records) agree bit for bit."""
    ex = EXAMPLES[eid]
    build = D.make_build(ex["build"])
    bus = build["bus"]
    lc = D.lc_parse(ex["name"])
    g = D.geometry(build, lc, ex["rows"], ex["cols"])
    data = ex_stream(ex)
    lay = D.decode_stream(data, build)
    bits = D._to_bits(data)
    first = g["sections"]["weights"][0]
    gb, mults = g["group_bits"], build["mults"]
    for name, rbits, sbits, where, stored, lsb, value in ex["fields"]:
        rb0, rb1 = _range(rbits)
        sb0, sb1 = _range(sbits)
        t = sb0 // gb
        r, q = divmod(t, g["G"])
        assert sb0 - t * gb == rb0 and sb1 - sb0 == rb1 - rb0, name
        pos = _where_bits(where, bus)
        assert pos == list(range(first * bus + sb0, first * bus + sb1 + 1)), name
        assert ("**" in where) == (len(where.split(" and ")) == 2)
        got = "".join(str(bits[p]) for p in pos)
        assert got == lsb and int(lsb[::-1], 2) == int(stored), name
        mt = re.fullmatch(r"e(\d+) col(\d+)", name)
        if mt:
            e, c = map(int, mt.groups())
            b = lc["bits"]
            assert c == q * mults + e and rb0 == e * b
            assert int(value) == lay["weights"][r][c]
            assert int(value) == (1 - 2 * int(stored) if b == 1 else D.signed(int(stored), b))
            continue
        mt = re.fullmatch(r"sign e(\d+) col(\d+)( pad)?", name)
        if mt:
            e, c = int(mt.group(1)), int(mt.group(2))
            assert c == q * mults + e and rb0 == e
            assert bool(mt.group(3)) == (c >= ex["cols"])
            want = lay["signs"][r][c] if c < ex["cols"] else 0
            assert int(value) == want == int(stored)
            continue
        mt = re.fullmatch(r"slot(\d+) l(\d+) i(\d+) vec(\d+)( pad)?", name)
        assert mt, name
        s, l, i, v = map(int, mt.groups()[:4])
        m, cb, cf = lc["m"], g["code_bits"], lc["coef_bits"]
        assert s == l * m + i and v == q * g["L"] + l
        assert rb0 == g["B"] + s * g["S"] and rb1 - rb0 + 1 == g["S"]
        assert bool(mt.group(5)) == (v >= g["V"])
        vm = re.fullmatch(r"code (\d+)(?:, coef (-?\d+))?", value)
        code, coef = int(vm.group(1)), vm.group(2)
        assert code == int(stored) % (1 << cb)
        if v < g["V"]:
            assert code == lay["codes"][r][v][i]
        else:
            assert code == 0
        if cf:
            assert int(coef) == D.signed(int(stored) >> cb, cf)
            assert int(coef) == (lay["coefs"][r][v][i] if v < g["V"] else 0)
        else:
            assert coef is None


# Prose claims of section 12 ("Weights.", "Codebook.", "Field values" ...),
# transcribed: (example, row, col, W) and a few single facts.
PROSE_W = [("12.4", 0, 0, 1239), ("12.4", 0, 9, 538), ("12.4", 2, 8, 63),
           ("12.5", 0, 1, -20), ("12.5", 1, 6, -10), ("12.5", 2, 3, -255),
           ("12.6", 0, 0, 165), ("12.6", 0, 3, -348), ("12.6", 1, 10, 116)]


@pytest.mark.parametrize("eid,r,c,w", PROSE_W)
def test_example_prose_weights(eid, r, c, w):
    ex = EXAMPLES[eid]
    lay = D.decode_stream(ex_stream(ex), ex["build"])
    assert lay["weights"][r][c] == w


def test_example_prose_facts():
    a = EXAMPLES["12.2"]
    # int3 stores -4..3 as 4, 5, 6, 7, 0, 1, 2, 3; group 2 fields
    assert [v % 8 for v in range(-4, 4)] == [4, 5, 6, 7, 0, 1, 2, 3]
    assert [v % 8 for v in a["arrays"]["weights"][1][:8]] == [4, 1, 6, 3, 0, 5, 2, 7]
    # 12.4: slot value 2 | 12 << 2 = 50
    assert 2 | ((-4) % 16) << 2 == 50
    # 12.5: record 0 = 0xe432, low byte signs of row 0, high byte codes 0..3
    d = EXAMPLES["12.5"]
    signs0 = d["arrays"]["signs"][0]
    assert sum(int(s) << e for e, s in enumerate(signs0)) == 0x32
    assert sum(c << (2 * v) for v, c in enumerate([0, 1, 2, 3])) == 0xe4
    # 12.6: slot value 2 | (-3 mod 8) << 2 = 22, bits LSB first 0 1 1 0 1
    assert 2 | ((-3) % 8) << 2 == 22 and format(22, "05b")[::-1] == "01101"
    e = EXAMPLES["12.6"]
    lines = e["hex"].splitlines()
    assert lines[8] == "d0008ad825e4d088" and lines[9] == "7b7a351100000de6"
    # 12.7: record 0 = 0x41: lane 0 code 1, lane 1 code 4
    f = EXAMPLES["12.7"]
    assert f["arrays"]["codes"][0, :2, 0].tolist() == [1, 4]
    assert 1 | 4 << 4 == 0x41


@pytest.mark.parametrize("eid", EXAMPLE_IDS)
def test_example_against_implementation(eid, tmp_path):
    """The example's logical arrays through the implementation's public API
    give the document's outputs and files."""
    ex = EXAMPLES[eid]
    img = impl_image(ex["name"], ex["name"], ex["rows"], ex["cols"], ex["arrays"])
    from ssvq.reference import outputs
    assert np.asarray(outputs(img)).tolist() == ex["y"]
    out = tmp_path / "set"
    impl_write(out, ex["build"], [img])
    (lay,) = D.decode_image_set(out)
    sdir = out / lay["dir"]
    assert hashlib.sha256((sdir / "stream.bin").read_bytes()).hexdigest() == ex["bin_sha"]
    assert hashlib.sha256((sdir / "stream.hex").read_bytes()).hexdigest() == ex["hex_sha"]
    assert lay["outputs"].tolist() == ex["y"]


def test_manifest_example_12_8(tmp_path):
    t = SUBS["12.8"]
    shown = json.loads(re.search(r"```json\n(.*?)```", t, re.S).group(1))
    body = _code_block_after(t, "is this one line:").strip("\n")
    assert "\n" not in body
    assert json.dumps({k: v for k, v in shown.items() if k != "manifest_sha256"},
                      sort_keys=True, separators=(",", ":")) == body
    assert hashlib.sha256(body.encode()).hexdigest() == shown["manifest_sha256"]
    assert D.manifest_digest(shown) == shown["manifest_sha256"]
    assert shown["config"] == EXAMPLE_BUILD
    size = int(re.search(r"The manifest\n?\s*\((\d+) bytes", t).group(1))
    d = EXAMPLES["12.5"]
    ent = shown["layers"][0]
    assert ent["files"]["stream.bin"] == {"sha256": d["bin_sha"], "bytes": d["bin_bytes"]}
    assert ent["files"]["stream.hex"] == {"sha256": d["hex_sha"], "bytes": d["hex_bytes"]}
    build = D.make_build(EXAMPLE_BUILD)
    g = D.geometry(build, D.lc_from_dict(ent["config"]), ent["rows"], ent["cols"])
    assert {s: list(v) for s, v in g["sections"].items()} == ent["sections"]
    assert ent["beats"] == g["total"]
    assert ent["dir"] == "layers/000_ex.d"
    # the same set written by the implementation
    img = impl_image("ex.d", d["name"], d["rows"], d["cols"], d["arrays"],
                     scales={"row_scale": np.array([0.5, 0.25, 2.0])})
    out = tmp_path / "out"
    impl_write(out, EXAMPLE_BUILD, [img], meta={"note": "worked example D"})
    raw = (out / "manifest.json").read_bytes()
    written = json.loads(raw)
    assert json.dumps(written, indent=1).encode() == raw      # 8.2 form
    assert len(raw) == size
    # arrays.npz depends on the NumPy version (10); the rest must agree
    npz = written["layers"][0]["files"]["arrays.npz"]
    want = shown["layers"][0]["files"]["arrays.npz"]
    assert npz["bytes"] == want["bytes"]
    if np.__version__ == "2.4.6":
        assert npz["sha256"] == want["sha256"]
        assert written == shown
    (lay,) = D.decode_image_set(out)
    assert list(lay["scales"]) == ["row_scale"]
    assert lay["scales"]["row_scale"].dtype == np.float32
    assert lay["scales"]["row_scale"].tolist() == [0.5, 0.25, 2.0]
    with np.load(out / lay["dir"] / "arrays.npz") as z:
        assert sorted(z.files) == sorted(["bias", "mult", "shift", "act", "codebook",
                                          "codes", "signs", "scale_row_scale"])


def test_version1_stream_12_9():
    t = SUBS["12.9"]
    beat = re.search(r"begins with the beat `([0-9a-f]{16})`", t).group(1)
    msg = re.search(r"```\n(<file>: header magic.*?)\n```", t, re.S).group(1)
    # only the first beat is printed; the rest of the 15 beats is zero here
    data = bytes.fromhex(beat)[::-1] + bytes(8 * 14)
    with pytest.raises(D.DocFormatError) as ei:
        D.decode_stream(data, EXAMPLE_BUILD, where="<file>")
    assert str(ei.value) == msg


# ---------------------------------------------------------------------------
# other numbers printed in the document

def test_build_derived_tables():
    default = D.make_build({})["derived"]
    assert default == {"codebook_modes": ("vq", "ssvq"), "code_bits_max": 8,
                       "lanes_max": 8, "d_max": 8, "weight_bits": 14,
                       "acc_needed": 35, "max_group_bits": 256,
                       "max_record_bits": 256}
    ex = D.make_build(EXAMPLE_BUILD)["derived"]
    assert ex == {"codebook_modes": ("vq", "ssvq"), "code_bits_max": 4,
                  "lanes_max": 4, "d_max": 4, "weight_bits": 14,
                  "acc_needed": 29, "max_group_bits": 72,
                  "max_record_bits": 128}
    f = D.make_build(EXAMPLES["12.7"]["build"])["derived"]
    assert (f["weight_bits"], f["acc_needed"], f["max_group_bits"],
            f["max_record_bits"]) == (9, 24, 8, 128)
    b = D.make_build({})
    widths = {"int1": 32, "int3": 96, "int8": 256, "vq-k256-d4": 64,
              "vq-k256-d8": 32, "ssvq-k256-d8": 64, "vq-k16-d8-m2-c4": 64,
              "vq-k256-d4-m2-c4": 192, "ssvq-k256-d4-m2-c4": 224}
    for name, w in widths.items():
        assert D.group_bits_of(b, D.lc_parse(name)) == w, name


def test_geometry_examples_section4():
    b = D.make_build({})
    g = D.geometry(b, D.lc_parse("int4"), 1, 1)
    assert g["G"] == 1 and g["group_bits"] == 128
    assert [g["sections"][s][1] for s in D.SECTIONS] == [2, 0, 1, 4, 2]
    e = D.make_build(EXAMPLE_BUILD)
    g = D.geometry(e, D.lc_parse("int3"), 3, 10)
    assert [g["sections"][s] for s in D.SECTIONS] == [(0, 2), (2, 0), (2, 3), (5, 2), (7, 3)]
    g = D.geometry(e, D.lc_parse("vq-k4-d4-m2-c4"), 3, 10)
    assert (g["L"], g["V"], g["G"], g["S"], g["group_bits"], g["codewords"],
            g["codeword_bits"]) == (2, 3, 2, 6, 24, 8, 32)
    assert [g["sections"][s][1] for s in D.SECTIONS] == [2, 4, 3, 2, 3] and g["total"] == 14
    g = D.geometry(e, D.lc_parse("ssvq-k4-d2-m2-c3"), 2, 11)
    assert (g["L"], g["V"], g["G"], g["S"], g["group_bits"]) == (4, 6, 2, 5, 48)
    assert [g["sections"][s][1] for s in D.SECTIONS] == [2, 2, 2, 2, 3] and g["total"] == 11


def test_requantize_examples_section7():
    # 7.3: halves round up; mult = 1
    for value, want in [(-17.5, -17), (17.5, 18), (-1.75, -2), (-1.25, -1),
                        (2.5, 3), (-1.5, -1)]:
        acc = int(value * 4)                   # shift 2: value = acc / 4
        y = D.compute(np.array([[1]]), np.array([acc]), [0], [1], [2])["outputs"]
        assert y[0] == want, value
    assert D.compute(np.array([[100]]), np.array([100]), [7], [0], [5])["outputs"][0] == 0
    # 7.4
    assert D.output_beats(np.array([13, -128, 53], np.int8), 64) == [0x000000000035800d]
    assert D.output_beats(np.arange(9, dtype=np.int8), 64) == [0x0706050403020100, 8]
    # 7.5 bound
    assert 4080 * 128 * 65535 == 34224998400 < 2 ** 35


# The reference's messages of 2.2 / 3.2 / 3.3 (quoted in the document) for
# direct constructor calls, compared with the implementation (black box).
BAD_BUILDS = [
    {"kmax": 12, "bus": 32},
    {"mults": 256},
    {"bus": 48, "kmax": 8192, "modes": ["int", "fp"], "m_max": 3},
    {"mults": 8, "d_set": [16]},
    {"int_bits": []},
    {"modes": ["vq"], "d_set": [64], "mults": 256, "kmax": 2},
    {"int_bits": [7]},
    {"d_set": [3, 4]},
    {"d_set": []},
    {"d_set": [4, 4]},
    {"modes": []},
    {"coef_bits_max": 5, "max_rows": 0, "max_cols": 70000},
    {"m_max": True},
    {"mults": 2 ** 18, "d_set": [64]},
    {"kmax": 1},
]


GOOD_BUILDS = [
    {}, EXAMPLE_BUILD, {"int_bits": (True,)}, {"int_bits": [8.0]},
    {"modes": ["vq"], "int_bits": []}, {"modes": ["ssvq"], "int_bits": [3]},
    {"d_set": [64], "mults": 64}, {"mults": 1, "d_set": [1]},
    {"max_cols": 65535, "mults": 128, "d_set": [64]},
    {"mults": 128, "d_set": [16], "kmax": 4096}, {"d_set": [8, 4, 1]},
]


@pytest.mark.parametrize("fields", GOOD_BUILDS, ids=lambda f: json.dumps(f))
def test_good_builds_match_implementation(fields):
    from ssvq.config import AccelConfig
    D.make_build(fields)
    AccelConfig(**fields)


@pytest.mark.parametrize("modes", [None, 5])
def test_modes_not_iterable(modes):
    from ssvq.config import AccelConfig
    with pytest.raises(D.DocFormatError) as mine:
        D.make_build({"modes": modes})
    with pytest.raises(ValueError) as theirs:
        AccelConfig(modes=modes)
    assert str(mine.value) == str(theirs.value)


def test_group_bits_bounded_by_build():
    """2.4: a layer that passes check_layer has group_bits <= max_group_bits,
    and every record fits max_record_bits."""
    for fields in RANDOM_BUILDS + [EXAMPLE_BUILD, {}]:
        b = D.make_build(fields)
        der = b["derived"]
        for mode in b["modes"]:
            if mode == "int":
                lcs = [D.layer_config("int", bits=x) for x in b["int_bits"]]
            else:
                lcs = [D.layer_config(mode, k=2 ** e, d=d, m=m, coef_bits=c)
                       for e in range(1, D.log2(b["kmax"]) + 1) for d in b["d_set"]
                       for m in range(1, b["m_max"] + 1)
                       for c in range(b["coef_bits_max"] + 1)]
            for lc in lcs:
                D.check_layer(b, lc, 1, 1)
                assert D.group_bits_of(b, lc) <= der["max_group_bits"] <= der["max_record_bits"]


@pytest.mark.parametrize("fields", BAD_BUILDS, ids=lambda f: json.dumps(f))
def test_bad_builds_match_implementation(fields):
    from ssvq.config import AccelConfig
    with pytest.raises(D.DocFormatError) as mine:
        D.make_build(fields)
    with pytest.raises(ValueError) as theirs:
        AccelConfig(**fields)
    assert str(mine.value) == str(theirs.value)


def test_build_messages_quoted():
    cases = [
        ({"kmax": 12, "bus": 32}, "accelerator config: kmax: expected a power of two, "
         "found 12; bus: expected at least 64 bits, found 32"),
        ({"mults": 256}, "accelerator config: the widest record (header, codeword, activation word or "
         "weight group) is 2048 bits, more than 1024 (lower mults, m_max or kmax, or raise "
         "the smallest d)"),
        ({"modes": ["vq"], "d_set": [64], "mults": 256, "kmax": 2},
         "accelerator config: the widest record (header, codeword, activation word or "
         "weight group) is 2048 bits, more than 1024 (lower mults, m_max or kmax, or raise "
         "the smallest d)"),
    ]
    for fields, msg in cases:
        with pytest.raises(D.DocFormatError, match=re.escape(msg)):
            D.make_build(fields)
    with pytest.raises(D.DocFormatError, match=r"needs a 41-bit accumulator, have 40"):
        D.make_build({"mults": 2 ** 18, "d_set": [64]})
    assert D.make_build({"modes": ["vq"], "int_bits": []})
    assert D.make_build({"int_bits": [True]})["int_bits"] == (True,)


NAMES_OK = {"int4": "int4", "int1": "int1", "vq-k256-d4": "vq-k256-d4",
            "vq-k16-d8-m2-c4": "vq-k16-d8-m2-c4", "ssvq-k4-d2-m2-c3": "ssvq-k4-d2-m2-c3",
            "int04": "int4", "vq-k16-d8-m1": "vq-k16-d8", "vq-k16-d8-c0": "vq-k16-d8",
            "int4\n": "int4", "int\u0664": "int4", "vq-k2-d1": "vq-k2-d1",
            "vq-k2-d128": "vq-k2-d128", "vq-k4-d2-c1": "vq-k4-d2-c1"}
NAMES_BAD = ["INT4", " int4", "vq-k16-d8-c2-m2", "int7", "vq-k3-d4", "vq-k4-d3",
             "vq-k4-d4-m3", "ssvq-k4-d4-c5", "int", "vq-k16", 5, None]


@pytest.mark.parametrize("name", list(NAMES_OK))
def test_layer_names(name):
    assert D.lc_name(D.lc_parse(name)) == NAMES_OK[name]
    from ssvq.config import LayerConfig
    LayerConfig.parse(name)          # the implementation accepts it too


@pytest.mark.parametrize("name", NAMES_BAD, ids=repr)
def test_bad_layer_names_match_implementation(name):
    from ssvq.config import LayerConfig
    with pytest.raises(D.DocFormatError) as mine:
        D.lc_parse(name)
    with pytest.raises(ValueError) as theirs:
        LayerConfig.parse(name)
    assert str(mine.value) == str(theirs.value)


# ---------------------------------------------------------------------------
# (b) random layers through the implementation

def impl_image(name, config_name, rows, cols, arrays, scales=None):
    from ssvq.config import LayerConfig
    from ssvq.image import LayerImage
    kw = {k: arrays.get(k) for k in ("codebook", "codes", "coefs", "signs", "weights")}
    extra = {} if scales is None else {"scales": scales}
    return LayerImage(name=name, config=LayerConfig.parse(config_name), rows=rows,
                      cols=cols, bias=arrays["bias"], mult=arrays["mult"],
                      shift=arrays["shift"], act=arrays["act"], **kw, **extra)


def impl_write(out, build_fields, images, meta=None):
    from ssvq.config import AccelConfig
    from ssvq.image import write_images
    write_images(str(out), AccelConfig(**build_fields), images, meta=meta)


ALL_INT = [1, 2, 3, 4, 5, 6, 8]
RANDOM_BUILDS = [
    dict(kmax=16, d_set=[1, 2, 4, 8], int_bits=ALL_INT, modes=["int", "vq", "ssvq"],
         m_max=2, coef_bits_max=4, mults=8, bus=64, max_rows=64, max_cols=200),
    dict(kmax=64, d_set=[16, 2, 4], int_bits=[8, 1, 3, 5, 2, 4, 6],
         modes=["ssvq", "int", "vq"], m_max=2, coef_bits_max=4, mults=16, bus=128,
         max_rows=100, max_cols=300),
    dict(kmax=256, d_set=[4, 8, 32], int_bits=ALL_INT, modes=["int", "vq", "ssvq"],
         m_max=2, coef_bits_max=4, mults=32, bus=256, max_rows=40, max_cols=4096),
    dict(kmax=8, d_set=[1, 2, 4], int_bits=ALL_INT, modes=["int", "vq", "ssvq"],
         m_max=2, coef_bits_max=4, mults=4, bus=64, max_rows=30, max_cols=90),
    dict(kmax=32, d_set=[8, 64], int_bits=[2, 8], modes=["vq", "ssvq", "int"],
         m_max=2, coef_bits_max=3, mults=64, bus=128, max_rows=20, max_cols=500),
    dict(kmax=4096, d_set=[16], int_bits=[], modes=["ssvq"], m_max=1,
         coef_bits_max=2, mults=16, bus=256, max_rows=12, max_cols=100),
    dict(kmax=16, d_set=[2], int_bits=[], modes=["vq"], m_max=1, coef_bits_max=0,
         mults=8, bus=256, max_rows=64, max_cols=64),
    dict(kmax=4, d_set=[4, 8], int_bits=[4], modes=["int", "vq"], m_max=2,
         coef_bits_max=1, mults=128, bus=64, max_rows=9, max_cols=400),
]


def _configs_for(build, rng):
    out = []
    if "int" in build["modes"]:
        out += [f"int{b}" for b in build["int_bits"]]
    for mode in ("vq", "ssvq"):
        if mode not in build["modes"]:
            continue
        ks = [2 ** e for e in range(1, D.log2(build["kmax"]) + 1)]
        combos = set()
        for m in range(1, build["m_max"] + 1):
            for c in sorted({0, 2, 4, 1, 3} & set(range(build["coef_bits_max"] + 1))):
                combos.add((m, c))
        for m, c in sorted(combos):
            k = int(rng.choice(ks[:8])) if c % 2 == 0 else int(rng.choice(ks[:3]))
            d = int(rng.choice(build["d_set"]))
            out.append(D.lc_name(D.layer_config(mode, k=k, d=d, m=m, coef_bits=c)))
        # the largest k and every d at least once
        for d in build["d_set"]:
            k = min(build["kmax"], 256) if d != min(build["d_set"]) else build["kmax"]
            out.append(D.lc_name(D.layer_config(mode, k=k, d=d, m=build["m_max"],
                                                coef_bits=build["coef_bits_max"])))
    return out


def random_layer(build, name, rng, rows=None, cols=None):
    lc = D.lc_parse(name)
    mults = build["mults"]
    col_choices = [1, 2, 3, mults - 1, mults, mults + 1, 2 * mults + 3, 3 * mults - 1,
                   int(rng.integers(1, build["max_cols"] + 1))]
    if cols is None:
        cols = int(rng.choice([c for c in col_choices if 1 <= c <= build["max_cols"]]))
    if rows is None:
        rows = int(rng.choice([1, 2, 3, 5, 7, int(rng.integers(1, build["max_rows"] + 1))]))
        rows = min(rows, build["max_rows"])
    a = {"act": rng.integers(-128, 128, cols).astype(np.int8)}
    if rng.random() < 0.3:
        a["act"][rng.integers(0, cols)] = -128
    if lc["mode"] == "int":
        b = lc["bits"]
        if b == 1:
            a["weights"] = rng.choice([-1, 1], (rows, cols)).astype(np.int8)
        else:
            a["weights"] = rng.integers(-2 ** (b - 1), 2 ** (b - 1), (rows, cols)).astype(np.int8)
    else:
        k, d, m, c = lc["k"], lc["d"], lc["m"], lc["coef_bits"]
        V = D.ceil_div(cols, d)
        lo, hi = (-128, 128) if lc["mode"] == "vq" else (0, 256)
        a["codebook"] = rng.integers(lo, hi, (m * k, d)).astype(
            np.int8 if lc["mode"] == "vq" else np.uint8)
        a["codes"] = rng.integers(0, k, (rows, V, m)).astype(np.int32)
        if c:
            a["coefs"] = rng.integers(-2 ** (c - 1), 2 ** (c - 1), (rows, V, m)).astype(np.int8)
        if lc["mode"] == "ssvq":
            a["signs"] = rng.integers(0, 2, (rows, cols)).astype(np.uint8)
    W = D.weight_matrix(lc, cols, a.get("codebook"), a.get("codes"), a.get("coefs"),
                        a.get("signs"), a.get("weights"))
    acc = W @ a["act"].astype(np.int64)
    bias = rng.integers(-2000, 2000, rows)
    wide = rng.random(rows) < 0.15
    bias[wide] = rng.integers(-2 ** 31, 2 ** 31, int(wide.sum()))
    mult = rng.integers(0, 65536, rows)
    mult[rng.random(rows) < 0.1] = 0
    mult[rng.random(rows) < 0.1] = 65535
    shift = np.empty(rows, np.int64)
    for r in range(rows):
        mag = abs((int(acc[r]) + int(bias[r])) * int(mult[r]))
        s = mag.bit_length() - 6 + int(rng.integers(-2, 3))
        if rng.random() < 0.1:
            s = int(rng.integers(1, 64))
        shift[r] = min(63, max(1, s))
    a["bias"] = bias.astype(np.int32)
    a["mult"] = mult.astype(np.uint16)
    a["shift"] = shift.astype(np.uint8)
    return lc, rows, cols, a, W


def _layer_name(i, cfg_name):
    odd = ["fc int", "vq/c", "l\u00e4yer", "a.b-c_d", "x:y"][i % 5]
    return f"{odd}{i} {cfg_name}"


def _dir_name(i, name):
    safe = "".join(ch if (ch.isalnum() or ch in "._-") else "_" for ch in name)
    return f"layers/{i:03d}_{safe}"


@pytest.mark.parametrize("bi", range(len(RANDOM_BUILDS)))
def test_random_layers_against_implementation(bi, tmp_path):
    from ssvq.reference import outputs
    fields = RANDOM_BUILDS[bi]
    build = D.make_build(fields)
    rng = np.random.default_rng(1000 + bi)
    gen, images = [], []
    for i, cfg_name in enumerate(_configs_for(build, rng)):
        lc, rows, cols, arrays, W = random_layer(build, cfg_name, rng)
        name = _layer_name(i, cfg_name)
        img = impl_image(name, cfg_name, rows, cols, arrays)
        y_impl = np.asarray(outputs(img))
        y_mine = D.compute(W, arrays["act"], arrays["bias"], arrays["mult"],
                           arrays["shift"])["outputs"]
        assert y_impl.dtype == np.int8
        assert np.array_equal(y_impl, y_mine), (name, y_impl, y_mine)
        gen.append((name, lc, rows, cols, arrays, W, y_impl))
        images.append(img)
    out = tmp_path / "set"
    impl_write(out, fields, images, meta={"build": bi})
    # manifest form (8.2)
    raw = (out / "manifest.json").read_bytes()
    man = json.loads(raw)
    assert json.dumps(man, indent=1).encode() == raw
    assert list(man) == ["format", "version", "config", "meta", "layers", "manifest_sha256"]
    assert man["config"] == {k: fields[k] for k in D.BUILD_FIELDS}
    assert list(man["config"]) == list(D.BUILD_FIELDS)
    assert man["meta"] == {"build": bi}
    decoded = D.decode_image_set(out)
    assert len(decoded) == len(gen)
    for i, (lay, (name, lc, rows, cols, arrays, W, y_impl)) in enumerate(zip(decoded, gen)):
        ent = man["layers"][i]
        assert list(ent) == ["name", "config", "rows", "cols", "dir", "beats",
                             "sections", "files", "meta"]
        assert ent["dir"] == _dir_name(i, name)
        assert lay["name"] == name and lay["config"] == D.lc_to_dict(lc)
        assert list(ent["config"]) == list(D.lc_to_dict(lc))
        assert (lay["rows"], lay["cols"]) == (rows, cols)
        assert np.array_equal(lay["weights"], W), name
        assert np.array_equal(lay["outputs"], y_impl), name
        for key, val in arrays.items():
            got = lay["int_weights" if key == "weights" else key]
            assert np.array_equal(got, val), (name, key)
        # both directions: the doc encoder writes the implementation's bytes
        mine = D.encode_stream(build, lc, rows, cols, arrays)
        assert mine == lay["stream"], name
        sdir = out / ent["dir"]
        assert (sdir / "stream.hex").read_bytes() == D.beats_to_hex(mine, build["bus"])
        with np.load(sdir / "arrays.npz") as z:
            assert sorted(z.files) == sorted(arrays)


def test_extreme_values_int64(tmp_path):
    """7.5: the largest |acc| the format allows, and shifts 1, 52, 53, 63."""
    from ssvq.reference import outputs
    fields = dict(kmax=16, d_set=[1], int_bits=[8], modes=["ssvq", "int"], m_max=2,
                  coef_bits_max=4, mults=8, bus=64, max_rows=8, max_cols=65535)
    build = D.make_build(fields)
    assert build["derived"]["acc_needed"] == 39
    rows, cols = 6, 65535
    name = "ssvq-k2-d1-m2-c4"
    a = {"act": np.full(cols, -128, np.int8),
         "codebook": np.full((4, 1), 255, np.uint8),
         "codes": np.zeros((rows, cols, 2), np.int32),
         "coefs": np.full((rows, cols, 2), -8, np.int8),
         "signs": np.zeros((rows, cols), np.uint8)}
    a["signs"][1] = 1
    a["bias"] = np.array([2 ** 31 - 1, -2 ** 31, 2 ** 31 - 1, 2 ** 31 - 1, 0, 5], np.int32)
    a["mult"] = np.array([65535, 65535, 65535, 65535, 65535, 0], np.uint16)
    a["shift"] = np.array([52, 52, 53, 63, 1, 1], np.uint8)
    lay = D.decode_stream(D.encode_stream(build, name, rows, cols, a), build)
    assert (lay["weights"][0] == -4080).all() and (lay["weights"][1] == 4080).all()
    assert lay["acc"][0] == 4080 * 128 * 65535 and lay["acc"][1] == -4080 * 128 * 65535
    want = []
    for r in range(rows):
        x = ((int(lay["acc"][r]) + int(a["bias"][r])) * int(a["mult"][r])
             + (1 << (int(a["shift"][r]) - 1))) >> int(a["shift"][r])
        want.append(max(-128, min(127, x)))
    assert lay["outputs"].tolist() == want
    assert want[2] == want[3] == 0 and want[4] == 127 and want[5] == 0
    img = impl_image("big", name, rows, cols, a)
    assert np.asarray(outputs(img)).tolist() == want
    w8 = {"act": np.full(300, -128, np.int8), "weights": np.full((2, 300), -128, np.int8),
          "bias": np.array([0, 1], np.int32), "mult": np.array([1, 65535], np.uint16),
          "shift": np.array([1, 40], np.uint8)}
    lay8 = D.decode_stream(D.encode_stream(build, "int8", 2, 300, w8), build)
    assert lay8["acc"].tolist() == [300 * 128 * 128] * 2
    img8 = impl_image("i8", "int8", 2, 300, w8)
    assert np.asarray(outputs(img8)).tolist() == lay8["outputs"].tolist()
    out = tmp_path / "big"
    impl_write(out, fields, [img, img8])
    got = D.decode_image_set(out)
    assert got[0]["outputs"].tolist() == want
    assert got[1]["outputs"].tolist() == lay8["outputs"].tolist()


# ---------------------------------------------------------------------------
# (c) rejections, with the document's messages

def _set_bits(data, positions, value=1):
    b = bytearray(data)
    for p in positions:
        if value:
            b[p // 8] |= 1 << (p % 8)
        else:
            b[p // 8] &= ~(1 << (p % 8))
    return bytes(b)


def _set_header_field(data, offset, width, value):
    h = int.from_bytes(data[:16], "little")
    h = (h & ~(((1 << width) - 1) << offset)) | (value << offset)
    return h.to_bytes(16, "little") + data[16:]


def _reject(data, build, msg):
    with pytest.raises(D.DocFormatError) as ei:
        D.decode_stream(data, build, where="<file>")
    assert str(ei.value) == msg


A, C, Dx, E = (EXAMPLES[k] for k in ("12.2", "12.4", "12.5", "12.6"))


def _sec_bit(ex, section, bit):
    first = D.geometry(D.make_build(ex["build"]), D.lc_parse(ex["name"]),
                       ex["rows"], ex["cols"])["sections"][section][0]
    return first * ex["build"]["bus"] + bit


STREAM_EDITS = [
    ("beat width", A, lambda s: s + b"\0", "<file>: beat width: expected 8 bytes, found (81,)"),
    ("one beat", A, lambda s: s[:8], "<file>: beats: expected at least the 2-beat header, found 1"),
    ("bad magic", A, lambda s: _set_header_field(s, 40, 24, 0x123456),
     "<file>: header magic: expected 0x325653, found 0x123456"),
    ("mode 3", A, lambda s: _set_header_field(s, 0, 8, 3),
     "<file>: header mode: expected 0..2, found 3"),
    ("reserved", A, lambda s: _set_bits(s, [110]),
     "<file>: header reserved bits: expected zero, found non-zero bits"),
    ("int code_bits", A, lambda s: _set_header_field(s, 72, 8, 2),
     "<file>: header code_bits/log2_d/m/coef_bits: expected 0 for an int layer, found [2, 0, 0, 0]"),
    ("vq bits", C, lambda s: _set_header_field(s, 64, 8, 2),
     "<file>: header bits: expected 0 for a vq/ssvq layer, found 2"),
    ("code_bits 13", C, lambda s: _set_header_field(s, 72, 8, 13),
     "<file>: header code_bits: expected 1..12, found 13"),
    ("code_bits 0", C, lambda s: _set_header_field(s, 72, 8, 0),
     "<file>: header code_bits: expected 1..12, found 0"),
    ("log2_d 7", C, lambda s: _set_header_field(s, 80, 8, 7),
     "<file>: header log2_d: expected 0..6, found 7"),
    ("coef_bits 5", C, lambda s: _set_header_field(s, 96, 8, 5),
     "layer config vq: coef_bits: expected 0..4, found 5"),
    ("m 3", C, lambda s: _set_header_field(s, 88, 8, 3),
     "layer config vq: m: expected 1..2, found 3"),
    ("int bits 7", A, lambda s: _set_header_field(s, 64, 8, 7),
     "layer config int: bits: expected one of (1, 2, 3, 4, 5, 6, 8), found 7"),
    ("int bits 0", A, lambda s: _set_header_field(s, 64, 8, 0),
     "layer config int: bits: expected one of (1, 2, 3, 4, 5, 6, 8), found 0"),
    ("d 8", C, lambda s: _set_header_field(s, 80, 8, 3),
     "<file>: header: d=8 is not in this build's d_set [2, 4]"),
    ("k 32", C, lambda s: _set_header_field(s, 72, 8, 5),
     "<file>: header: k=32 is above kmax=16 of this build"),
    ("cols 65", A, lambda s: _set_header_field(s, 24, 16, 65),
     "<file>: header: cols=65 outside 1..64 (max_cols)"),
    ("rows 0", A, lambda s: _set_header_field(s, 8, 16, 0),
     "<file>: header: rows=0 outside 1..64 (max_rows)"),
    ("extra beat", A, lambda s: s + bytes(8),
     "<file>: beat count: expected 10 for int3 3x10, found 11"),
    ("rows 4", A, lambda s: _set_header_field(s, 8, 16, 4),
     "<file>: beat count: expected 11 for int3 4x10, found 10"),
    ("params reserved", A, lambda s: _set_bits(s, [_sec_bit(A, "params", 64 + 60)]),
     "<file>: params reserved bits 54..63: expected zero, found non-zero"),
    ("shift 0", A, lambda s: _set_bits(s, [_sec_bit(A, "params", 64 + 48 + i) for i in range(6)], 0),
     "<file>: params shift: expected 1..63, found 0"),
    ("acts padding column", A, lambda s: _set_bits(s, [_sec_bit(A, "acts", 64 + 20)]),
     "<file>: acts padding columns: expected zero, found non-zero"),
    ("weights tail", A, lambda s: _set_bits(s, [_sec_bit(A, "weights", 128 + 40)]),
     "<file>: weights padding: expected zero, found non-zero bits"),
    ("tail before padding column", A,
     lambda s: _set_bits(s, [_sec_bit(A, "weights", 128 + 40), _sec_bit(A, "weights", 126)]),
     "<file>: weights padding: expected zero, found non-zero bits"),
    ("int padding column", A, lambda s: _set_bits(s, [_sec_bit(A, "weights", 126)]),
     "<file>: weights padding columns: expected zero, found non-zero bits"),
    ("code padding vector", C, lambda s: _set_bits(s, [_sec_bit(C, "weights", 132)]),
     "<file>: codes padding vectors: expected zero, found non-zero"),
    ("coef padding vector", C, lambda s: _set_bits(s, [_sec_bit(C, "weights", 135)]),
     "<file>: coefs padding vectors: expected zero, found non-zero"),
    ("sign padding column", Dx, lambda s: _set_bits(s, [_sec_bit(Dx, "weights", 7)]),
     "<file>: signs padding columns: expected zero, found non-zero"),
    ("sign of partly-inside vector", E, lambda s: _set_bits(s, [_sec_bit(E, "weights", 144 + 3)]),
     "<file>: signs padding columns: expected zero, found non-zero"),
    ("padding vector slot of E", E, lambda s: _set_bits(s, [_sec_bit(E, "weights", 48 + 28)]),
     "<file>: codes padding vectors: expected zero, found non-zero"),
]


@pytest.mark.parametrize("what,ex,edit,msg", STREAM_EDITS, ids=[e[0] for e in STREAM_EDITS])
def test_stream_rejections(what, ex, edit, msg):
    _reject(edit(ex_stream(ex)), ex["build"], msg)


def test_stream_rejections_tails():
    """Tails that none of the printed examples has: built with the doc encoder."""
    rng = np.random.default_rng(7)
    b128 = dict(EXAMPLE_BUILD, bus=128)
    b256 = dict(EXAMPLE_BUILD, bus=256)
    cases = [(EXAMPLE_BUILD, "vq-k2-d2", 3, 5, "codebook", "codebook padding"),
             (b128, "int2", 3, 5, "params", "params padding"),
             (b128, "int2", 3, 5, "acts", "acts padding")]
    for bf, name, rows, cols, section, what in cases:
        build = D.make_build(bf)
        _, _, _, arrays, _ = random_layer_fixed(build, name, rows, cols, rng)
        data = D.encode_stream(build, name, rows, cols, arrays)
        D.decode_stream(data, build)
        g = D.geometry(build, D.lc_parse(name), rows, cols)
        first, nb = g["sections"][section]
        nrec, w = g["records"][section]
        assert nrec * w < nb * build["bus"], (name, section)   # there is a tail
        bad = _set_bits(data, [first * build["bus"] + nb * build["bus"] - 1])
        _reject(bad, build, f"<file>: {what}: expected zero, found non-zero bits")
    # bus 256: bits 128..255 of the header beat belong to the header
    build = D.make_build(b256)
    _, _, _, arrays, _ = random_layer_fixed(build, "int4", 2, 3, rng)
    data = D.encode_stream(build, "int4", 2, 3, arrays)
    D.decode_stream(data, build)
    _reject(_set_bits(data, [200]), build,
            "<file>: header reserved bits: expected zero, found non-zero bits")
    # every bit pattern of a real value is valid (6, notes): flip real fields
    ex = C
    data = ex_stream(ex)
    for bit in (_sec_bit(ex, "codebook", 5), _sec_bit(ex, "weights", 7),
                _sec_bit(ex, "params", 33), _sec_bit(ex, "acts", 70)):
        D.decode_stream(_set_bits(data, [bit]), ex["build"])
    # a numpy beat array of the wrong width
    with pytest.raises(D.DocFormatError, match=r"beat width: expected 8 bytes, found \(4,\)"):
        D.decode_stream(np.zeros(4, np.uint8), EXAMPLE_BUILD)


def random_layer_fixed(build, name, rows, cols, rng):
    return random_layer(build, name, rng, rows, cols)


# --- image-set rejections ---------------------------------------------------

@pytest.fixture(scope="module")
def base_set(tmp_path_factory):
    """Examples A (int3), C (vq) and D (ssvq) written by the implementation."""
    out = tmp_path_factory.mktemp("base") / "set"
    imgs = [impl_image("fc.int3", A["name"], A["rows"], A["cols"], A["arrays"]),
            impl_image("vq/c", C["name"], C["rows"], C["cols"], C["arrays"]),
            impl_image("ex.d", Dx["name"], Dx["rows"], Dx["cols"], Dx["arrays"])]
    impl_write(out, EXAMPLE_BUILD, imgs)
    return out


def _copy(base, tmp_path):
    dst = tmp_path / "img"
    shutil.copytree(base, dst)
    return dst


def _load(root):
    return json.loads((root / "manifest.json").read_text())


def _save(root, man, redigest=True):
    if redigest:
        man["manifest_sha256"] = D.manifest_digest(man)
    (root / "manifest.json").write_text(json.dumps(man, indent=1))


def _refresh_file(root, man, i, fn):
    p = root / man["layers"][i]["dir"] / fn
    data = p.read_bytes()
    man["layers"][i]["files"][fn] = {"sha256": hashlib.sha256(data).hexdigest(),
                                     "bytes": len(data)}


def test_base_set_reads(base_set):
    layers = D.decode_image_set(base_set)
    assert [x["name"] for x in layers] == ["fc.int3", "vq/c", "ex.d"]
    assert [x["dir"] for x in layers] == ["layers/000_fc.int3", "layers/001_vq_c",
                                          "layers/002_ex.d"]
    man = _load(base_set)
    assert man["meta"] == {} and [e["meta"] for e in man["layers"]] == [{}, {}, {}]
    for lay, ex in zip(layers, (A, C, Dx)):
        assert lay["outputs"].tolist() == ex["y"]
        assert np.array_equal(lay["weights"], ex["W"])


def _manifest_edit(key, value):
    def f(man, root):
        if value is _DEL:
            del man[key]
        else:
            man[key] = value
    return f


_DEL = object()
M = "<m>"


def _entry_edit(i, key, value):
    def f(man, root):
        man["layers"][i][key] = value
    return f


MANIFEST_EDITS = [
    ("version 1", _manifest_edit("version", 1),
     f"{M}: version: expected 2, found 1 (a version 1 image set, which this accelerator "
     "no longer reads; recompress it with `ssvq compress`)"),
    ("version 1.0", _manifest_edit("version", 1.0),
     f"{M}: version: expected 2, found 1 (a version 1 image set, which this accelerator "
     "no longer reads; recompress it with `ssvq compress`)"),
    ("version true", _manifest_edit("version", True),
     f"{M}: version: expected 2, found 1 (a version 1 image set, which this accelerator "
     "no longer reads; recompress it with `ssvq compress`)"),
    ("version 3", _manifest_edit("version", 3), f"{M}: version: expected 2, found 3"),
    ("version '2'", _manifest_edit("version", "2"), f"{M}: version: expected 2, found '2'"),
    ("version 2.0", _manifest_edit("version", 2.0), f"{M}: version: expected 2, found 2.0"),
    ("version absent", _manifest_edit("version", _DEL), f"{M}: version: expected 2, found None"),
    ("format", _manifest_edit("format", "x"), f"{M}: format: expected ssvq-image, found 'x'"),
    ("config kmax missing", lambda m, r: m["config"].pop("kmax"),
     f"{M}: config: missing field(s) ['kmax']"),
    ("config absent", _manifest_edit("config", _DEL),
     f"{M}: config: expected an object of config fields, found NoneType"),
    ("config lanes", lambda m, r: m["config"].update(lanes=4),
     f"{M}: config: unknown field(s) ['lanes']; expected ['kmax', 'd_set', 'int_bits', "
     "'modes', 'm_max', 'coef_bits_max', 'mults', 'bus', 'max_rows', 'max_cols']"),
    ("config kmax '16'", lambda m, r: m["config"].update(kmax="16"),
     f"{M}: config: kmax: expected an integer, found '16'"),
    ("config bus True", lambda m, r: m["config"].update(bus=True),
     f"{M}: config: bus: expected an integer, found True"),
    ("config kmax 12 bus 32", lambda m, r: m["config"].update(kmax=12, bus=32),
     f"{M}: config: accelerator config: kmax: expected a power of two, found 12; bus: "
     "expected at least 64 bits, found 32"),
    ("config many", lambda m, r: m["config"].update(bus=48, kmax=8192, modes=["int", "fp"], m_max=3),
     f"{M}: config: accelerator config: bus: expected a power of two, found 48; kmax: expected "
     "2..4096, found 8192; modes: expected distinct names from ('int', 'vq', 'ssvq'), found "
     "('int', 'fp'); m_max: expected 1..2, found 3"),
    ("config d_set 16", lambda m, r: m["config"].update(d_set=[16]),
     f"{M}: config: accelerator config: d_set: every d must be at most mults (8), found (16,)"),
    ("config int_bits empty", lambda m, r: m["config"].update(int_bits=[]),
     f"{M}: config: accelerator config: int_bits: expected at least one width when the int "
     "mode is built"),
    ("layers empty", _manifest_edit("layers", []),
     f"{M}: layers: expected a non-empty list, found an empty list"),
    ("layers dict", _manifest_edit("layers", {}),
     f"{M}: layers: expected a non-empty list, found dict"),
    ("rows True", _entry_edit(0, "rows", True), f"{M}: layers[0].rows: expected int, found True"),
    ("entry 5", lambda m, r: m["layers"].__setitem__(0, 5),
     f"{M}: layers[0].name: expected str, found 5"),
    ("layer config bad", _entry_edit(2, "config", {"mode": "vq", "bits": 2, "k": 3, "d": 4,
                                                    "m": 3, "coef_bits": 5}),
     f"{M}: layers[2].config: layer config vq: bits: expected 0 for a vq layer, found 2; k: "
     "expected a power of two >= 2, found 3; m: expected 1..2, found 3; coef_bits: expected "
     "0..4, found 5"),
    ("layer config int7", _entry_edit(0, "config", {"mode": "int", "bits": 7}),
     f"{M}: layers[0].config: layer config int: bits: expected one of (1, 2, 3, 4, 5, 6, 8), found 7"),
    ("layer config x", _entry_edit(0, "config", {"mode": "int", "bits": 3, "x": 1}),
     f"{M}: layers[0].config: unknown field(s) ['x']; expected ['bits', 'coef_bits', 'd', 'k', "
     "'m', 'mode']"),
    ("layer config no mode", _entry_edit(0, "config", {"bits": 3}),
     f"{M}: layers[0].config: LayerConfig.__init__() missing 1 required positional argument: 'mode'"),
    ("k 32", _entry_edit(1, "config", {"mode": "vq", "k": 32, "d": 4, "m": 2, "coef_bits": 4}),
     f"{M}: layers[1] (vq/c): k=32 is above kmax=16 of this build"),
    ("rows 65", _entry_edit(0, "rows", 65), f"{M}: layers[0] (fc.int3): rows=65 outside 1..64 (max_rows)"),
    ("dir ..", _entry_edit(0, "dir", "../x"),
     f"{M}: layers[0].dir: expected a relative path inside the image, found ../x"),
    ("files npz None", lambda m, r: m["layers"][0]["files"].__setitem__("arrays.npz", None),
     f"{M}: layers[0].files.arrays.npz: expected {{sha256: str, bytes: int}}, found None"),
    ("sections extra", lambda m, r: m["layers"][0]["sections"].__setitem__("extra", [0, 0]),
     f"{M}: layers[0].sections: expected exactly ['header', 'codebook', 'params', 'acts', "
     "'weights'], found ['acts', 'codebook', 'extra', 'header', 'params', 'weights']"),
    ("sections acts [5]", lambda m, r: m["layers"][0]["sections"].__setitem__("acts", [5]),
     f"{M}: layers[0].sections.acts: expected [first_beat, count], found [5]"),
    ("duplicate names", lambda m, r: m["layers"][1].__setitem__("name", "fc.int3"),
     f"{M}: layers[].name: expected unique names, found duplicates ['fc.int3']"),
    ("sections wrong", lambda m, r: m["layers"][0]["sections"].__setitem__("params", [2, 2]),
     f"{M} layer fc.int3: sections: expected {{'header': (0, 2), 'codebook': (2, 0), "
     "'params': (2, 3), 'acts': (5, 2), 'weights': (7, 3)}, found {'header': (0, 2), "
     "'codebook': (2, 0), 'params': (2, 2), 'acts': (5, 2), 'weights': (7, 3)}"),
    ("config vs header", _entry_edit(2, "config", {"mode": "vq", "k": 4, "d": 2, "m": 1,
                                                    "coef_bits": 0}),
     f"{M} layer ex.d: config: expected {{'mode': 'ssvq', 'k': 4, 'd': 2, 'm': 1, "
     "'coef_bits': 0} (from the stream header), found {'mode': 'vq', 'k': 4, 'd': 2, 'm': 1, "
     "'coef_bits': 0}"),
    ("cols vs header", _entry_edit(0, "cols", 9),
     f"{M} layer fc.int3: cols: expected 10 (from the stream header), found 9"),
    ("rows vs header", _entry_edit(2, "rows", 2),
     None),   # sections differ first (params beats): checked by its own message below
    ("beats", _entry_edit(0, "beats", 11), "<d0>: beats: expected 11, found 10"),
]


@pytest.mark.parametrize("what,edit,msg", MANIFEST_EDITS, ids=[e[0] for e in MANIFEST_EDITS])
def test_manifest_rejections(what, edit, msg, base_set, tmp_path):
    root = _copy(base_set, tmp_path)
    man = _load(root)
    edit(man, root)
    _save(root, man)
    m = str(root / "manifest.json")
    with pytest.raises(D.DocFormatError) as ei:
        D.decode_image_set(root)
    text = str(ei.value)
    if msg is None:
        assert text.startswith(f"{m} layer ex.d: sections: expected"), text
        return
    msg = msg.replace("<m>", m).replace("<d0>", str(root / "layers/000_fc.int3"))
    assert text == msg


def _crlf(b):
    return b.replace(b"\n", b"\r\n")


FILE_EDITS = [
    ("missing hex", "stream.hex", None, False, "stream.hex: expected file listed in manifest, found nothing"),
    ("bin size", "stream.bin", lambda b: b + b"\0", False, "stream.bin: size in bytes: expected 80, found 81"),
    ("bin sha", "stream.bin", lambda b: b[:-1] + b"\1", False, "stream.bin: sha256: expected {sha}, found {new}"),
    ("bin multiple", "stream.bin", lambda b: b + b"\0", True, "stream.bin: size: expected a multiple of 8, found 81"),
    ("hex crlf", "stream.hex", _crlf, True, "stream.hex: line 1 length: expected 16 hex digits, found 17"),
    ("hex non-ascii", "stream.hex", lambda b: b[:5] + "é".encode() + b[7:], True,
     "stream.hex: byte 5: expected ASCII hex digits, found byte 0xc3"),
    ("hex doubled newline", "stream.hex", lambda b: b + b"\n", True,
     "stream.hex: line 11 length: expected 16 hex digits, found 0"),
    ("hex g", "stream.hex", lambda b: b"g" + b[1:], True,
     "stream.hex: line 1: expected hex digits, found 'g25653000a000300'"),
    ("hex space", "stream.hex", lambda b: b"3 " + b[2:], True,
     "stream.hex: line 1: expected hex digits, found '3 5653000a000300'"),
    ("hex different", "stream.hex", lambda b: b.replace(b"000a012c00000005", b"000a012c00000006"), True,
     "stream.hex: contents: expected the same beats as stream.bin, found different beats"),
    ("bin extra beat", "stream.bin", lambda b: b + bytes(8), True,
     "stream.hex: contents: expected the same beats as stream.bin, found different beats"),
    ("npz missing coefs", "arrays.npz", "drop:coefs", True,
     "arrays.npz: arrays: expected ['act', 'bias', 'codebook', 'codes', 'coefs', 'mult', 'shift'], "
     "found ['act', 'bias', 'codebook', 'codes', 'mult', 'shift']", 1),
    ("npz bias", "arrays.npz", "set:bias", True,
     "arrays.npz: bias: expected the stream's values ((3,)), found int32 (3,), different values", 1),
    ("npz codes float", "arrays.npz", "float:codes", True,
     "arrays.npz: codes: expected the stream's values ((3, 3, 2)), found float64 (3, 3, 2), "
     "different values", 1),
    ("npz signs in vq", "arrays.npz", "add:signs", True,
     "arrays.npz: signs: expected a scale_* float array, found uint8 array 'signs'", 1),
    ("npz scale int", "arrays.npz", "add:scale_x", True,
     "arrays.npz: scale_x: expected a scale_* float array, found int32 array 'scale_x'", 1),
    ("npz object", "arrays.npz", "object:bias", True,
     "arrays.npz: expected a NumPy .npz of plain arrays, found ValueError: Object arrays "
     "cannot be loaded when allow_pickle=False", 1),
]


def _npz_edit(path, how):
    op, key = how.split(":")
    with np.load(path) as z:
        arrs = {k: z[k] for k in z.files}
    if op == "drop":
        del arrs[key]
    elif op == "set":
        arrs[key] = arrs[key].copy()
        arrs[key][0] += 1
    elif op == "float":
        arrs[key] = arrs[key].astype(np.float64)
    elif op == "add":
        arrs[key] = (np.zeros((3, 10), np.uint8) if key == "signs"
                     else np.zeros(3, np.int32))
    elif op == "object":
        arrs[key] = np.array([1, "x", None], dtype=object)
    np.savez(path, **arrs)


@pytest.mark.parametrize("case", FILE_EDITS, ids=[c[0] for c in FILE_EDITS])
def test_file_rejections(case, base_set, tmp_path):
    what, fn, mutate, refresh, msg = case[:5]
    i = case[5] if len(case) > 5 else 0
    root = _copy(base_set, tmp_path)
    man = _load(root)
    p = root / man["layers"][i]["dir"] / fn
    old_sha = man["layers"][i]["files"][fn]["sha256"]
    if mutate is None:
        p.unlink()
    elif isinstance(mutate, str):
        _npz_edit(p, mutate)
    else:
        p.write_bytes(mutate(p.read_bytes()))
    if refresh:
        _refresh_file(root, man, i, fn)
        if fn == "stream.bin" and what == "bin extra beat":
            man["layers"][i]["beats"] += 1
    _save(root, man)
    new_sha = hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None
    with pytest.raises(D.DocFormatError) as ei:
        D.decode_image_set(root)
    want = f"{root / man['layers'][i]['dir']}/" + msg.format(sha=old_sha, new=new_sha)
    assert str(ei.value) == want


def test_accepted_variants(base_set, tmp_path):
    """What the reader accepts (8.4 step 2, 8.6, 9)."""
    root = _copy(base_set, tmp_path)
    man = _load(root)
    # uppercase hex digits and no final newline
    p = root / man["layers"][0]["dir"] / "stream.hex"
    p.write_bytes(p.read_bytes().upper().rstrip(b"\n"))
    _refresh_file(root, man, 0, "stream.hex")
    # unknown keys, odd meta, keys out of order
    man["extra"] = 1
    man["layers"][1]["meta"] = [1, 2]
    man["layers"][1]["files"]["stream.bin"]["extra"] = True
    del man["layers"][2]["meta"]
    del man["meta"]
    man["layers"][0] = dict(reversed(list(man["layers"][0].items())))
    man["manifest_sha256"] = D.manifest_digest(man)
    (root / "manifest.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(man).encode())
    assert len(D.decode_image_set(root)) == 3


def test_manifest_level_rejections(base_set, tmp_path):
    root = _copy(base_set, tmp_path)
    m = str(root / "manifest.json")
    man = _load(root)

    def expect(msg):
        with pytest.raises(D.DocFormatError) as ei:
            D.decode_image_set(root)
        assert str(ei.value) == msg, str(ei.value)

    # manifest_sha256: an edit of meta / name, or an absent digest
    man2 = dict(man, meta={"note": "edited"})
    (root / "manifest.json").write_text(json.dumps(man2, indent=1))
    expect(f"{m}: manifest_sha256 (the manifest was edited after writing): expected "
           f"{man['manifest_sha256']}, found {D.manifest_digest(man2)}")
    man3 = {k: v for k, v in man.items() if k != "manifest_sha256"}
    (root / "manifest.json").write_text(json.dumps(man3, indent=1))
    expect(f"{m}: manifest_sha256 (the manifest was edited after writing): expected "
           f"None, found {D.manifest_digest(man3)}")
    (root / "manifest.json").write_bytes(b'{"format": "ssvq-image", \xff}')
    expect(f"{m}: expected UTF-8 JSON, found undecodable byte at 25")
    (root / "manifest.json").write_text('{"format": ')
    with pytest.raises(D.DocFormatError, match=re.escape(f"{m}: expected JSON, found a parse error (")):
        D.decode_image_set(root)
    (root / "manifest.json").write_text("[" * 100000 + "]" * 100000)
    expect(f"{m}: expected JSON of ordinary depth, found nesting too deep to parse")
    (root / "manifest.json").write_text("[1]")
    expect(f"{m}: format: expected ssvq-image, found list")
    (root / "manifest.json").unlink()
    expect(f"{m}: expected a manifest, found no such file")


# ---------------------------------------------------------------------------
# the writer's side, black box: 5.7 encoder input rules and 8.1 write_images

def _int3_arrays():
    return {k: v.copy() for k, v in A["arrays"].items()}


def _vq_arrays():
    return {k: v.copy() for k, v in C["arrays"].items()}


def _w(arrays, **changes):
    out = dict(arrays)
    out.update(changes)
    return out


ENCODER_CASES = [
    ("int3", 3, 10, _w(_int3_arrays(), bias=None),
     "layer L: bias: expected array of shape (3,), found nothing"),
    ("int3", 3, 10, _w(_int3_arrays(), mult=np.ones(4, np.uint16)),
     "layer L: mult shape: expected (3,), found (4,)"),
    ("int3", 3, 10, _w(_int3_arrays(), shift=np.ones(3, np.float64)),
     "layer L: shift dtype: expected integer, found float64"),
    ("int3", 3, 10, _w(_int3_arrays(), shift=np.ones(3, bool)),
     "layer L: shift dtype: expected integer, found bool"),
    ("int3", 3, 10, _w(_int3_arrays(), shift=np.array([0, 5, 64])),
     "layer L: shift range: expected 1..63, found 0..64"),
    ("int3", 3, 10, _w(_int3_arrays(), act=np.arange(10) * 20),
     "layer L: act range: expected -128..127, found 0..180"),
    ("int3", 3, 10, _w(_int3_arrays(), weights=np.full((3, 10), 4)),
     "layer L: weights range: expected -4..3, found 4..4"),
    ("int1", 3, 10, _w(_int3_arrays(), weights=np.zeros((3, 10), np.int8)),
     "layer L: weights values: expected -1 or +1 for int1, found 0"),
    ("int1", 3, 10, _w(_int3_arrays(), weights=np.full((3, 10), 2, np.int8)),
     "layer L: weights range: expected -1..1, found 2..2"),
    ("int3", 3, 10, _w(_int3_arrays(), codes=np.zeros((3, 3, 1), np.int32)),
     "layer L: codes: expected none for int3, found an array"),
    ("int3", 65, 10, _int3_arrays(), "layer L: rows=65 outside 1..64 (max_rows)"),
    ("int7", 3, 10, _int3_arrays(), None),      # LayerConfig.parse refuses int7
    ("vq-k4-d4-m2-c4", 3, 10, _w(_vq_arrays(), coefs=None),
     "layer L: coefs: expected array of shape (3, 3, 2), found nothing"),
    ("vq-k4-d4-m2-c4", 3, 10, _w(_vq_arrays(), codes=np.full((3, 3, 2), 4, np.int32)),
     "layer L: codes range: expected 0..3, found 4..4"),
    ("vq-k4-d4-m2-c4", 3, 10, _w(_vq_arrays(), coefs=np.full((3, 3, 2), 8, np.int8)),
     "layer L: coefs range: expected -8..7, found 8..8"),
    ("vq-k4-d4-m2-c1", 3, 10, _w(_vq_arrays(), coefs=np.full((3, 3, 2), 1, np.int8)),
     "layer L: coefs range: expected -1..0, found 1..1"),
    ("vq-k4-d4-m2", 3, 10, _vq_arrays(),
     "layer L: coefs: expected none for vq-k4-d4-m2, found an array"),
    ("vq-k4-d4-m2-c4", 3, 10, _w(_vq_arrays(), signs=np.zeros((3, 10), np.uint8)),
     "layer L: signs: expected none for vq-k4-d4-m2-c4, found an array"),
    ("vq-k4-d4-m2-c4", 3, 10, _w(_vq_arrays(), weights=np.zeros((3, 10), np.int8)),
     "layer L: weights: expected none for vq-k4-d4-m2-c4, found an array"),
    ("vq-k4-d4-m2-c4", 3, 10, _w(_vq_arrays(), codes=np.zeros((3, 3), np.int32)),
     "layer L: codes shape: expected (3, 3, 2), found (3, 3)"),
    ("ssvq-k4-d4-m2-c4", 3, 10, _vq_arrays(),
     "layer L: codebook range: expected 0..255, found -128..6"),
    ("vq-k32-d4", 3, 10, _vq_arrays(), "layer L: k=32 is above kmax=16 of this build"),
    ("vq-k4-d8", 3, 10, _vq_arrays(), "layer L: d=8 is not in this build's d_set [2, 4]"),
]


@pytest.mark.parametrize("case", ENCODER_CASES, ids=[f"{c[0]}:{c[4]}" for c in ENCODER_CASES])
def test_encoder_input_rules(case, tmp_path):
    """5.7 through write_images; the set is not written (8.1)."""
    name, rows, cols, arrays, msg = case
    if msg is None:
        with pytest.raises(ValueError):
            impl_image("L", name, rows, cols, arrays)
        return
    img = impl_image("L", name, rows, cols, arrays)
    out = tmp_path / "set"
    with pytest.raises(ValueError) as ei:
        impl_write(out, EXAMPLE_BUILD, [img])
    assert str(ei.value) == msg
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_write_images_behaviour(tmp_path):
    """8.1: duplicate names, progress, layer_meta, replacing a folder, no
    partial writes; 10: arrays stored as given, scales cast to float32."""
    from ssvq.config import AccelConfig
    from ssvq.image import write_images
    cfg = AccelConfig(**EXAMPLE_BUILD)
    a64 = {k: v.astype(np.int64) for k, v in A["arrays"].items()}
    img_a = impl_image("a", A["name"], A["rows"], A["cols"], a64,
                       scales={"s": np.array([1.5, 2.5, 3.5], np.float64)})
    img_d = impl_image("d d", Dx["name"], Dx["rows"], Dx["cols"], Dx["arrays"])
    out = tmp_path / "set"
    with pytest.raises(ValueError) as ei:
        write_images(str(out), cfg, [img_a, img_d, img_a])
    assert str(ei.value) == f"{out}: layers: expected unique names, found duplicates ['a']"
    assert not out.exists()
    calls = []
    write_images(str(out), cfg, [img_a, img_d], meta=[1, "x"],
                 progress=lambda *args: calls.append(args),
                 layer_meta={"d d": {"k": "v"}})
    # progress(i, n, name) after each layer: i as the document does not say
    assert [c[1:] for c in calls] == [(2, "a"), (2, "d d")]
    progress_first = calls[0][0]
    man = _load(out)
    assert man["meta"] == [1, "x"]
    assert [e["meta"] for e in man["layers"]] == [{}, {"k": "v"}]
    assert [e["dir"] for e in man["layers"]] == ["layers/000_a", "layers/001_d_d"]
    with np.load(out / "layers/000_a/arrays.npz") as z:
        assert all(z[k].dtype == np.int64 for k in a64)
        assert z["scale_s"].dtype == np.float32
    layers = D.decode_image_set(out)
    assert layers[0]["outputs"].tolist() == A["y"]
    # a failing write leaves the existing set untouched
    before = (out / "manifest.json").read_bytes()
    bad = impl_image("b", "int3", 3, 10, _w(_int3_arrays(), shift=np.zeros(3, np.uint8)))
    with pytest.raises(ValueError):
        write_images(str(out), cfg, [img_d, bad])
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]
    # a successful write replaces it, leaving no siblings behind
    write_images(str(out), cfg, [img_d])
    assert [x["name"] for x in D.decode_image_set(out)] == ["d d"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]
    assert progress_first in (0, 1)
