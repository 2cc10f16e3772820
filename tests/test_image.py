"""Memory-image format v2 (ssvq/image.py, docs/FORMAT.md): round trips for every
mode, bit positions worked out by hand from the format rules, and every kind of
bad input caught with an ImageError whose message names the file and the field."""
import hashlib
import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from ssvq.config import INT_BITS, AccelConfig, LayerConfig
from ssvq.errors import ConfigError, ImageError
from ssvq.image import (ARRAYS, LayerImage, hex_to_beats, manifest_digest, pack_layer,
                        read_header, read_images, unpack_layer, write_images)
from ssvq.reference import weight_matrix
from tests.rtl_helpers import random_layer

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------- round trips
BUILDS = {
    # kmax 256, d_set (4, 8), m_max 2, coef_bits_max 4, mults 32, bus 64
    "default": AccelConfig(max_rows=64, max_cols=128),
    "wide": AccelConfig(kmax=4096, d_set=(1, 2, 8, 16), mults=16, bus=128, max_rows=64,
                        max_cols=128),
    "bus256": AccelConfig(kmax=16, d_set=(1, 2, 4, 8), mults=8, bus=256, max_rows=64,
                          max_cols=128),
}
INT_NAMES = [f"int{b}" for b in INT_BITS]
CODEBOOK_NAMES = {
    "default": ["vq-k256-d4", "vq-k256-d8", "vq-k2-d4", "vq-k16-d8-m2-c4", "vq-k256-d4-m2",
                "vq-k64-d8-c1", "ssvq-k256-d8", "ssvq-k256-d4-m2-c4", "ssvq-k16-d8-c3",
                "ssvq-k2-d4-m2"],
    "wide": ["vq-k4096-d1", "vq-k4096-d16-m2-c4", "vq-k8-d2-c4", "ssvq-k4096-d8",
             "ssvq-k2048-d2-m2-c2", "ssvq-k32-d16"],
    "bus256": ["vq-k16-d1-m2-c4", "vq-k4-d2", "ssvq-k16-d8", "ssvq-k4-d2-m2-c1",
               "ssvq-k16-d1-c4"],
}
CASES = [(b, n) for b in BUILDS for n in INT_NAMES + CODEBOOK_NAMES[b]]
SHAPES = [(1, 1), (13, 37), (9, 70), (3, 128)]


def _assert_same_layer(a: LayerImage, b: LayerImage):
    assert (a.config, a.rows, a.cols) == (b.config, b.rows, b.cols)
    for k in ARRAYS:
        x, y = getattr(a, k), getattr(b, k)
        assert (x is None) == (y is None), k
        if x is not None:
            assert np.asarray(x).shape == np.asarray(y).shape, k
            assert (np.asarray(x, np.int64) == np.asarray(y, np.int64)).all(), k
    assert (weight_matrix(a) == weight_matrix(b)).all()


@pytest.mark.parametrize("build,name", CASES)
def test_pack_unpack_round_trip(build, name):
    cfg = BUILDS[build]
    lc = LayerConfig.parse(name)
    assert lc.name == name and LayerConfig.from_dict(lc.to_dict()) == lc
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    for rows, cols in SHAPES:
        img = random_layer(lc, rows, cols, rng)
        beats, sections = pack_layer(img, cfg)
        assert beats.dtype == np.uint8 and beats.shape[1] == cfg.bus // 8
        # the sections follow each other in stream order and cover the stream
        at = 0
        for s in ("header", "codebook", "params", "acts", "weights"):
            first, n = sections[s]
            assert first == at, (s, sections)
            at += n
        assert at == len(beats)
        assert read_header(beats, cfg, "x") == (lc, rows, cols)
        _assert_same_layer(unpack_layer(beats, cfg), img)


def test_write_read_round_trip_every_mode(tmp_path):
    cfg = BUILDS["default"]
    rng = np.random.default_rng(5)
    layers = []
    for i, name in enumerate(INT_NAMES + CODEBOOK_NAMES["default"]):
        img = random_layer(name, 3 + i, 5 + 7 * i, rng, name=f"l{i}.{name}")
        img.scales = {"w": rng.standard_normal(img.rows).astype(np.float32)}
        layers.append(img)
    root = write_images(tmp_path / "img", cfg, layers, meta={"model": "t"},
                        layer_meta={layers[0].name: {"note": 1}})
    s = read_images(root)
    assert s.config == cfg and s.layer_names == [l.name for l in layers]
    assert s.manifest["meta"] == {"model": "t"}
    assert s.entry(layers[0].name)["meta"] == {"note": 1}
    for img in layers:
        back = s.layer(img.name)
        _assert_same_layer(back, img)
        assert back.name == img.name and set(back.scales) == {"w"}
        assert (back.scales["w"] == img.scales["w"]).all()
        e = s.entry(img.name)
        base = root / e["dir"]
        beats = s.beats(img.name)
        assert (beats == pack_layer(img, cfg)[0]).all()
        assert base.joinpath("stream.bin").read_bytes() == beats.tobytes()
        assert (hex_to_beats(base.joinpath("stream.hex").read_text(), cfg.bus, "h") == beats).all()


