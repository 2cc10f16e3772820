"""compress.models and compress.run: model loading, calibration, whole-model runs."""
import json

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from compress.models import accuracy, digits_cache_path, digits_data, load_model  # noqa: E402
from compress.quantize import dequantize, quantize_layer  # noqa: E402
from compress.run import accel_config_for, compress_layers, compress_model  # noqa: E402
from ssvq.app.cli import main  # noqa: E402
from ssvq.config import AccelConfig, LayerConfig  # noqa: E402
from ssvq.errors import ConfigError, UserError  # noqa: E402
from ssvq.image import layer_sections, read_images  # noqa: E402
from ssvq.reference import outputs  # noqa: E402


def digits_accuracy(module) -> float:
    _, _, xte, yte = digits_data()
    return accuracy(module, xte, yte)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return load_model("digits", seed=0, cache_dir=cache), cache


# ------------------------------------------------------------------ digits
def test_digits_data_split():
    xtr, ytr, xte, yte = digits_data()
    assert xtr.shape == (1347, 64) and xte.shape == (450, 64)
    assert xtr.dtype == np.float32 and 0 <= xtr.min() and xtr.max() <= 1
    assert set(np.unique(ytr)) == set(range(10))


def test_digits_trains_and_caches(digits):
    model, cache = digits
    assert [(n, w.shape) for n, w, _ in model.layers] == [
        ("fc1", (128, 64)), ("fc2", (64, 128)), ("fc3", (10, 64))]
    assert all(b is not None and b.shape == (w.shape[0],) for _, w, b in model.layers)
    assert digits_accuracy(model.module) > 0.9
    path = digits_cache_path(0, cache)
    assert path.is_file()
    sd = torch.load(path, weights_only=True)
    again = load_model("digits", seed=0, cache_dir=cache)          # from the cache
    for (n, w, b), (_, w2, b2) in zip(model.layers, again.layers):
        np.testing.assert_array_equal(w, w2)
        np.testing.assert_array_equal(sd[f"{n}.weight"].numpy(), w)


def test_digits_calibration_is_real_activations(digits):
    model, _ = digits
    cal = model.calibration()
    xtr = digits_data()[0]
    (_, w1, b1), (_, w2, b2), _ = model.layers
    np.testing.assert_array_equal(cal["fc1"], xtr)
    h1 = np.maximum(xtr @ w1.T + b1, 0)                   # computed here, not by hooks
    np.testing.assert_allclose(cal["fc2"], h1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cal["fc3"], np.maximum(h1 @ w2.T + b2, 0), rtol=1e-4, atol=1e-4)


def test_digits_int8_keeps_accuracy(digits):
    model, _ = digits
    cal = model.calibration()
    deq = {n: dequantize(quantize_layer(n, w, b, cal[n], LayerConfig.parse("int8")))
           for n, w, b in model.layers}
    assert digits_accuracy(model.with_weights(deq)) > 0.9
    # with_weights does not touch the original
    assert digits_accuracy(model.module) > 0.9


# ------------------------------------------------------------------ state dict files
def _state_dict():
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(8, generator=g),
        "bn.running_mean": torch.zeros(8),
        "bn.num_batches_tracked": torch.tensor(3),
        "fc.weight": torch.randn(10, 20, generator=g),
        "fc.bias": torch.randn(10, generator=g),
        "head.weight": torch.randn(5, 10, generator=g),        # no bias
    }


def _check_state_dict_model(m, sd):
    assert m.module is None and m.calibration_source == "random-normal"
    assert [n for n, _, _ in m.layers] == ["conv", "fc", "head"]
    layers = {n: (w, b) for n, w, b in m.layers}
    np.testing.assert_array_equal(layers["conv"][0], sd["conv.weight"].reshape(8, 27).numpy())
    np.testing.assert_array_equal(layers["conv"][1], sd["conv.bias"].numpy())
    np.testing.assert_array_equal(layers["fc"][0], sd["fc.weight"].numpy())
    assert layers["head"][1] is None
    cal = m.calibration()
    assert cal["conv"].shape[1] == 27 and cal["fc"].shape[1] == 20
    assert abs(float(cal["fc"].std()) - 1) < 0.1


