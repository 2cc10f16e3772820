"""Training API (compress/train.py) on small layers, checked against
independent computations: straight-through gradients worked out by hand from
the weight gradient, the sign-freezing rule replayed on a hand-built flip
history, exported images against the v2 format (written, read back, decoded) and
integer outputs requantized by hand."""
import numpy as np
import pytest
import torch
from torch import nn

from compress.quantize import dequantize, layer_bits, quantize_layer
from compress.train import (SSVQ, VQ, QuantizedModel, QuantSpec, SSVQLinear, Uniform,
                            UniformLinear, VQLinear, fit, plan_overrides)
from ssvq.config import AccelConfig, LayerConfig
from ssvq.errors import ConfigError
from ssvq.image import pack_layer, read_images, unpack_layer
from ssvq.reference import outputs, weight_matrix

torch.set_num_threads(1)


def _linear(rows, cols, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(cols, rows)
    with torch.no_grad():
        lin.weight.normal_(0, 0.5)
        lin.bias.normal_(0, 0.1)
    return lin


def _by_hand_magnitudes(codebook: np.ndarray, codes: np.ndarray, rows: int, cols: int, d: int,
                        signed: bool):
    """8-bit codebook grid (max/255 unsigned, max|.|/127 signed) and the
    (rows, cols) magnitude of every weight, element by element."""
    c = codebook.astype(np.float64)
    if not signed:
        c = np.maximum(c, 0.0)
    top = np.abs(c).max() if signed else c.max()
    cs = top / (127.0 if signed else 255.0)
    cq = np.round(c / cs) * cs
    m = np.zeros((rows, cols))
    for r in range(rows):
        for j in range(cols):
            m[r, j] = cq[codes[r, j // d], j % d]
    return m, cq


def _grads(layer, x, g):
    layer.zero_grad(set_to_none=True)
    y = layer(x)
    (y * g).sum().backward()
    # dL/dW for L = sum(g * (x W^T + b)) is g^T x, independently of the layer
    return (g.T @ x).double().numpy()


@pytest.mark.parametrize("rows,cols,k,d", [(6, 18, 4, 4), (5, 16, 8, 8), (3, 7, 8, 1)])
def test_ssvq_ste_gradients_by_hand(rows, cols, k, d):
    q = SSVQLinear(_linear(rows, cols), SSVQ(k=k, d=d), "t")
    with torch.no_grad():                       # make one codeword entry negative: clamped
        q.codebook[0, 0] = -0.3
    torch.manual_seed(1)
    x, g = torch.randn(9, cols), torch.randn(9, rows)
    dw = _grads(q, x, g)

    lat = q.latent.detach().double().numpy()
    sign = np.where(lat < 0, -1.0, 1.0)
    s = np.exp(q.log_scale.detach().double().numpy())
    codes = q.codes.numpy()
    m, _ = _by_hand_magnitudes(q.codebook.detach().numpy(), codes, rows, cols, d, signed=False)
    # the forward weight is sign * magnitude * row scale
    np.testing.assert_allclose(q.weight_q().detach().numpy(), sign * m * s[:, None],
                               rtol=1e-5, atol=1e-6)
    # STE: dL/dlatent = dL/dW * magnitude (magnitude includes the row scale)
    np.testing.assert_allclose(q.latent.grad.numpy(), dw * m * s[:, None], rtol=1e-4, atol=1e-6)
    # codebook: scatter-sum of dL/dW * sign * row scale into the assigned entries
    want = np.zeros((k, d))
    for r in range(rows):
        for j in range(cols):
            want[codes[r, j // d], j % d] += dw[r, j] * sign[r, j] * s[r]
    want[0, 0] = 0.0                             # clamped at 0 from below: no gradient
    np.testing.assert_allclose(q.codebook.grad.numpy(), want, rtol=1e-4, atol=1e-5)
    # row scale (log parametrised): dL/dlog s_r = sum_j dL/dW_rj * W_rj
    np.testing.assert_allclose(q.log_scale.grad.numpy(), (dw * sign * m * s[:, None]).sum(1),
                               rtol=1e-4, atol=1e-5)


def test_frozen_latents_get_no_gradient():
    q = SSVQLinear(_linear(4, 16), SSVQ(k=4, d=4), "t")
    frozen = torch.zeros(4, 16, dtype=torch.bool)
    frozen[1, 3:9] = True
    q.frozen |= frozen
    q.frozen_sign.copy_(torch.where(q.latent.detach() < 0, -1.0, 1.0))
    x, g = torch.randn(5, 16), torch.randn(5, 4)
    dw = _grads(q, x, g)
    assert (q.latent.grad[frozen] == 0).all()
    assert torch.count_nonzero(q.latent.grad[~frozen]) > 0
    assert np.abs(dw).max() > 0


def test_vq_codebook_gradient_is_scatter_sum():
    rows, cols, k, d = 7, 12, 8, 4
    q = VQLinear(_linear(rows, cols, seed=3), VQ(k=k, d=d), "t")
    x, g = torch.randn(6, cols), torch.randn(6, rows)
    dw = _grads(q, x, g)
    s = np.exp(q.log_scale.detach().double().numpy())
    codes = q.codes.numpy()
    m, _ = _by_hand_magnitudes(q.codebook.detach().numpy(), codes, rows, cols, d, signed=True)
    np.testing.assert_allclose(q.weight_q().detach().numpy(), m * s[:, None], rtol=1e-5,
                               atol=1e-6)
    want = np.zeros((k, d))
    for r in range(rows):
        for j in range(cols):
            want[codes[r, j // d], j % d] += dw[r, j] * s[r]
    np.testing.assert_allclose(q.codebook.grad.numpy(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bits", [8, 6, 4, 3, 2])
def test_uniform_ste(bits):
    q = UniformLinear(_linear(5, 9, seed=4), Uniform(bits), "t")
    x, g = torch.randn(4, 9), torch.randn(4, 5)
    dw = _grads(q, x, g)
    w = q.shadow.detach().double().numpy()
    s = np.exp(q.log_scale.detach().double().numpy())[:, None]
    lo, hi = (-127 if bits == 8 else -(1 << (bits - 1))), (1 << (bits - 1)) - 1
    u = w / s
    qi = np.clip(np.round(u), lo, hi)
    np.testing.assert_allclose(q.weight_q().detach().numpy(), qi * s, rtol=1e-5, atol=1e-7)
    inside = (np.round(u) >= lo) & (np.round(u) <= hi)
    np.testing.assert_allclose(q.shadow.grad.numpy(), dw * inside, rtol=1e-4, atol=1e-6)
    # LSQ: dW/ds = q - w/s inside the range, the clipped level outside
    dlog = (dw * np.where(inside, qi - u, qi) * s).sum(1)
    np.testing.assert_allclose(q.log_scale.grad.numpy(), dlog, rtol=1e-3, atol=1e-5)


class _One(nn.Module):
    def __init__(self, rows, cols):
        super().__init__()
        self.fc = _linear(rows, cols, seed=5)

    def forward(self, x):
        return self.fc(x)


def test_freezing_rule_on_a_hand_built_flip_history():
    rows, cols, thr = 3, 8, 2
    spec = SSVQ(k=4, d=4, flip_threshold=thr, freeze_start=0.5, freeze_end=0.9)
    qm = QuantizedModel(_One(rows, cols), spec)
    q = qm.qlayers["fc"]
    rng = np.random.default_rng(0)
    # a sign history: each step, each latent either keeps or flips its sign
    hist = [np.where(q.latent.detach().numpy() < 0, -1.0, 1.0)]
    flips = np.zeros((rows, cols), int)
    frozen = np.zeros((rows, cols), bool)
    for step in range(12):
        flip = rng.random((rows, cols)) < 0.3
        flip[0, :] = step % 2 == 0            # row 0 flips every other step: oscillates
        flip[1, :] = False                    # row 1 never flips
        new = np.where(flip, -hist[-1], hist[-1])
        with torch.no_grad():                 # what an optimizer step might do
            q.latent.copy_(torch.from_numpy(new * rng.uniform(0.1, 1.0, new.shape)).float())
        # by hand: frozen latents keep their sign; others count their flips
        eff = np.where(frozen, hist[-1], new)
        flips += (eff != hist[-1]) & ~frozen
        frozen |= flips > thr
        hist.append(eff)
        qm.step(progress=0.1)                 # before freeze_start: the plain threshold
        assert (q.frozen.numpy() == frozen).all(), step
        assert (q.flips.numpy() == flips).all(), step
        assert (q.negative().numpy() == (eff < 0)).all(), step
    assert frozen[0].all() and not frozen[1].any()
    # the threshold decays linearly between freeze_start and freeze_end
    thr_mid, all_ = QuantizedModel.threshold(spec, 0.8)
    assert not all_ and thr_mid == pytest.approx(thr * (0.9 - 0.8) / (0.9 - 0.5))
    qm.step(progress=0.8)
    assert (q.frozen.numpy() == (frozen | (flips > thr_mid))).all()
    # by freeze_end everything is frozen
    qm.step(progress=0.9)
    assert bool(q.frozen.all())
    assert qm.history[-1]["frozen_fraction"] == 1.0


def test_frozen_latents_do_not_change_under_adam():
    spec = SSVQ(k=4, d=4, flip_threshold=1e9)
    qm = QuantizedModel(_One(6, 16), spec)
    q = qm.qlayers["fc"]
    opt = torch.optim.Adam(qm.param_groups(lr=0.05))
    x, y = torch.randn(32, 16), torch.randn(32, 6)
    mask = torch.zeros(6, 16, dtype=torch.bool)
    mask[::2] = True
    for i in range(30):
        if i == 10:                                       # freeze half of them mid-way
            with torch.no_grad():
                q.frozen |= mask
                q.frozen_sign.copy_(torch.where(q.latent < 0, -1.0, 1.0))
                q.frozen_latent.copy_(q.latent)
            lat0 = q.latent.detach().clone()
            sign0 = q.negative().clone()
        loss = ((qm(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        qm.step()
    assert torch.equal(q.latent.detach()[mask], lat0[mask])
    assert torch.equal(q.negative()[mask], sign0[mask])
    assert not torch.equal(q.latent.detach()[~mask], lat0[~mask])


def test_reassign_codes_nearest_to_abs_latent():
    q = SSVQLinear(_linear(4, 10, seed=6), SSVQ(k=4, d=4, codes="reassign"), "t")
    with torch.no_grad():
        q.latent.normal_()
    lat = np.zeros((4, 12))
    lat[:, :10] = np.abs(q.latent.detach().numpy())
    _, cq = _by_hand_magnitudes(q.codebook.detach().numpy(), q.codes.numpy(), 4, 10, 4, False)
    q.reassign_codes()
    vec = lat.reshape(-1, 4)
    want = ((vec[:, None, :] - cq[None]) ** 2).sum(-1).argmin(1).reshape(4, 3)
    assert (q.codes.numpy() == want).all()


class _Net(nn.Module):
    """Odd shapes: rows and cols not multiples of D or the lane count."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(37, 45)
        self.b = nn.Linear(45, 13)
        self.c = nn.Linear(13, 5)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def _requant_by_hand(acc, bias, mult, shift):
    y = ((int(acc) + int(bias)) * int(mult) + (1 << (int(shift) - 1))) // (1 << int(shift))
    return max(-128, min(127, y))


@pytest.mark.parametrize("spec", [SSVQ(k=16, d=4), SSVQ(k=8, d=4), VQ(k=16, d=4), Uniform(8),
                                  Uniform(4), Uniform(3), Uniform(2)], ids=lambda s: s.method
                         + (f"-k{s.k}" if s.method in ("ssvq", "vq") else ""))
def test_export_round_trip(tmp_path, spec):
    qm = QuantizedModel(_Net(), spec, overrides={"c": Uniform(8)})
    x, y = torch.randn(64, 37), torch.randint(0, 5, (64,))
    fit(qm, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), [(x, y)], steps=25,
        lr=0.01, progress=None)
    calib = qm.capture(lambda m: m(x))
    imgs = qm.export(calib)
    for img in imgs:
        q = qm.qlayers[img.name]
        # the image is of the spec's own configuration (int-b for Uniform(b))
        assert img.config == q.spec.layer_config
        # exported weights are exactly the weights the trained layers compute with
        np.testing.assert_allclose(dequantize(img), q.weight_q().detach().numpy(),
                                   rtol=1e-5, atol=1e-6)
        if img.mode == "ssvq":
            assert (img.signs == q.negative().numpy()).all()
            assert img.codebook.dtype == np.uint8
        if img.mode == "int":
            lo = -127 if img.config.bits == 8 else -(1 << (img.config.bits - 1))
            assert img.weights.min() >= lo and img.weights.max() < 1 << (img.config.bits - 1)
    out = qm.write_images(tmp_path / "img", calib, meta={"note": "t"})
    back = read_images(out)
    m = back.manifest
    assert m["meta"]["trained"] is True and m["meta"]["note"] == "t"
    assert m["meta"]["configs"]["c"] == "int8"
    assert m["config"] == AccelConfig.covering(
        [(im.config, im.rows, im.cols) for im in imgs]).to_dict()
    for img in imgs:
        e = back.entry(img.name)
        assert QuantSpec.from_dict(e["meta"]["spec"]) == qm.qlayers[img.name].spec
        # the bits charged are the bits the image streams
        lc = img.config
        assert qm.qlayers[img.name].bits() == layer_bits(lc, img.rows, img.cols)["total"]
        beats, _ = pack_layer(img, back.config)
        for got in (unpack_layer(beats, back.config, img.name), back.layer(img.name)):
            assert (weight_matrix(got) == weight_matrix(img)).all()
            for f in ("bias", "mult", "shift", "act"):
                assert (getattr(got, f) == getattr(img, f)).all()
        # on a batch of real (calibration) inputs: the read-back image, and the
        # requantization of a few rows by hand
        s, z = img.scales["act_scale"], img.scales["act_zero"]
        a = np.clip(np.rint(calib[img.name][:8].astype(np.float64) / s) + z, -128, 127)
        a = a.astype(np.int8)
        got = back.layer(img.name)
        batch = outputs(got, a)
        assert (batch == outputs(img, a)).all()
        w = weight_matrix(img)
        for i in (0, 7):
            for r in (0, img.rows - 1):
                acc = sum(int(w[r, c]) * int(a[i, c]) for c in range(img.cols))
                assert batch[i, r] == _requant_by_hand(acc, img.bias[r], img.mult[r],
                                                       img.shift[r])


def test_integer_forward_tracks_the_float_layer():
    """Sanity of the requantization derived for a trained layer: dequantized
    int8 outputs stay close to the float output of the trained weights."""
    qm = QuantizedModel(_Net(), SSVQ(k=16, d=4), layers=["a"])
    x = torch.randn(64, 37)
    calib = qm.capture(lambda m: m(x))
    (img,) = qm.export(calib)
    s, z = img.scales["act_scale"], img.scales["act_zero"]
    a = np.clip(np.rint(calib["a"].astype(np.float64) / s) + z, -128, 127).astype(np.int8)
    yint = outputs(img, a)
    yi = yint.astype(np.float64) * img.scales["out_scale"]
    # the float layer on the same (clipped, int8) input the integer path sees
    xa = torch.from_numpy(((a.astype(np.float64) - z) * s).astype(np.float32))
    yf = (qm.qlayers["a"](xa)).detach().numpy()
    # per-row output scales at each row's calibration maximum: nothing saturates
    # beyond rounding, and every output is its row's float output to within the
    # row's rounding step (and the float32 arithmetic of the trained layer)
    assert (np.abs(yint.astype(int)) <= 127).all()
    step = np.broadcast_to(img.scales["out_scale"], yf.shape)
    assert (np.abs(yi - yf) <= 0.5 * step + 1e-4 * np.abs(yf).max()).all()


def test_bits_and_skipping():
    qm = QuantizedModel(_Net(), SSVQ(k=16, d=4), skip_below=100)
    assert qm.skipped == ["c"] and set(qm.qlayers) == {"a", "b"}
    b = qm.bits()
    assert b["layers"]["c"] == 32.0
    assert b["layers"]["a"] == layer_bits(LayerConfig.parse("ssvq-k16-d4"), 45, 37)["total"] \
        / (45 * 37)
    assert b["weights"] == 37 * 45 + 45 * 13 + 13 * 5


def test_plan_overrides_train_the_configs_a_plan_resolves():
    """A compress.plan plan (the `ssvq compress --config` JSON) as overrides=: each
    layer's spec is the plan's config with the base spec's training options; its
    images carry exactly those configs."""
    base = SSVQ(k=16, d=4, flip_threshold=2.0, seed=3)
    plan = {"global": {"method": "ssvq", "k": 16, "d": 4},
            "layers": {"b": {"k": 8, "d": 8}, "c": "int4"}}
    qm = QuantizedModel(_Net(), base, overrides=plan_overrides(plan, base))
    q = qm.qlayers
    assert q["a"].spec == base
    assert (q["b"].spec.k, q["b"].spec.d, q["b"].spec.flip_threshold, q["b"].spec.seed) \
        == (8, 8, 2.0, 3)
    assert isinstance(q["c"], UniformLinear) and q["c"].spec.method == "int4"
    imgs = qm.export({n: np.ones((2, lin.in_features), np.float32)
                      for n, lin in q.items()})
    assert [im.config.name for im in imgs] == ["ssvq-k16-d4", "ssvq-k8-d8", "int4"]
    with pytest.raises(ConfigError, match=r"layer b \(layers\[\"b\"\]\).*ssvq-k16-d4-m2-c4"):
        QuantizedModel(_Net(), base, overrides=plan_overrides(
            {"layers": {"b": {"method": "additive", "k": 16, "d": 4, "signs": True}}}, base))


@pytest.mark.parametrize("spec", [SSVQ(k=16, d=4), VQ(k=16, d=4), Uniform(8), Uniform(4),
                                  Uniform(2)], ids=lambda s: s.method)
def test_untrained_wrapper_is_the_post_training_image(spec):
    """Before any step, the wrapped layer computes exactly the weights of the
    post-training compressor (compress.quantize.quantize_layer)."""
    net = _Net()
    qm = QuantizedModel(net, spec, layers=["a"])
    ptq = quantize_layer("a", net.a.weight.detach().numpy(), None, np.ones((2, 37), np.float32),
                         spec.layer_config, seed=spec.seed)
    np.testing.assert_allclose(qm.qlayers["a"].weight_q().detach().numpy(), dequantize(ptq),
                               rtol=1e-5, atol=1e-7)
    (img,) = qm.export({"a": np.ones((2, 37), np.float32)})
    assert img.config == ptq.config
    assert (weight_matrix(img) == weight_matrix(ptq)).all()


def test_spec_dict_round_trip_and_errors():
    spec = SSVQ(k=16, d=4, codes="reassign", flip_threshold=2.0, seed=3)
    assert QuantSpec.from_dict(spec.to_dict()) == spec
    assert spec.layer_config == LayerConfig("ssvq", k=16, d=4, m=1)
    assert Uniform(5).layer_config == LayerConfig("int", bits=5)
    with pytest.raises(ConfigError, match="kk"):
        QuantSpec.from_dict(dict(spec.to_dict(), kk=1))
    with pytest.raises(ConfigError, match="int1 is post-training only"):
        Uniform(1)
    with pytest.raises(ConfigError, match="k"):
        SSVQ(k=3)


@pytest.mark.slow
def test_trained_ssvq_images_pass_the_rtl_simulation(tmp_path):
    """A trained SSVQ model (one layer per shape, plus an int8 layer) exported
    and run through the accelerator RTL in cocotb (Icarus): bit-exact, with
    the golden timing. (Marked slow: it needs the simulator side, sim/ and hw/,
    which is being ported to v2 separately.)"""
    from pathlib import Path

    from sim.runner import simulate_images
    qm = QuantizedModel(_Net(), SSVQ(k=256, d=8), overrides={"c": Uniform(8)})
    x, y = torch.randn(64, 37), torch.randint(0, 5, (64,))
    fit(qm, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), [(x, y)], steps=20,
        lr=0.01, progress=None)
    assert qm.sign_stats()["frozen_fraction"] == 1.0
    images = qm.write_images(tmp_path / "img", qm.capture(lambda m: m(x)))
    build_root = Path(__file__).resolve().parents[1] / "build" / "sim"
    summary = simulate_images(images, None, "icarus", out_dir=tmp_path / "out",
                              build_root=build_root, progress=None, seed=3)
    assert summary["all_passed"], summary["layers"]
    modes = {l["name"]: l["mode"] for l in summary["layers"]}
    assert modes == {"a": "ssvq", "b": "ssvq", "c": "int"}
    for l in summary["layers"]:
        assert l["bit_exact"] and l["out_cycles_match"] and l["counters_match"]
