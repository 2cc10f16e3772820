"""compress.intlinear: the vectorised integer forward against ssvq.reference
(the arithmetic the RTL is held to) bit for bit, against a per-token Python
loop of the documented compute rule, and inside a model."""
import numpy as np
import pytest
import torch
from torch import nn

from compress.intlinear import IntegerLinear, exact_dtype, integer_model
from compress.calib import act_params
from compress.quantize import dequantize, float_outputs, quantize_act, quantize_layer
from compress.run import low_rank_pair
from ssvq.config import LayerConfig
from ssvq.image import LayerImage
from ssvq.reference import outputs, weight_matrix

CONFIGS = ["int8", "int4", "int3", "int1", "vq-k16-d4", "ssvq-k16-d8", "ssvq-k8-d4-c2",
           "vq-k16-d8-m2-c4", "ssvq-k16-d8-m2-c4"]


def _layer(config, rows=24, cols=70, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    b = rng.standard_normal(rows).astype(np.float32) if bias else None
    x = rng.standard_normal((200, cols)).astype(np.float32)
    return quantize_layer("fc", w, b, x, LayerConfig.parse(config), seed=seed)


def _inputs(cols, seed=1):
    """Calibration-like inputs plus large ones (input and output saturation)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((300, cols)).astype(np.float32)
    x[:40] *= 25.0
    return x


def _python_outputs(img, a):
    """The compute rule of docs/FORMAT.md with Python integers, one token at a
    time: floor(((sum_c a_c w_rc + bias) * mult + 2**(shift-1)) / 2**shift),
    saturated to int8."""
    w = weight_matrix(img).tolist()
    out = []
    for r in range(img.rows):
        acc = sum(int(ai) * wi for ai, wi in zip(a, w[r])) + int(img.bias[r])
        sh = int(img.shift[r])
        y = (acc * int(img.mult[r]) + (1 << (sh - 1))) // (1 << sh)
        out.append(max(-128, min(127, y)))
    return out


@pytest.mark.parametrize("config", CONFIGS)
def test_integer_forward_equals_the_reference_bit_for_bit(config):
    img = _layer(config)
    x = _inputs(img.cols)
    lin = IntegerLinear(img)
    a_t = lin.quantize(torch.from_numpy(x))
    a = quantize_act(x, *act_params(img.scales))
    assert (a_t.numpy() == a).all()
    y = lin.integer(a_t).numpy()
    ref = outputs(img, a)
    assert y.dtype == np.int8 and (y == ref).all()
    assert (ref == 127).any() or (ref == -128).any()        # saturation is exercised
    for t in (0, 5, 17):                                     # calibration-scale and large
        assert list(y[t]) == _python_outputs(img, a[t])
    f = lin(torch.from_numpy(x))
    assert f.dtype == torch.float32
    assert (f.numpy() == float_outputs(img, x).astype(np.float32)).all()
    # leading dimensions (batch, tokens, cols) as a transformer calls it
    f3 = lin(torch.from_numpy(x[:60].reshape(3, 20, -1)))
    assert (f3.reshape(60, -1) == f[:60]).all()


@pytest.mark.parametrize("config", ["int8", "ssvq-k16-d8", "vq-k16-d4-m2-c4"])
def test_a_zero_point_is_folded_into_the_bias(config):
    """One-sided calibration inputs (as after a ReLU or GELU) get a zero point
    far from 0: the integer forward still equals the reference bit for bit, and
    its outputs are the float layer on the dequantized inputs (a - act_zero) *
    act_scale, to within half of each row's output step (and the 16-bit mult's
    relative error, at most 2**-16): the bias undoes the zero point exactly."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((24, 70)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    x = np.abs(rng.standard_normal((200, 70))).astype(np.float32) - 0.1
    img = quantize_layer("fc", w, b, x, LayerConfig.parse(config))
    s, z = act_params(img.scales)
    assert z < -100
    lin = IntegerLinear(img)
    a = quantize_act(x, s, z)
    assert (lin.quantize(torch.from_numpy(x)).numpy() == a).all()
    y = lin.integer(torch.from_numpy(a.astype(np.float32))).numpy()
    assert (y == outputs(img, a)).all()
    assert list(y[7]) == _python_outputs(img, a[7])
    unit = img.scales["row_scale"] * img.scales["cb_scale"] * s
    real = (((a.astype(np.float64) - z) * s) @ dequantize(img).astype(np.float64).T
            + np.rint(b / unit) * unit)
    got = lin(torch.from_numpy(x)).numpy().astype(np.float64)
    step = np.broadcast_to(img.scales["out_scale"], real.shape)
    assert (np.abs(got - real) <= 0.5 * step + np.abs(real) * 2.0 ** -15).all()