def test_load_pt_state_dict_with_conv(tmp_path):
    sd = _state_dict()
    torch.save(sd, tmp_path / "m.pt")
    m = load_model(str(tmp_path / "m.pt"))
    _check_state_dict_model(m, sd)
    again = load_model(str(tmp_path / "m.pt"))
    np.testing.assert_array_equal(m.calibration()["fc"], again.calibration()["fc"])


def test_load_safetensors_with_conv(tmp_path):
    from safetensors.torch import save_file
    sd = _state_dict()
    save_file(sd, str(tmp_path / "m.safetensors"))
    _check_state_dict_model(load_model(str(tmp_path / "m.safetensors")), sd)


class _NotATensor:
    pass


@pytest.mark.parametrize("case", ["missing", "text", "list", "pickle", "no_2d", "too_big",
                                  "bad_safetensors"])
def test_bad_paths(tmp_path, case):
    p = tmp_path / "m.pt"
    if case == "text":
        p.write_text("hello")
    elif case == "list":
        torch.save([torch.zeros(3, 3)], p)
    elif case == "pickle":               # arbitrary objects are never unpickled
        torch.save({"w": _NotATensor()}, p)
    elif case == "no_2d":
        torch.save({"a.bias": torch.zeros(3), "n": torch.tensor(1)}, p)
    elif case == "too_big":
        torch.save({"emb.weight": torch.zeros(70000, 2)}, p)
    elif case == "bad_safetensors":
        p = tmp_path / "m.safetensors"
        p.write_bytes(b"\x00" * 40)
    with pytest.raises(UserError) as e:
        load_model(str(p))
    msg = str(e.value)
    assert str(p) in msg and "expected" in msg and "found" in msg
    if case == "too_big":
        assert "65535" in msg and "70000" in msg
    if case == "no_2d":
        assert "2-D" in msg


# ------------------------------------------------------------------ whole runs
def test_compress_model_digits(digits, tmp_path):
    model, _ = digits
    lines = []
    out = compress_model(model, "ssvq-k16-d4", tmp_path / "img", progress=lines.append)
    s = read_images(out)
    assert s.layer_names == ["fc1", "fc2", "fc3"]
    assert sum(line.startswith("[") for line in lines) == 3
    assert any("calibration: real" in line for line in lines)
    lc = LayerConfig.parse("ssvq-k16-d4")
    assert s.config == AccelConfig.covering([(lc, 128, 64), (lc, 64, 128), (lc, 10, 64)])
    bits = weights = 0
    cal = model.calibration()
    for n, w, _ in model.layers:
        img = s.layer(n)
        assert img.config == lc
        np.testing.assert_array_equal(img.signs, (w < 0).astype(np.uint8))
        # the image read back computes what the in-memory quantizer made
        mem = quantize_layer(n, w, dict((a, c) for a, _, c in model.layers)[n], cal[n], lc)
        np.testing.assert_array_equal(outputs(img), outputs(mem))
        sec = layer_sections(s.config, lc, *w.shape)
        bits += (sec["codebook"][1] + sec["weights"][1]) * s.config.bus + 16 * w.shape[0]
        weights += w.size
        lm = s.entry(n)["meta"]
        assert lm["plan"]["config"] == "ssvq-k16-d4" and lm["plan"]["rule"] == "global"
        assert lm["bits"]["total"] == (sec["codebook"][1] + sec["weights"][1]) \
            * s.config.bus + 16 * w.shape[0]
    meta = s.manifest["meta"]
    assert meta["model"] == "digits" and meta["configs"] == {n: "ssvq-k16-d4" for n in
                                                             s.layer_names}
    assert meta["plan"]["global"] == {"method": "ssvq", "k": 16, "d": 4}
    assert meta["calibration"]["source"] == "real"
    assert meta["bits_per_weight"]["total"] == pytest.approx(bits / weights)
    assert set(meta["rel_weight_error"]["layers"]) == {"fc1", "fc2", "fc3"}
    assert 0 < meta["rel_weight_error"]["total"] < 0.6
    # the compressed model still classifies
    deq = {n: dequantize(s.layer(n)) for n in s.layer_names}
    assert digits_accuracy(model.with_weights(deq)) > 0.8