# ------------------------------------------------- bit positions worked out by hand
HAND = AccelConfig(kmax=16, d_set=(1, 2, 4, 8), mults=8, bus=64, max_rows=64, max_cols=64)
MAGIC = 0x325653                     # "SV2", header bits 40..63


def _img(name, rows, cols, **arrays):
    kw = dict(bias=np.zeros(rows, np.int32), mult=np.ones(rows, np.uint16),
              shift=np.ones(rows, np.uint8), act=np.zeros(cols, np.int8))
    kw.update(arrays)
    return LayerImage("t", LayerConfig.parse(name), rows, cols, **kw)


def _words(beats):
    """Each beat as an integer: byte 0 of a beat is its least significant byte."""
    return [int.from_bytes(bytes(b), "little") for b in beats]


def _bits(words, first, n, bus=64):
    """Beats first..first+n-1 as one integer: bit i of the section is bit i % bus of
    beat first + i // bus."""
    return sum(w << (bus * i) for i, w in enumerate(words[first:first + n]))


def test_int3_header_params_acts_and_straddling_group():
    w = np.array([[0, 1, 2, 3, -4, -3, -2, -1],
                  [3, 3, 3, 3, 3, 3, 3, 3],
                  [1, -1, 2, -4, 3, -3, 0, -2]], np.int8)
    img = _img("int3", 3, 8, weights=w,
               bias=np.array([-2, 0x12345678, -(1 << 31)], np.int32),
               mult=np.array([0x8001, 7, 0xFFFF], np.uint16),
               shift=np.array([9, 63, 1], np.uint8),
               act=np.array([-128, -1, 0, 1, 2, 3, 127, 64], np.int8))
    beats, sections = pack_layer(img, HAND)
    words = _words(beats)
    # header 128 bits = 2 beats; no codebook; params 3 x 64 bits = 3 beats;
    # acts 1 group x 8 x 8 bits = 1 beat; weights 3 rows x 1 group x 24 bits = 72 bits -> 2
    assert len(words) == 2 + 3 + 1 + 2
    assert sections == {"header": (0, 2), "codebook": (2, 0), "params": (2, 3),
                        "acts": (5, 1), "weights": (6, 2)}
    # header: mode 0 at 0..7, rows 8..23, cols 24..39, magic 40..63, bits 64..71, rest 0
    assert words[0] == 0x325653_0008_0003_00
    assert words[0] == 0 | 3 << 8 | 8 << 24 | MAGIC << 40
    assert words[1] == 3
    # params: bias 0..31 (two's complement), mult 32..47, shift 48..53, 54..63 zero
    assert words[2] == 0xFFFFFFFE | 0x8001 << 32 | 9 << 48
    assert words[3] == 0x12345678 | 7 << 32 | 63 << 48
    assert words[4] == 0x80000000 | 0xFFFF << 32 | 1 << 48
    # acts: column j at bits 8j..8j+7, two's complement
    assert words[5] == 0x40_7F_03_02_01_00_FF_80
    # weights: group (row) r at section bit 24r, weight j at 24r + 3j, two's complement
    sec = _bits(words, 6, 2)
    expect = 0
    for r in range(3):
        for j in range(8):
            expect |= (int(w[r, j]) & 0b111) << (24 * r + 3 * j)
    assert sec == expect
    # row 0 = fields 0,1,2,3,4,5,6,7 -> 0o76543210
    assert words[6] & 0xFFFFFF == 0o76543210
    # row 2 (bits 48..71) straddles the beat boundary: its weight 5 (-3 = 0b101) sits at
    # section bits 63..65, i.e. bit 63 of beat 6 (= 1), then bits 0 (= 0) and 1 (= 1) of beat 7
    assert words[6] >> 63 == 1 and words[7] & 0b11 == 0b10
    # weight 6 (0) at 66..68, weight 7 (-2 = 0b110) at 69..71; padding 72..127 zero
    assert words[7] == 0b110_000_10
    # the hex form: one line per beat, most significant digit first
    hex_lines = [f"{x:016x}" for x in words]
    assert hex_lines[0] == "3256530008000300" and hex_lines[1] == "0000000000000003"