def _extreme_int8(cols):
    """Every weight 127, every activation -128: the accumulator reaches
    -128 * 127 * cols, beyond float32's exact integers (2**24) for cols >= 1033."""
    rows = 3
    img = LayerImage("big", LayerConfig.parse("int8"), rows, cols,
                     bias=np.array([0, 5, -(1 << 31)], np.int32),
                     mult=np.array([1 << 15, 40000, 65535], np.uint16),
                     shift=np.array([30, 63, 1], np.uint8), act=np.zeros(cols, np.int8),
                     weights=np.full((rows, cols), 127, np.int8))
    img.scales = {"act_scale": 1.0, "out_scale": 1.0}
    return img


def test_the_accumulation_dtype_is_exact_beyond_float32():
    small, big = _extreme_int8(1000), _extreme_int8(1100)
    assert exact_dtype(weight_matrix(small)) == torch.float32     # 128*127*1000 < 2**24
    assert exact_dtype(weight_matrix(big)) == torch.float64
    rng = np.random.default_rng(3)
    for img in (small, big):
        a = np.full((4, img.cols), -128, np.int8)
        a[1:] = rng.integers(-128, 128, (3, img.cols))
        a[2, ::7] = 127
        y = IntegerLinear(img).integer(torch.from_numpy(a)).numpy()
        assert (y == outputs(img, a)).all()
        assert list(y[2]) == _python_outputs(img, a[2])


def test_rounding_halves_and_negative_floors():
    """mult 1 with shift 1 and 2: accumulators land on exact halves and quarters,
    positive and negative, where round-half-up on a floor shift is easy to get
    wrong (floor(-2.5 + 0.5) = -2, not -3)."""
    cols, rows = 16, 4
    img = LayerImage("halves", LayerConfig.parse("int4"), rows, cols,
                     bias=np.array([0, 1, -1, 0], np.int32),
                     mult=np.array([1, 1, 1, 3], np.uint16),
                     shift=np.array([1, 2, 1, 2], np.uint8), act=np.zeros(cols, np.int8),
                     weights=np.tile(np.array([1, -1, 2, -3, 1, 0, -2, 1], np.int8), (rows, 2)))
    img.scales = {"act_scale": 1.0, "out_scale": 1.0}
    a = np.random.default_rng(5).integers(-12, 13, (400, cols)).astype(np.int8)
    y = IntegerLinear(img).integer(torch.from_numpy(a)).numpy()
    ref = outputs(img, a)
    assert (y == ref).all()
    acc = a.astype(np.int64) @ img.weights.astype(np.int64).T
    assert ((acc[:, 0] % 2 == 1) & (acc[:, 0] < 0)).any()        # negative halves occur
    assert (np.abs(ref) < 127).all()                              # none of it saturated
    for t in range(0, 400, 37):
        assert list(y[t]) == _python_outputs(img, a[t])


