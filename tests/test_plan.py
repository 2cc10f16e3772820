"""compress.plan (per-layer plans), compress.calib (--calib files: .npz, .safetensors,
a torch.export .pt2 program) and the `ssvq compress` command (--config, bad configs,
--out safety, --force, folder permissions)."""
import json
import os
import stat

import numpy as np
import pytest
import torch
from torch import nn

torch.set_num_threads(1)

from compress.calib import choose_act, load_calibration  # noqa: E402
from compress.plan import CompressionPlan, plan_from_args  # noqa: E402
from compress.quantize import dequantize  # noqa: E402
from ssvq.app.cli import main  # noqa: E402
from ssvq.config import LayerConfig  # noqa: E402
from ssvq.errors import ConfigError, UserError  # noqa: E402
from ssvq.image import read_images  # noqa: E402

LC = LayerConfig.parse
BIG = (256, 256)          # big enough that no codebook rule fires


# ------------------------------------------------------------------ resolution
def test_resolution_order_global_then_patterns_in_order_then_small_layers():
    plan = CompressionPlan.from_dict({
        "global": {"method": "vq", "k": 64, "d": 4},
        "layers": {"enc.*": {"d": 8},                     # first: d only, method inherited
                   "enc.1.*": {"method": "int4"},         # later pattern wins
                   "enc.1.attn": {"method": "ssvq"},      # k from global, d from enc.*
                   "head": "vq-k16-d8-m2-c4"},            # a layer-config name
        "small_layers": {"max_weights": 100, "method": "int6"},
    })
    r = plan.explain
    assert r("other", *BIG).config == LC("vq-k64-d4") and r("other", *BIG).rules == ("global",)
    assert r("enc.0.fc", *BIG).config == LC("vq-k64-d8")
    assert r("enc.0.fc", *BIG).rules == ("global", 'layers["enc.*"]')
    assert r("enc.1.fc", *BIG).config == LC("int4")
    assert r("enc.1.attn", *BIG).config == LC("ssvq-k64-d8")
    assert r("enc.1.attn", *BIG).rules == ("global", 'layers["enc.*"]', 'layers["enc.1.*"]',
                                          'layers["enc.1.attn"]')
    assert r("head", *BIG).config == LayerConfig("vq", k=16, d=8, m=2, coef_bits=4)
    # small layers override every pattern (10 x 10 = 100 <= max_weights)
    assert r("enc.1.attn", 10, 10).config == LC("int6")
    assert r("enc.1.attn", 10, 10).rule == "small_layers"
    # 110 weights > max_weights, but the 64 x 8 = 512-value codebook is larger than the
    # layer's 110 weights: the codebook rule
    assert r("enc.1.attn", 10, 11).config == LC("int6")
    assert r("enc.1.attn", 10, 11).rule == "small_layers"
    assert r("enc.1.attn", 16, 32).config == LC("ssvq-k64-d8")    # 512 weights: not small
    assert r("enc.1.fc", 10, 11).config == LC("int4")             # int: no codebook
    assert plan.resolve("enc.1.attn", *BIG) == LC("ssvq-k64-d8")


def test_defaults_and_the_codebook_rule():
    plan = CompressionPlan()
    assert plan.resolve("x", *BIG) == LC("ssvq-k256-d8")
    # a 2 x 16 conv: a 2048-value codebook for 32 weights would cost 517 bits/weight
    assert plan.resolve("conv", 2, 16) == LC("int8")
    assert plan.explain("conv", 2, 16).rules == ("small_layers",)
    # 2048 weights is not smaller than the 2048-value codebook
    assert plan.resolve("x", 32, 64) == LC("ssvq-k256-d8")
    assert plan.resolve("x", 31, 64) == LC("int8")
    off = CompressionPlan.from_dict({"small_layers": {"codebook_rule": False}})
    assert off.resolve("conv", 2, 16) == LC("ssvq-k256-d8")
    other = CompressionPlan.from_dict({"small_layers": {"method": "vq", "k": 4, "d": 4}})
    assert other.resolve("conv", 2, 16) == LC("vq-k4-d4")


def test_additive_specs():
    plan = CompressionPlan.from_dict({"global": {"method": "additive"}})
    assert plan.resolve("x", *BIG) == LayerConfig("vq", k=256, d=8, m=2, coef_bits=4)
    plan = CompressionPlan.from_dict({"global": {"method": "additive", "k": 16, "m": 1,
                                                 "coef_bits": 0, "signs": True}})
    assert plan.resolve("x", *BIG) == LC("ssvq-k16-d8")
    for b in (1, 2, 3, 4, 5, 6, 8):
        assert CompressionPlan({"method": f"int{b}"}).resolve("x", 4, 4) == \
            LayerConfig("int", bits=b)