def test_int1_group():
    """int1: +1 -> bit 0, -1 -> bit 1, weight j at bit j of its group."""
    w = np.array([[1, -1, -1, 1, 1, 1, -1, 1], [-1, -1, -1, -1, 1, 1, 1, 1]], np.int8)
    beats, sections = pack_layer(_img("int1", 2, 8, weights=w), HAND)
    words = _words(beats)
    assert words[1] == 1                          # header bits field
    # header 2 + params 2 + acts 1 -> weights at beat 5; 2 groups x 8 bits in one beat
    assert sections["weights"] == (5, 1) and len(words) == 6
    assert words[5] == 0b0000_1111 << 8 | 0b0100_0110
    back = unpack_layer(beats, HAND)
    assert (back.weights == w).all()


def test_vq_m2_coef4_group():
    """vq-k16-d4-m2-c4 on 8 multipliers: L = 8/4 = 2 vectors per group, m = 2, so 4
    slots s = l*m + i of code_bits + coef_bits = 4 + 4 bits: code at 8s..8s+3, its
    coefficient at 8s+4..8s+7; a group is 32 bits."""
    codes = np.array([[[3, 10], [15, 0], [1, 2], [3, 4]]])          # rows, V, m
    coefs = np.array([[[-1, 7], [-8, 2], [0, 1], [2, 3]]])
    cb = ((np.arange(32 * 4) % 251) - 125).astype(np.int8).reshape(32, 4)
    img = _img("vq-k16-d4-m2-c4", 1, 16, codebook=cb, codes=codes, coefs=coefs)
    beats, sections = pack_layer(img, HAND)
    words = _words(beats)
    assert words[0] == 1 | 1 << 8 | 16 << 24 | MAGIC << 40
    # bits 0 | code_bits 4 at 72 | log2_d 2 at 80 | m 2 at 88 | coef_bits 4 at 96
    assert words[1] == 4 << 8 | 2 << 16 | 2 << 24 | 4 << 32
    # codebook: m*k = 32 codewords of 4 x 8 bits = 1024 bits = 16 beats, codeword c
    # element e at bit 32c + 8e, codebook j's word i is codeword j*16 + i
    assert sections["codebook"] == (2, 16)
    cbits = _bits(words, 2, 16)
    for c in (0, 1, 17, 31):
        for e in range(4):
            assert (cbits >> (32 * c + 8 * e)) & 0xFF == int(cb[c, e]) & 0xFF
    # params 1 beat, acts 2 groups = 2 beats -> weights at 2 + 16 + 1 + 2 = 21
    assert sections["weights"] == (21, 1) and len(words) == 22
    # group 0: (l0,i0) code 3 coef -1 -> 0xF3; (l0,i1) 10, 7 -> 0x7A; (l1,i0) 15, -8 -> 0x8F;
    # (l1,i1) 0, 2 -> 0x20.  group 1 (bits 32..63): 0x01, 0x12, 0x23, 0x34
    assert words[21] == 0x34231201_208F7AF3
    _assert_same_layer(unpack_layer(beats, HAND), img)


def test_ssvq_group_signs_then_codes():
    """ssvq-k16-d4: the 8 sign bits first (weight j at bit j, 1 = negative), then the
    L = 2 codes of 4 bits: group = 16 bits."""
    signs = np.array([[1, 0, 0, 1, 0, 0, 0, 1], [0, 1, 1, 0, 1, 1, 1, 0]], np.uint8)
    codes = np.array([[[5], [12]], [[0], [15]]])
    cb = np.arange(64, dtype=np.uint8).reshape(16, 4) * 3
    img = _img("ssvq-k16-d4", 2, 8, codebook=cb, codes=codes, signs=signs)
    beats, sections = pack_layer(img, HAND)
    words = _words(beats)
    assert words[0] == 2 | 2 << 8 | 8 << 24 | MAGIC << 40
    assert words[1] == 4 << 8 | 2 << 16 | 1 << 24
    # codebook 16 x 32 bits = 8 beats; params 2; acts 1 -> weights at 2 + 8 + 2 + 1 = 13
    assert sections["codebook"] == (2, 8) and words[2] == int.from_bytes(bytes(cb[:2].ravel()), "little")
    assert sections["weights"] == (13, 1) and len(words) == 14
    # row 0: signs 0x89, codes 5 then 12 -> 0xC589; row 1 at bits 16..31: 0x76, 0 then 15 -> 0xF076
    assert words[13] == 0xF076 << 16 | 0xC589
    _assert_same_layer(unpack_layer(beats, HAND), img)