def test_a_model_runs_every_replaced_layer_on_the_integer_path():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                          nn.Linear(16, 5))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((150, 40)).astype(np.float32)
    h, imgs = x, []
    for i, config in zip((0, 2, 4), ("int8", "ssvq-k16-d8", "vq-k16-d4")):
        lin = model[i]
        img = quantize_layer(str(i), lin.weight.detach().numpy(), lin.bias.detach().numpy(),
                             h, LayerConfig.parse(config))
        imgs.append(img)
        with torch.no_grad():
            h = model[i + 1](lin(torch.from_numpy(h))).numpy() if i < 4 else h
    im = integer_model(model, imgs)
    assert all(isinstance(im[i], IntegerLinear) for i in (0, 2, 4))
    assert isinstance(model[0], nn.Linear)                  # the original is left alone
    with torch.no_grad():
        got = im(torch.from_numpy(x)).numpy()
    # the same chain in numpy: each layer's output cast to the model's float32
    h = x
    for j, img in enumerate(imgs):
        h = float_outputs(img, h).astype(np.float32)
        if j < 2:
            h = np.maximum(h, 0)
    assert (got == h).all()


def test_a_low_rank_pair_hands_int8_outputs_over_directly():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((30, 48)).astype(np.float32)
    b = rng.standard_normal(30).astype(np.float32)
    x = rng.standard_normal((120, 48)).astype(np.float32)
    pair, _ = low_rank_pair("fc", w, b, x, LayerConfig.parse("int8"), 8)
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(48, 30))
    im = integer_model(model, pair)
    with torch.no_grad():
        got = im.fc(torch.from_numpy(x)).numpy()
    bimg, aimg = pair
    y = outputs(aimg, outputs(bimg, quantize_act(x, *act_params(bimg.scales))))
    assert (got == (y.astype(np.float64) * aimg.scales["out_scale"]).astype(np.float32)).all()


def test_a_source_with_per_row_output_scales_is_refused():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 16)).astype(np.float32)
    b = quantize_layer("b", rng.standard_normal((8, 16)).astype(np.float32), None, x,
                       LayerConfig.parse("int8"))
    with pytest.raises(ValueError, match="one output scale per row"):
        quantize_layer("a", rng.standard_normal((4, 8)).astype(np.float32), None,
                       float_outputs(b, x), LayerConfig.parse("int8"), source=b)


def test_a_missing_or_misshapen_module_is_refused():
    img = _layer("int8", rows=24, cols=70)
    with pytest.raises(ValueError, match="no module 'fc'"):
        integer_model(nn.Sequential(nn.Linear(70, 24)), [img])
    m = nn.Sequential()
    m.add_module("fc", nn.Linear(71, 24))
    with pytest.raises(ValueError, match="71 -> 24"):
        integer_model(m, [img])


@pytest.mark.slow
def test_minilm_on_the_integer_path_equals_the_reference_chain():
    """All 36 encoder layers of MiniLM on the integer path give the same sentence
    embeddings, bit for bit, as the model with every layer computed by
    compress.quantize.float_outputs (numpy, ssvq.reference.outputs) instead."""
    from compress.train import SSVQ, QuantizedModel, Uniform
    from ssvq.app.quality.corpus import build_corpus
    from ssvq.app.quality.minilm_task import MiniLMTask

    class Reference(nn.Module):
        def __init__(self, img):
            super().__init__()
            self.img, self.in_features, self.out_features = img, img.cols, img.rows

        def forward(self, x):
            y = float_outputs(self.img, x.reshape(-1, x.shape[-1]).numpy())
            return torch.from_numpy(y.astype(np.float32)).reshape(*x.shape[:-1], -1)

    corpus = build_corpus()
    task = MiniLMTask(loss="embedding")
    sentences = corpus["test_general"][:8]
    for spec in (Uniform(8), SSVQ(k=256, d=8)):
        qm = QuantizedModel(task.bert, spec)
        imgs = qm.export(qm.capture(lambda m: task.embed(m, corpus["train"][:64])))
        got = task.embed(integer_model(qm.to_float(), imgs).eval(), sentences)
        ref = qm.to_float().eval()
        for im in imgs:
            parent, _, leaf = im.name.rpartition(".")
            setattr(ref.get_submodule(parent), leaf, Reference(im))
        assert (got == task.embed(ref, sentences)).all()