def test_dict_round_trip():
    d = {"global": {"method": "ssvq", "k": 256, "d": 8},
         "layers": {"a.*": {"d": 4}, "b": {"method": "additive", "k": 16, "m": 2,
                                           "coef_bits": 3, "signs": True}, "c": {"method": "int2"}},
         "small_layers": {"max_weights": 4096, "method": "int8", "codebook_rule": False}}
    p = CompressionPlan.from_dict(d)
    assert p.to_dict() == d
    assert CompressionPlan.from_dict(p.to_dict()) == p
    assert list(p.to_dict()["layers"]) == ["a.*", "b", "c"]       # order is meaning
    assert json.loads(json.dumps(p.to_dict())) == d
    # a layer-config name is stored as the spec it stands for
    q = CompressionPlan.from_dict({"layers": {"x": "ssvq-k16-d8-m2-c4"}})
    assert q.to_dict()["layers"]["x"] == {"method": "additive", "k": 16, "d": 8, "m": 2,
                                          "coef_bits": 4, "signs": True}


@pytest.mark.parametrize("d, path", [
    ({"globl": {}}, "globl"),
    ({"global": {"methd": "ssvq"}}, "global.methd"),
    ({"layers": {"enc.*": {"kk": 3}}}, 'layers["enc.*"].kk'),
    ({"small_layers": {"max_weight": 3}}, "small_layers.max_weight"),
    ({"global": {"method": "int4", "k": 16}}, "global.k"),
    ({"layers": {"a": {"method": "ssvq", "m": 2}}}, 'layers["a"].m'),
    ({"global": {"method": "int7"}}, "global.method"),
    ({"global": {"k": 3}}, "global.k"),
    ({"global": {"d": 128}}, "global.d"),
    ({"global": {"m": 3}}, "global.m"),
    ({"global": {"coef_bits": 5}}, "global.coef_bits"),
    ({"global": {"signs": 1}}, "global.signs"),
    ({"small_layers": {"max_weights": -1}}, "small_layers.max_weights"),
    ({"layers": {"a": "int9"}}, 'layers["a"]'),
    ({"layers": ["a"]}, "layers"),
])
def test_unknown_and_bad_keys_name_their_path(d, path):
    with pytest.raises(ConfigError) as e:
        CompressionPlan.from_dict(d, "plan.json")
    msg = str(e.value)
    assert msg.startswith(f"plan.json: {path}")
    assert "\n" not in msg


def test_shorthand_flags():
    assert plan_from_args(method="vq", k=16, d=4).resolve("x", *BIG) == LC("vq-k16-d4")
    assert plan_from_args(method="additive", k=16).resolve("x", *BIG) == \
        LayerConfig("vq", k=16, d=8, m=2, coef_bits=4)
    assert plan_from_args(method="additive", m=1, coef_bits=2).resolve("x", *BIG) == \
        LayerConfig("vq", k=256, d=8, m=1, coef_bits=2)
    assert plan_from_args(d=4).global_spec == {"d": 4}
    assert plan_from_args(method="int3").resolve("x", *BIG) == LC("int3")
    for kw, flag in [({"method": "int4", "k": 16}, "--k"), ({"m": 2}, "--m"),
                     ({"method": "vq", "coef_bits": 2}, "--coef-bits"),
                     ({"method": "int9"}, "--method"), ({"k": 5}, "--k")]:
        with pytest.raises(ConfigError, match=f"^{flag}"):
            plan_from_args(**kw)


def test_shorthand_over_a_config_file(tmp_path):
    f = tmp_path / "plan.json"
    f.write_text(json.dumps({"global": {"method": "vq", "k": 64, "d": 4},
                             "layers": {"fc3": "int8"}}))
    p = plan_from_args(str(f), k=16)
    assert p.resolve("fc1", *BIG) == LC("vq-k16-d4") and p.resolve("fc3", *BIG) == LC("int8")
    p = plan_from_args(str(f), method="int4")          # the file's k and d drop out
    assert p.global_spec == {"method": "int4"}
    f.write_text(json.dumps({"global": {"method": "int4"}}))
    with pytest.raises(ConfigError, match=r"--d: not used by global.method 'int4' of .*plan"):
        plan_from_args(str(f), d=4)


def test_config_file_errors(tmp_path):
    f = tmp_path / "p.json"
    f.write_text("{\n  \"global\": {,\n}")
    with pytest.raises(ConfigError, match=r"p.json: expected JSON, found a parse error \(.*line 2"):
        CompressionPlan.from_file(f)
    with pytest.raises(ConfigError, match="no such file"):
        CompressionPlan.from_file(tmp_path / "nope.json")