def test_sections_padded_to_whole_beats():
    """bus 128: the 64-bit params record and the 64-bit acts record each fill half a
    beat, the rest of it zero; the next section starts on the next beat."""
    cfg = AccelConfig(kmax=16, d_set=(4,), mults=8, bus=128, max_rows=64, max_cols=64)
    img = _img("int8", 1, 3, weights=np.array([[-1, 2, -3]], np.int8),
               bias=np.array([-1], np.int32), mult=np.array([0xFFFF], np.uint16),
               shift=np.array([63], np.uint8), act=np.array([-1, -1, -1], np.int8))
    beats, sections = pack_layer(img, cfg)
    words = _words(beats)
    assert sections == {"header": (0, 1), "codebook": (1, 0), "params": (1, 1),
                        "acts": (2, 1), "weights": (3, 1)}
    assert len(words) == 4 and beats.shape == (4, 16)
    assert words[0] == 3 << 24 | 1 << 8 | MAGIC << 40 | 8 << 64
    assert words[1] == 0x003F_FFFF_FFFF_FFFF          # bits 64..127 padding: zero
    assert words[2] == 0xFF_FF_FF                       # padding columns 3..7 and 64..127 zero
    assert words[3] == 0xFD_02_FF
    # a padding bit set is rejected, naming the section
    for beat, bit, what in [(1, 64, "params padding"), (2, 100, "acts padding"),
                            (3, 127, "weights padding"), (0, 120, "header reserved bits")]:
        bad = beats.copy()
        bad[beat, bit // 8] |= 1 << (bit % 8)
        with pytest.raises(ImageError, match=f"s.bin: {what}: expected zero"):
            unpack_layer(bad, cfg, where="s.bin")


def test_manifest_digest_by_hand():
    m = {"format": "ssvq-image", "version": 2, "b": [1, 2], "a": {"y": 1, "x": "é"},
         "manifest_sha256": "ignored"}
    body = '{"a":{"x":"\\u00e9","y":1},"b":[1,2],"format":"ssvq-image","version":2}'
    assert manifest_digest(m) == hashlib.sha256(body.encode()).hexdigest()


# ------------------------------------------------------------------- bad input
SMALL = AccelConfig(kmax=16, d_set=(4, 8), mults=8, max_rows=64, max_cols=64)


def _image(tmp_path):
    rng = np.random.default_rng(1)
    fc1 = random_layer("ssvq-k16-d4", 5, 11, rng, "fc1")
    fc1.scales = {"w": np.ones(5, np.float32)}
    layers = [fc1, random_layer("int3", 3, 5, rng, "fc2"),
              random_layer("vq-k16-d8-m2-c4", 4, 9, rng, "fc3")]
    return write_images(tmp_path / "img", SMALL, layers)


def _manifest(root):
    return json.loads((root / "manifest.json").read_text())


def _save_manifest(root, m, reseal=True):
    if reseal:
        body = {k: v for k, v in m.items() if k != "manifest_sha256"}
        m["manifest_sha256"] = hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(m))


def _reseal(root, edit=None):
    """Recomputes every file digest and size and the manifest digest, as a careful
    forger would, so that the checks behind them are reached."""
    m = _manifest(root)
    for e in m["layers"]:
        for fn, f in e["files"].items():
            data = (root / e["dir"] / fn).read_bytes()
            f.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    if edit:
        edit(m)
    _save_manifest(root, m)


def _flip(path, at=None, mask=0x01):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 if at is None else at] ^= mask
    path.write_bytes(bytes(raw))


def _edit(fn):
    def mutate(root):
        m = _manifest(root)
        fn(m)
        _save_manifest(root, m, reseal=False)
    return mutate


def _edit_resealed(fn):
    def mutate(root):
        m = _manifest(root)
        fn(m)
        _save_manifest(root, m)
    return mutate


L1 = "layers/000_fc1"
L2 = "layers/001_fc2"


def _rewrite_stream(root, rel, change):
    """Changes the beats of a layer (bin and hex both) and reseals everything."""
    p = root / rel / "stream.bin"
    beats = np.frombuffer(p.read_bytes(), np.uint8).reshape(-1, 8).copy()
    beats = change(beats)
    p.write_bytes(beats.tobytes())
    (root / rel / "stream.hex").write_text(
        "".join(row[::-1].tobytes().hex() + "\n" for row in beats))

    def beats_field(m):
        for e in m["layers"]:
            if e["dir"] == rel:
                e["beats"] = len(beats)
    _reseal(root, beats_field)


def _set_magic(value):
    def change(beats):
        beats[0, 5:8] = list(value.to_bytes(3, "little"))
        return beats
    return change