def test_default_plan_sends_the_small_layer_to_int8(digits):
    """ssvq K=256 D=8 has a 2048-value codebook: more than fc3's 640 weights."""
    c = compress_layers(digits[0], "ssvq")
    assert c.meta["configs"] == {"fc1": "ssvq-k256-d8", "fc2": "ssvq-k256-d8", "fc3": "int8"}
    assert c.layer_meta["fc3"]["plan"]["rule"] == "small_layers"
    assert c.config.modes == ("int", "ssvq") and c.config.int_bits == (8,)


def test_compress_unknown_layer(digits, tmp_path):
    with pytest.raises(UserError, match="fc9"):
        compress_model(digits[0], "int8", tmp_path / "x", layers=["fc9"], progress=None)


def test_cli_compress_state_dict(tmp_path, capsys):
    torch.save(_state_dict(), tmp_path / "m.pt")
    rc = main(["compress", "--model", str(tmp_path / "m.pt"), "--method", "vq", "--k", "16",
               "--d", "4", "--layers", "conv", "fc", "--out", str(tmp_path / "img")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "standard-normal" in out and "[2/2]" in out
    m = json.loads((tmp_path / "img" / "manifest.json").read_text())
    assert m["meta"]["calibration"]["source"] == "random-normal"
    assert [(e["name"], e["rows"], e["cols"]) for e in m["layers"]] == [("conv", 8, 27),
                                                                      ("fc", 10, 20)]
    assert m["config"]["kmax"] == 16 and m["config"]["d_set"] == [4]
    assert m["config"]["modes"] == ["vq"]


def test_cli_compress_missing_file(tmp_path, capsys):
    rc = main(["compress", "--model", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "nope.pt" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_accel_config_grows_to_the_model():
    lc = LayerConfig.parse("int8")
    cfg = accel_config_for([("big", lc, 5000, 3)])
    assert cfg.max_rows == 8192 and cfg.max_cols == 4096
    with pytest.raises(ConfigError, match=r"layer wide \(vq-k16-d64.*mults \(32\)"):
        accel_config_for([("wide", LayerConfig.parse("vq-k16-d64"), 4, 128)])


# ------------------------------------------------------------------ MiniLM (slow)
@pytest.mark.slow
def test_minilm_layers_and_calibration():
    m = load_model("minilm")
    assert len(m.layers) == 36
    per_block = [(384, 384)] * 4 + [(1536, 384), (384, 1536)]
    assert [w.shape for _, w, _ in m.layers] == per_block * 6
    assert not any("pooler" in n for n in m.layer_names)
    assert all(b is not None for _, _, b in m.layers)
    cal = m.calibration(max_tokens=512)
    for n, w, _ in m.layers:
        assert cal[n].shape[1] == w.shape[1] and 100 < len(cal[n]) <= 512
        assert np.isfinite(cal[n]).all() and cal[n].std() > 0


def test_compress_imports_only_the_contract():
    """compress/ imports nothing of the project but itself and the ssvq contract
    (errors, config, image, reference, files): never sim/, hw/ or ssvq.app."""
    import ast
    from pathlib import Path
    contract = {"ssvq.errors", "ssvq.config", "ssvq.image", "ssvq.reference", "ssvq.files"}
    root = Path(__file__).resolve().parents[1]
    bad = []
    for f in sorted((root / "compress").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for n in names:
                top = n.split(".")[0]
                if top in ("sim", "hw") or (top == "ssvq" and n not in contract):
                    bad.append(f"{f.name}: {n}")
    assert not bad


@pytest.mark.slow
def test_minilm_post_training_quality_is_unchanged():
    """Mean per-layer relative weight error of the 36 MiniLM layers, as the pre-v2
    compressor (2e40034) measured them: the v2 quantizers of these three
    configurations are the same computation."""
    m = load_model("minilm")
    want = {"ssvq-k256-d8": (0.3049462, 2.0868), "vq-k256-d4": (0.3119992, 2.0590),
            "int8": (0.0091852, 8.0312)}
    for name, (err, bpw) in want.items():
        c = compress_layers(m, name)
        assert set(c.meta["configs"].values()) == {name}
        got = np.mean(list(c.meta["rel_weight_error"]["layers"].values()))
        assert got == pytest.approx(err, abs=2e-4), name
        assert c.meta["bits_per_weight"]["total"] == pytest.approx(bpw, abs=1e-3), name