# ------------------------------------------------------------------ calibration files
LAYERS = [("fc1", 6), ("blk.0", 5), ("conv", 18)]


def _acts(n=7):
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal((n, cols)).astype(np.float32) for name, cols in LAYERS}


def test_npz_calibration(tmp_path):
    a = _acts()
    np.savez(tmp_path / "c.npz", **a, unused=np.zeros(3))
    cal = load_calibration(tmp_path / "c.npz", LAYERS)
    assert cal.source == "file" and cal.kind == "npz" and str(tmp_path / "c.npz") in cal.path
    for name, _ in LAYERS:
        np.testing.assert_array_equal(cal.data[name], a[name])
    # (batch, tokens, cols) is flattened like a hook sees it
    np.savez(tmp_path / "d.npz", **dict(a, fc1=np.ones((2, 3, 6))))
    assert load_calibration(tmp_path / "d.npz", LAYERS).data["fc1"].shape == (6, 6)


def test_safetensors_calibration(tmp_path):
    from safetensors.numpy import save_file
    a = _acts()
    save_file(a, str(tmp_path / "c.safetensors"))
    cal = load_calibration(tmp_path / "c.safetensors", LAYERS)
    assert cal.kind == "safetensors"
    for name, _ in LAYERS:
        np.testing.assert_array_equal(cal.data[name], a[name])


@pytest.mark.parametrize("suffix, case", [(s, c) for s in (".npz", ".safetensors")
                                           for c in ("missing", "cols", "dtype", "nan")
                                           if (s, c) != (".safetensors", "dtype")])
def test_bad_calibration_files_name_file_layer_expected_found(tmp_path, suffix, case):
    a = _acts()
    if case == "missing":
        del a["blk.0"]
    elif case == "cols":
        a["blk.0"] = np.zeros((4, 7), np.float32)
    elif case == "dtype":
        a["blk.0"] = np.zeros((4, 5), np.bool_)
    else:
        a["blk.0"][1, 2] = np.nan
    path = tmp_path / f"c{suffix}"
    if suffix == ".npz":
        np.savez(path, **a)
    else:
        from safetensors.numpy import save_file
        save_file(a, str(path))
    with pytest.raises(UserError) as e:
        load_calibration(path, LAYERS)
    msg = str(e.value)
    assert str(path) in msg and "blk.0" in msg and "expected" in msg and "found" in msg
    if case == "cols":
        assert "(n, 5)" in msg and "(4, 7)" in msg


def test_calibration_file_that_is_not_one(tmp_path):
    for name, data in [("x.npz", b"not a zip"), ("x.safetensors", b"\0" * 40),
                       ("x.pt2", b"not a zip either")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError, match=str(tmp_path / name)):
            load_calibration(tmp_path / name, LAYERS)
    with pytest.raises(UserError, match=r"\.npz, \.safetensors or \.pt2"):
        load_calibration(tmp_path / "x.txt", LAYERS)
    with pytest.raises(UserError, match="no such file"):
        load_calibration(tmp_path / "gone.npz", LAYERS)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(6, 5)
        self.blk = nn.Sequential(nn.Linear(5, 4), nn.ReLU())
        self.conv = nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x, img):
        return self.blk(torch.relu(self.fc1(x))).sum() + self.conv(img).sum()


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    d = tmp_path_factory.mktemp("pt2")
    m = _Tiny().eval()
    x, img = torch.randn(7, 6), torch.randn(1, 2, 4, 5)
    torch.export.save(torch.export.export(m, (x, img)), str(d / "m.pt2"))
    torch.save(m.state_dict(), d / "m.pt")
    return d, m, x, img


def test_pt2_program_calibration(program):
    d, m, x, img = program
    cal = load_calibration(d / "m.pt2", LAYERS)
    assert cal.kind == "pt2" and "example inputs" in cal.description
    # the inputs each layer sees, computed here from the module itself
    np.testing.assert_allclose(cal.data["fc1"], x.numpy(), rtol=1e-6)
    h = torch.relu(m.fc1(x)).detach().numpy()
    np.testing.assert_allclose(cal.data["blk.0"], h, rtol=1e-5, atol=1e-6)
    # conv: one row per output position, the in*kh*kw patch of a conv weight's layout
    patches = np.zeros((4 * 5, 18), np.float32)
    xp = np.pad(img.numpy()[0], ((0, 0), (1, 1), (1, 1)))
    for i in range(4):
        for j in range(5):
            patches[i * 5 + j] = xp[:, i:i + 3, j:j + 3].reshape(-1)
    np.testing.assert_allclose(cal.data["conv"], patches, rtol=1e-6)
    # which is what makes the conv weight, reshaped, compute the conv's outputs
    y = m.conv(img).detach().numpy()[0].reshape(3, -1).T
    w = m.conv.weight.detach().numpy().reshape(3, -1)
    np.testing.assert_allclose(cal.data["conv"] @ w.T + m.conv.bias.detach().numpy(), y,
                               rtol=1e-4, atol=1e-5)