def _set_bit(beat, bit):
    def change(beats):
        beats[beat, bit // 8] |= 1 << (bit % 8)
        return beats
    return change


def _hex_byte(value):
    def mutate(root):
        p = root / L1 / "stream.hex"
        raw = bytearray(p.read_bytes())
        raw[3] = value
        p.write_bytes(bytes(raw))
        _reseal(root)
    return mutate


def _npz(**arrays):
    def mutate(root):
        p = root / L1 / "arrays.npz"
        with np.load(p) as z:
            old = {k: z[k] for k in z.files}
        new = {k: v for k, v in {**old, **arrays}.items() if v is not None}
        with open(p, "wb") as f:
            np.savez(f, **new)
        _reseal(root)
    return mutate


def _raw_npz(data):
    def mutate(root):
        (root / L1 / "arrays.npz").write_bytes(data)
        _reseal(root)
    return mutate


def _empty_npz(root):
    with open(root / L1 / "arrays.npz", "wb") as f:
        np.savez(f)
    _reseal(root)


def _manifest_bytes(data):
    def mutate(root):
        (root / "manifest.json").write_bytes(data)
    return mutate


def _append(rel, data):
    def mutate(root):
        p = root / rel
        p.write_bytes(p.read_bytes() + data)
    return mutate


def _truncate(rel, n):
    def mutate(root):
        p = root / rel
        p.write_bytes(p.read_bytes()[:-n])
    return mutate


def _rename_fc2(root):
    p = root / "manifest.json"
    p.write_text(p.read_text().replace('"fc2"', '"fc9"'))


def _config_field(name, field, value):
    def fn(m):
        for e in m["layers"]:
            if e["name"] == name:
                e["config"][field] = value
    return fn


MJ = r"manifest\.json"
CORRUPTIONS = [
    # (id, mutation, layer read, message: file and field)
    ("bin-byte", lambda r: _flip(r / L1 / "stream.bin"), "fc1",
     rf"{L1}/stream\.bin: sha256: expected [0-9a-f]{{64}}, found [0-9a-f]{{64}}"),
    ("hex-byte", lambda r: _flip(r / L1 / "stream.hex"), "fc1", rf"{L1}/stream\.hex: sha256: expected"),
    ("npz-byte", lambda r: _flip(r / L1 / "arrays.npz"), "fc1", rf"{L1}/arrays\.npz: sha256: expected"),
    ("bin-truncated", _truncate(f"{L1}/stream.bin", 8), "fc1",
     rf"{L1}/stream\.bin: size in bytes: expected \d+, found \d+"),
    ("hex-truncated", _truncate(f"{L1}/stream.hex", 5), "fc1", rf"{L1}/stream\.hex: size in bytes"),
    ("bin-appended", _append(f"{L1}/stream.bin", bytes(8)), "fc1", rf"{L1}/stream\.bin: size in bytes"),
    ("hex-appended", _append(f"{L1}/stream.hex", b"0" * 16 + b"\n"), "fc1", rf"{L1}/stream\.hex: size in bytes"),
    ("npz-appended", _append(f"{L1}/arrays.npz", b"x"), "fc1", rf"{L1}/arrays\.npz: size in bytes"),
    ("file-missing", lambda r: (r / L1 / "stream.hex").unlink(), "fc1",
     rf"{L1}/stream\.hex: expected file listed in manifest, found nothing"),
    # a forger who recomputes every digest still meets the stream's own checks
    ("beat-appended-resealed", lambda r: _rewrite_stream(r, L1, lambda b: np.concatenate([b, b[:1] * 0])),
     "fc1", rf"{L1}/stream\.bin: beat count: expected \d+ for ssvq-k16-d4 5x11, found \d+"),
    ("beat-dropped-resealed", lambda r: _rewrite_stream(r, L1, lambda b: b[:-1]), "fc1",
     rf"{L1}/stream\.bin: beat count: expected"),
    ("hex-differs-resealed", _hex_byte(ord("f")), "fc1",
     rf"{L1}/stream\.hex: contents: expected the same beats as stream\.bin"),
    ("padding-bit-resealed", lambda r: _rewrite_stream(r, L2, _set_bit(-1, 63)), "fc2",
     rf"{L2}/stream\.bin: weights padding: expected zero, found non-zero bits"),
    ("v1-magic", lambda r: _rewrite_stream(r, L1, _set_magic(0x315653)), "fc1",
     rf"{L1}/stream\.bin: header magic: expected 0x325653 \(format version 2\), found 0x315653: "
     r"a version 1 stream"),
    ("other-magic", lambda r: _rewrite_stream(r, L1, _set_magic(0x123456)), "fc1",
     rf"{L1}/stream\.bin: header magic: expected 0x325653, found 0x123456"),
    ("hex-non-ascii", _hex_byte(0xC3), "fc1",
     rf"{L1}/stream\.hex: byte 3: expected ASCII hex digits, found byte 0xc3"),
    ("hex-not-hex", _hex_byte(ord("g")), "fc1", rf"{L1}/stream\.hex: line 1: expected hex digits"),
    ("npz-not-zip", _raw_npz(b"this is not a zip file"), "fc1",
     rf"{L1}/arrays\.npz: expected a NumPy \.npz of plain arrays, found"),
    ("npz-empty-file", _raw_npz(b""), "fc1", rf"{L1}/arrays\.npz: expected a NumPy \.npz of plain arrays"),
    ("npz-no-arrays", _empty_npz, "fc1", rf"{L1}/arrays\.npz: arrays: expected \['act', 'bias'"),
    ("npz-object-array", _npz(bias=np.array([object()] * 5, dtype=object)), "fc1",
     rf"{L1}/arrays\.npz: expected a NumPy \.npz of plain arrays, found ValueError"),
    ("npz-string-array", _npz(bias=np.array(["a"] * 5)), "fc1",
     rf"{L1}/arrays\.npz: bias: expected the stream's values \(\(5,\)\), found <U1 \(5,\)"),
    ("npz-string-scale", _npz(scale_x=np.array(["a"])), "fc1",
     rf"{L1}/arrays\.npz: scale_x: expected a scale_\* float array"),
    ("npz-other-values", _npz(codes=np.zeros((5, 3, 1), np.int32)), "fc1",
     rf"{L1}/arrays\.npz: codes: expected the stream's values"),
    ("npz-missing-array", _npz(signs=None), "fc1", rf"{L1}/arrays\.npz: arrays: expected"),
    # the manifest
    ("manifest-rows", _edit(lambda m: m["layers"][0].update(rows=6)), "fc1",
     rf"{MJ} layer fc1: sections: expected"),
    ("manifest-cols", _edit(lambda m: m["layers"][0].update(cols=12)), "fc1",
     rf"{MJ} layer fc1: cols: expected 11 \(from the stream header\), found 12"),
    ("manifest-config", _edit(_config_field("fc2", "bits", 4)), "fc2",
     rf"{MJ} layer fc2: config: expected \{{'mode': 'int', 'bits': 3\}} \(from the stream header\)"),
    ("manifest-config-k", _edit(_config_field("fc1", "k", 8)), "fc1", rf"{MJ} layer fc1: sections: expected"),
    ("manifest-build-config", _edit(lambda m: m["config"].update(max_rows=128)), "fc1",
     rf"{MJ}: manifest_sha256 \(the manifest was edited after writing\): expected"),
    ("manifest-name", _rename_fc2, "fc9", rf"{MJ}: manifest_sha256"),
    ("manifest-meta", _edit(lambda m: m.update(meta={"x": 1})), "fc1", rf"{MJ}: manifest_sha256"),
    ("manifest-sha", _edit(lambda m: m.update(manifest_sha256="0" * 64)), "fc1",
     rf"{MJ}: manifest_sha256 \(the manifest was edited after writing\): expected 0{{64}}"),
    ("manifest-version-1", _edit_resealed(lambda m: m.update(version=1)), "fc1",
     rf"{MJ}: version: expected 2, found 1 \(a version 1 image set"),
    ("manifest-version-3", _edit_resealed(lambda m: m.update(version=3)), "fc1",
     rf"{MJ}: version: expected 2, found 3"),
    ("manifest-format", _edit_resealed(lambda m: m.update(format="x")), "fc1",
     rf"{MJ}: format: expected ssvq-image, found 'x'"),
    ("manifest-bad-build", _edit_resealed(lambda m: m["config"].update(kmax=300)), "fc1",
     rf"{MJ}: config: accelerator config: kmax: expected a power of two, found 300"),
    ("manifest-build-missing", _edit_resealed(lambda m: m["config"].pop("bus")), "fc1",
     rf"{MJ}: config: missing field\(s\) \['bus'\]"),
    ("manifest-bad-layer-config", _edit_resealed(_config_field("fc1", "m", 3)), "fc1",
     rf"{MJ}: layers\[0\]\.config: layer config ssvq: m: expected 1\.\.2, found 3"),
    ("manifest-rows-type", _edit_resealed(lambda m: m["layers"][0].update(rows=True)), "fc1",
     rf"{MJ}: layers\[0\]\.rows: expected int, found True"),
    ("manifest-dup-name", _edit_resealed(lambda m: m["layers"][1].update(name="fc1")), "fc1",
     rf"{MJ}: layers\[\]\.name: expected unique names"),
    ("manifest-dir", _edit_resealed(lambda m: m["layers"][0].update(dir="../x")), "fc1",
     rf"{MJ}: layers\[0\]\.dir: expected a relative path inside the image"),
    ("manifest-files", _edit_resealed(lambda m: m["layers"][0]["files"]["stream.bin"].pop("sha256")),
     "fc1", rf"{MJ}: layers\[0\]\.files\.stream\.bin: expected"),
    ("manifest-sections", _edit_resealed(lambda m: m["layers"][0]["sections"].pop("acts")), "fc1",
     rf"{MJ}: layers\[0\]\.sections: expected exactly"),
    ("manifest-no-layers", _edit_resealed(lambda m: m.update(layers=[])), "fc1",
     rf"{MJ}: layers: expected a non-empty list, found an empty list"),
    ("manifest-unknown-layer", lambda r: None, "fc7", rf"{MJ}: layers: expected a layer named 'fc7'"),
    ("manifest-deep", _manifest_bytes(b"[" * 100000 + b"]" * 100000), "fc1",
     rf"{MJ}: expected JSON of ordinary depth, found nesting too deep"),
    ("manifest-not-json", _manifest_bytes(b'{"format": '), "fc1", rf"{MJ}: expected JSON, found a parse error"),
    ("manifest-not-utf8", _manifest_bytes(b'{"format": "\xff"}'), "fc1",
     rf"{MJ}: expected UTF-8 JSON, found undecodable byte at 12"),
    ("manifest-missing", lambda r: (r / "manifest.json").unlink(), "fc1",
     rf"{MJ}: expected a manifest, found no such file"),
]


@pytest.mark.parametrize("mutate,layer,match", [c[1:] for c in CORRUPTIONS],
                         ids=[c[0] for c in CORRUPTIONS])
def test_corruption_caught(tmp_path, mutate, layer, match):
    root = _image(tmp_path)
    read_images(root).layer(layer if layer in ("fc1", "fc2") else "fc1")   # fine before
    mutate(root)
    with pytest.raises(ImageError, match=match) as e:
        read_images(root).layer(layer)
    assert "\n" not in str(e.value)


def test_manifest_with_utf8_bom_accepted(tmp_path):
    root = _image(tmp_path)
    p = root / "manifest.json"
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    s = read_images(root)
    assert s.layer_names == ["fc1", "fc2", "fc3"]
    assert s.layer("fc3").rows == 4


def test_untouched_layers_still_read_after_another_is_corrupted(tmp_path):
    root = _image(tmp_path)
    _flip(root / L1 / "stream.bin")
    s = read_images(root)
    assert s.layer("fc2").rows == 3
    with pytest.raises(ImageError, match="stream.bin: sha256"):
        s.layer("fc1")


# ------------------------------------------------- layers the build cannot run
BIG = AccelConfig(kmax=256, d_set=(4, 8), mults=8, max_rows=64, max_cols=64)
LACKS = [
    ("int4", dict(modes=("vq", "ssvq")), 2, r"mode 'int' is not built into this accelerator "
                                            r"\(built: \['vq', 'ssvq'\]\)"),
    ("vq-k16-d4", dict(modes=("int", "ssvq")), 2, r"mode 'vq' is not built"),
    ("ssvq-k16-d4", dict(modes=("int", "vq")), 2, r"mode 'ssvq' is not built"),
    ("vq-k256-d4", dict(kmax=16), 2, r"k=256 is above kmax=16 of this build"),
    ("ssvq-k16-d8", dict(d_set=(4,)), 2, r"d=8 is not in this build's d_set \[4\]"),
    ("int3", dict(int_bits=(4, 8)), 2, r"int3: bits 3 not built \(int_bits \[4, 8\]\)"),
    ("vq-k16-d4-m2", dict(m_max=1), 2, r"m=2 is above m_max=1 of this build"),
    ("ssvq-k16-d4-c4", dict(coef_bits_max=2), 2, r"coef_bits=4 is above coef_bits_max=2"),
    ("int8", dict(max_rows=16), 20, r"rows=20 outside 1\.\.16 \(max_rows\)"),
]


@pytest.mark.parametrize("name,lacking,rows,match", LACKS, ids=[c[0] + "-" + next(iter(c[1]))
                                                                 for c in LACKS])
def test_layer_the_build_lacks_rejected(tmp_path, name, lacking, rows, match):
    small = AccelConfig(**{**BIG.to_dict(), **lacking})
    img = random_layer(name, rows, 16, np.random.default_rng(0), "fc")
    # writing: the layer is checked against the build before anything is packed
    with pytest.raises(ImageError, match="layer fc: " + match):
        pack_layer(img, small)
    with pytest.raises(ImageError, match=match):
        write_images(tmp_path / "w", small, [img])
    assert not (tmp_path / "w").exists()
    # a stream whose header asks for it
    beats, _ = pack_layer(img, BIG)
    with pytest.raises(ImageError, match="s.bin: header: " + match):
        unpack_layer(beats, small, where="s.bin")
    # an image set whose manifest claims the smaller build
    root = write_images(tmp_path / "img", BIG, [img])
    m = _manifest(root)
    m["config"] = small.to_dict()
    _save_manifest(root, m)
    with pytest.raises(ImageError, match=r"manifest\.json: layers\[0\] \(fc\): " + match):
        read_images(root)


@pytest.mark.parametrize("name,match", [
    ("int7", r"bits: expected one of \(1, 2, 3, 4, 5, 6, 8\), found 7"),
    ("vq-k3-d4", "k: expected a power of two >= 2, found 3"),
    ("ssvq-k16-d3", "d: expected a power of two, found 3"),
    ("vq-k16-d4-m3", r"m: expected 1\.\.2, found 3"),
    ("vq-k16-d4-c5", r"coef_bits: expected 0\.\.4, found 5"),
    ("ssvq256", "expected a name like int4"),
])
def test_bad_layer_config_names(name, match):
    with pytest.raises(ConfigError, match=match):
        LayerConfig.parse(name)


def test_bad_layer_contents_rejected():
    rng = np.random.default_rng(3)
    cases = [
        ("int1", lambda i: i.weights.__setitem__((0, 0), 0), r"weights values: expected -1 or \+1"),
        ("int3", lambda i: i.weights.__setitem__((0, 0), 4), r"weights range: expected -4\.\.3"),
        ("vq-k16-d4", lambda i: setattr(i, "signs", np.zeros((2, 9), np.uint8)),
         "signs: expected none for vq-k16-d4"),
        ("vq-k16-d4-c2", lambda i: i.coefs.__setitem__((0, 0, 0), 2), r"coefs range: expected -2\.\.1"),
        ("vq-k16-d4-c2", lambda i: setattr(i, "coefs", None), "coefs: expected array"),
        ("ssvq-k16-d4", lambda i: setattr(i, "codebook", np.full((16, 4), -1, np.int16)),
         r"codebook range: expected 0\.\.255, found -1\.\.-1"),
        ("ssvq-k16-d4", lambda i: setattr(i, "codes", i.codes[:, :, :0]), "codes shape"),
        ("int8", lambda i: i.shift.__setitem__(0, 0), r"shift range: expected 1\.\.63"),
        ("int8", lambda i: setattr(i, "act", i.act.astype(np.float32)), "act dtype: expected integer"),
    ]
    for name, spoil, match in cases:
        img = random_layer(name, 2, 9, rng, "x")
        spoil(img)
        with pytest.raises(ImageError, match=f"layer x: {match}"):
            pack_layer(img, BIG)


# ------------------------------------------------------------------- the writer
def test_writer_rejects_bad_layer_and_leaves_nothing(tmp_path):
    rng = np.random.default_rng(2)
    good = random_layer("ssvq-k16-d4", 5, 11, rng, "ok")
    bad = random_layer("ssvq-k16-d4", 5, 11, rng, "bad")
    bad.codes[0, 0] = 16                                   # out of range for K=16
    with pytest.raises(ImageError, match=r"layer bad: codes range: expected 0\.\.15, found 0\.\.16"):
        write_images(tmp_path / "img", SMALL, [good, bad])
    assert list(tmp_path.iterdir()) == []
    bad.codes[0, 0] = 0
    bad.signs = bad.signs[:, :-1]
    with pytest.raises(ImageError, match=r"signs shape: expected \(5, 11\), found \(5, 10\)"):
        write_images(tmp_path / "img", SMALL, [bad])
    with pytest.raises(ImageError, match=r"layers: expected unique names, found duplicates \['ok'\]"):
        write_images(tmp_path / "img", SMALL, [good, good])
    assert list(tmp_path.iterdir()) == []
    # a failing write over an existing image leaves the old image as it was
    root = write_images(tmp_path / "img", SMALL, [good])
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    bad.signs = None
    with pytest.raises(ImageError):
        write_images(root, SMALL, [good, bad])
    after = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert after == before and [p.name for p in tmp_path.iterdir()] == ["img"]


def test_rewrite_replaces_whole_image(tmp_path):
    root = _image(tmp_path)
    write_images(root, SMALL, [random_layer("int8", 2, 3, np.random.default_rng(3), "only")])
    assert read_images(root).layer_names == ["only"]
    assert sorted(p.name for p in (root / "layers").iterdir()) == ["000_only"]
    assert [p.name for p in tmp_path.iterdir()] == ["img"]


def test_sim_cli_reports_corruption(tmp_path):
    root = _image(tmp_path)
    p = root / L2 / "stream.hex"
    p.write_text(p.read_text()[:-5])
    r = subprocess.run([sys.executable, "-m", "ssvq.app.cli", "sim", "--images", str(root),
                        "--simulator", "icarus", "--all", "--out", str(tmp_path / "sim")],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "001_fc2/stream.hex: size in bytes: expected" in lines[0], r.stderr
    assert not (tmp_path / "sim").exists()
