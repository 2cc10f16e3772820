"""Memory-image format: round trips, and every kind of bad input caught with a
message naming the file and field."""
import json
import subprocess
import sys

import numpy as np
import pytest

from compress.image import (ImageError, LayerImage, beats_to_hex, hex_to_beats, pack_layer,
                            read_images, unpack_layer, write_images)
from hw.config import AccelConfig, ConfigError
from tests.rtl_helpers import random_layer

CONFIGS = [dict(k=16, d=1), dict(k=16, d=4), dict(k=256, d=8), dict(k=4096, d=8),
           dict(k=4096, d=16), dict(k=256, d=8, bus=128), dict(k=16, d=4, mults=8, bus=256)]


@pytest.mark.parametrize("cfgd", CONFIGS)
@pytest.mark.parametrize("mode", ["int8", "vq", "ssvq"])
def test_round_trip(cfgd, mode):
    cfg = AccelConfig(max_rows=256, max_cols=256, **cfgd)
    rng = np.random.default_rng(7)
    for rows, cols in [(1, 1), (13, 37), (9, 70)]:
        img = random_layer(cfg, mode, rows, cols, rng)
        beats, sections = pack_layer(img, cfg)
        assert sum(n for _, n in sections.values()) == len(beats)
        back = unpack_layer(beats, cfg)
        assert (back.weight_matrix() == img.weight_matrix()).all()
        for f in ("bias", "mult", "shift", "act"):
            assert (getattr(back, f) == getattr(img, f)).all()
        assert (hex_to_beats(beats_to_hex(beats), cfg.bus, "x") == beats).all()


def test_bit_positions_by_hand():
    """Spot-check the packing against positions worked out from the format rules."""
    cfg = AccelConfig(k=16, d=4, mults=8, bus=64, max_rows=8, max_cols=8)
    img = LayerImage("t", "ssvq", rows=1, cols=8, bias=np.array([-2], np.int32),
                     mult=np.array([0x8001], np.uint16), shift=np.array([9], np.uint8),
                     act=np.arange(-4, 4, dtype=np.int8),
                     codebook=np.arange(64, dtype=np.uint8).reshape(16, 4),
                     codes=np.array([[0xA, 0x3]]), signs=np.array([[1, 0, 0, 0, 0, 0, 0, 1]]))
    beats, sec = pack_layer(img, cfg)
    word = [int.from_bytes(b.tobytes(), "little") for b in beats]
    assert word[0] == 2 | 1 << 8 | 8 << 24 | 0x315653 << 40                 # header
    assert sec["codebook"] == (1, 8) and word[1] == int.from_bytes(bytes(range(8)), "little")
    assert word[9] == (0xFFFFFFFE | 0x8001 << 32 | 9 << 48)                   # params
    assert word[10] == int.from_bytes(np.arange(-4, 4, dtype=np.int8).tobytes(), "little")
    # 8 code bits and 8 sign bits a group, so N=8 groups make one code and one sign beat
    assert sec["weights"] == (11, 2)
    assert word[11] == 0x3A and word[12] == 0b10000001


def _image(tmp_path, mode="ssvq"):
    cfg = AccelConfig(k=16, d=4, max_rows=64, max_cols=64)
    rng = np.random.default_rng(1)
    layers = [random_layer(cfg, mode, 5, 11, rng, "fc1"), random_layer(cfg, mode, 3, 5, rng, "fc2")]
    return write_images(tmp_path / "img", cfg, layers)


def test_reader_accepts_written_images(tmp_path):
    s = read_images(_image(tmp_path))
    assert s.layer_names == ["fc1", "fc2"]
    assert s.layer("fc2").rows == 3


@pytest.mark.parametrize("target", ["stream.bin", "stream.hex", "arrays.npz"])
def test_corrupt_byte_detected(tmp_path, target):
    root = _image(tmp_path)
    p = root / "layers/000_fc1" / target
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    p.write_bytes(bytes(raw))
    with pytest.raises(ImageError, match=f"{target}: sha256: expected"):
        read_images(root).layer("fc1")


def test_truncated_file_detected(tmp_path):
    root = _image(tmp_path)
    p = root / "layers/000_fc1/stream.bin"
    p.write_bytes(p.read_bytes()[:-8])
    with pytest.raises(ImageError, match=r"stream.bin: size in bytes: expected \d+, found \d+"):
        read_images(root).layer("fc1")