def test_pt2_missing_layer_and_wrong_width(program):
    d = program[0]
    with pytest.raises(UserError) as e:
        load_calibration(d / "m.pt2", LAYERS + [("fc9", 6)])
    msg = str(e.value)
    assert "m.pt2" in msg and "fc9" in msg and "fc1" in msg
    with pytest.raises(UserError, match=r"layer fc1: expected inputs of 7 columns .* found 6"):
        load_calibration(d / "m.pt2", [("fc1", 7)])


def test_pt2_with_pickled_objects_is_refused(program, monkeypatch):
    """A program whose loading would unpickle something is rejected: the loader is run
    with torch.load forced to weights_only=True and pickle.loads refused."""
    import pickle

    import compress.calib as c
    real = torch.export.load

    def sneaky(path, *a, **k):
        pickle.loads(pickle.dumps({"x": 1}))      # what a custom object's loading does
        return real(path, *a, **k)
    monkeypatch.setattr(torch.export, "load", sneaky)
    with pytest.raises(UserError, match="nothing is unpickled"):
        c.load_calibration(program[0] / "m.pt2", LAYERS)


# ------------------------------------------------------------------ ssvq compress
def _model(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {"enc.fc.weight": torch.randn(64, 32, generator=g),
          "enc.fc.bias": torch.randn(64, generator=g),
          "enc.out.weight": torch.randn(32, 64, generator=g),
          "conv.weight": torch.randn(2, 1, 4, 4, generator=g)}         # 2 x 16: small
    torch.save(sd, tmp_path / "m.pt")
    return tmp_path / "m.pt"


def test_cli_compress_with_a_config(tmp_path, capsys):
    model = _model(tmp_path)
    plan = {"global": {"method": "ssvq", "k": 16, "d": 4},
            "layers": {"enc.out": {"method": "additive", "k": 16, "d": 8, "m": 2,
                                   "coef_bits": 4, "signs": True}}}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    out = tmp_path / "img"
    assert main(["compress", "--model", str(model), "--config", str(tmp_path / "plan.json"),
                 "--out", str(out)]) == 0
    s = read_images(out)
    assert [s.layer_config(n).name for n in s.layer_names] == \
        ["ssvq-k16-d4", "ssvq-k16-d8-m2-c4", "int8"]
    # the build covers exactly what the layers use
    c = s.config
    assert (c.modes, c.kmax, c.d_set, c.m_max, c.coef_bits_max, c.int_bits) == \
        (("int", "ssvq"), 16, (4, 8), 2, 4, (8,))
    meta = s.manifest["meta"]
    assert meta["plan"] == CompressionPlan.from_dict(plan).to_dict()
    assert s.entry("conv")["meta"]["plan"]["rule"] == "small_layers"
    assert s.entry("enc.out")["meta"]["plan"]["spec"] == dict(plan["layers"]["enc.out"])
    printed = capsys.readouterr().out
    assert "standard-normal" in printed and "small_layers" in printed
    for n in s.layer_names:
        s.layer(n)                                 # every check of the reader passes


def test_cli_compress_with_calibration_file(tmp_path, capsys):
    model = _model(tmp_path)
    rng = np.random.default_rng(1)
    acts = {"enc.fc": rng.standard_normal((50, 32)).astype(np.float32) * 3,
            "enc.out": np.abs(rng.standard_normal((50, 64))).astype(np.float32),
            "conv": rng.standard_normal((50, 16)).astype(np.float32)}
    np.savez(tmp_path / "acts.npz", **acts)
    out = tmp_path / "img"
    assert main(["compress", "--model", str(model), "--method", "int4", "--calib",
                 str(tmp_path / "acts.npz"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "calibration: file" in printed and "acts.npz" in printed
    assert "standard-normal" not in printed
    s = read_images(out)
    cal = s.manifest["meta"]["calibration"]
    assert cal["source"] == "file" and cal["kind"] == "npz"
    # act_scale follows the given activations (compress.calib's rule on them)
    img = s.layer("enc.fc")
    want = choose_act(acts["enc.fc"], dequantize(img))
    assert img.scales["act_scale"] == pytest.approx(want[0], rel=1e-6)
    assert img.scales["act_zero"] == want[1]
    # a missing layer: exit 2, one line naming the file and the layer
    np.savez(tmp_path / "part.npz", **{k: v for k, v in acts.items() if k != "enc.out"})
    assert main(["compress", "--model", str(model), "--calib", str(tmp_path / "part.npz"),
                 "--out", str(tmp_path / "img2")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "part.npz" in err and "enc.out" in err
    assert not (tmp_path / "img2").exists()


def test_cli_compress_with_a_pt2_program(tmp_path, program, capsys):
    d = program[0]
    out = tmp_path / "img"
    assert main(["compress", "--model", str(d / "m.pt"), "--method", "int8", "--calib",
                 str(d / "m.pt2"), "--out", str(out)]) == 0
    assert "pt2" in capsys.readouterr().out
    s = read_images(out)
    assert s.layer_names == ["fc1", "blk.0", "conv"]
    assert s.manifest["meta"]["calibration"]["kind"] == "pt2"


@pytest.mark.parametrize("argv, field", [
    (["--method", "ssvq", "--k", "3"], "--k"),
    (["--method", "int7"], "--method"),
    (["--method", "int4", "--d", "4"], "--d"),
    (["--mults", "24"], "--mults"),
    (["--bus", "32"], "--bus"),
    (["--calib", "nope.npz"], "--calib"),
    (["--calib", "acts.csv"], "--calib"),
    (["--config", "bad.json"], "bad.json: layers[\"enc.*\"].dd"),
    (["--config", "missing.json"], "missing.json"),
])
def test_bad_arguments_exit_2_with_one_line_before_loading(tmp_path, capsys, monkeypatch,
                                                          argv, field):
    (tmp_path / "bad.json").write_text(json.dumps({"layers": {"enc.*": {"dd": 4}}}))
    (tmp_path / "acts.csv").write_text("1,2")
    monkeypatch.chdir(tmp_path)
    import compress.run as run

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(run, "load_model", no_loading)
    out = tmp_path / "o"
    assert main(["compress", "--model", "digits", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ssvq compress: error: ") and "\n" not in err
    assert field in err
    assert not out.exists()


def _tree(p):
    return sorted((str(x.relative_to(p)), x.read_bytes() if x.is_file() else None)
                  for x in p.rglob("*"))


def test_out_safety_and_force(tmp_path, capsys):
    model = _model(tmp_path)
    base = ["compress", "--model", str(model), "--method", "int8", "--layers", "enc.fc"]
    # a file
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    assert main(base + ["--out", str(f)]) == 2
    err = capsys.readouterr().err
    assert str(f) in err and "a file" in err and "--force" in err
    assert f.read_text() == "keep me"
    # a folder that is not an image set
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "a.md").write_text("x")
    (d / "sub" / "b").write_text("y")
    before = _tree(d)
    assert main(base + ["--out", str(d)]) == 2
    assert "not one" in capsys.readouterr().err
    assert _tree(d) == before
    # a folder with a manifest of another format
    (d / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    assert main(base + ["--out", str(d)]) == 2
    # an image set written by ssvq is replaced; so is an empty folder
    img = tmp_path / "img"
    assert main(base + ["--out", str(img)]) == 0
    assert main(base[:-1] + ["enc.out", "--out", str(img)]) == 0
    assert read_images(img).layer_names == ["enc.out"]
    (tmp_path / "empty").mkdir()
    assert main(base + ["--out", str(tmp_path / "empty")]) == 0
    # --force replaces anything
    assert main(base + ["--out", str(d), "--force"]) == 0
    assert read_images(d).layer_names == ["enc.fc"] and not (d / "a.md").exists()
    assert main(base + ["--out", str(f), "--force"]) == 0
    assert f.is_dir() and read_images(f).layer_names == ["enc.fc"]
    # a path under a file
    assert main(base + ["--out", str(tmp_path / "m.pt" / "x")]) == 2


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_written_folders_follow_the_umask(tmp_path, umask):
    model = _model(tmp_path)
    old = os.umask(umask)
    try:
        out = tmp_path / "img"
        assert main(["compress", "--model", str(model), "--method", "int8", "--layers",
                     "enc.fc", "--out", str(out)]) == 0
    finally:
        os.umask(old)
    want = 0o777 & ~umask
    assert stat.S_IMODE(out.stat().st_mode) == want
    for p in out.rglob("*"):
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (want if p.is_dir() else 0o666 & ~umask), p