def test_edited_shape_detected(tmp_path):
    root = _image(tmp_path)
    m = json.loads((root / "manifest.json").read_text())
    m["layers"][0]["rows"] = 6
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ImageError, match="layer fc1: sections: expected"):
        read_images(root).layer("fc1")


def test_edited_name_detected(tmp_path):
    root = _image(tmp_path)
    text = (root / "manifest.json").read_text().replace('"fc2"', '"fc9"')
    (root / "manifest.json").write_text(text)
    with pytest.raises(ImageError, match="manifest_sha256"):
        read_images(root).layer("fc9")


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.update(version=2), "version: expected 1, found 2"),
    (lambda m: m.update(format="other"), "format: expected ssvq-image"),
    (lambda m: m["config"].update(k=300), "k must be a power of two, found 300"),
    (lambda m: m["config"].pop("k"), "config: expected all of"),
    (lambda m: m["layers"][0].update(rows=True), r"layers\[0\].rows: expected int"),
    (lambda m: m["layers"][1].update(name="fc1"), "unique names"),
    (lambda m: m["layers"][0]["files"]["stream.bin"].pop("sha256"), "files.stream.bin"),
    (lambda m: m["layers"][0].update(dir="../x"), "a relative path inside the image"),
])
def test_manifest_errors(tmp_path, edit, match):
    root = _image(tmp_path)
    m = json.loads((root / "manifest.json").read_text())
    edit(m)
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises((ImageError, ConfigError), match=match):
        read_images(root).layer("fc1")


def test_stream_level_checks():
    cfg = AccelConfig(k=16, d=4, max_rows=64, max_cols=64)
    img = random_layer(cfg, "ssvq", 5, 11, np.random.default_rng(0))
    beats, sec = pack_layer(img, cfg)
    bad = beats.copy(); bad[0, 7] ^= 0xFF
    with pytest.raises(ImageError, match="header magic"):
        unpack_layer(bad, cfg)
    bad = beats.copy(); bad[-1, -1] |= 0x80          # a padding group bit in the last block
    with pytest.raises(ImageError, match="padding"):
        unpack_layer(bad, cfg)
    with pytest.raises(ImageError, match="beat count"):
        unpack_layer(beats[:-1], cfg)
    a = sec["acts"][0]
    bad = beats.copy(); bad[a + sec["acts"][1] - 1, -1] = 1   # activation padding column
    with pytest.raises(ImageError, match="acts padding"):
        unpack_layer(bad, cfg)


def test_writer_rejects_bad_layer_and_leaves_nothing(tmp_path):
    cfg = AccelConfig(k=16, d=4, max_rows=64, max_cols=64)
    rng = np.random.default_rng(2)
    good = random_layer(cfg, "ssvq", 5, 11, rng, "ok")
    bad = random_layer(cfg, "ssvq", 5, 11, rng, "bad")
    bad.codes[0, 0] = 16                                   # out of range for K=16
    with pytest.raises(ImageError, match=r"layer bad: codes range: expected 0..15, found 0..16"):
        write_images(tmp_path / "img", cfg, [good, bad])
    assert list(tmp_path.iterdir()) == []
    bad.codes[0, 0] = 0
    bad.signs = bad.signs[:, :-1]
    with pytest.raises(ImageError, match=r"signs shape: expected \(5, 11\), found \(5, 10\)"):
        write_images(tmp_path / "img", cfg, [bad])


def test_rewrite_replaces_whole_image(tmp_path):
    root = _image(tmp_path)
    cfg = AccelConfig(k=16, d=4, max_rows=64, max_cols=64)
    write_images(root, cfg, [random_layer(cfg, "int8", 2, 3, np.random.default_rng(3), "only")])
    assert read_images(root).layer_names == ["only"]
    assert sorted(p.name for p in (root / "layers").iterdir()) == ["000_only"]
    assert [p.name for p in tmp_path.iterdir()] == ["img"]


def test_sim_cli_reports_corruption(tmp_path):
    root = _image(tmp_path)
    p = root / "layers/001_fc2/stream.hex"
    p.write_text(p.read_text()[:-5])
    r = subprocess.run([sys.executable, "-m", "ssvq.cli", "sim", "--images", str(root),
                        "--simulator", "icarus", "--out", str(tmp_path / "sim")],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "stream.hex" in r.stderr and "expected" in r.stderr
    assert not (tmp_path / "sim").exists()
