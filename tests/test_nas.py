"""nas (compress.nas, ssvq.app.quality.nas): the search converges to the known
answer on a toy cost under a tight and a loose budget; the expected-cycles
hinge and its alpha gradient against a hand computation; the cost table of a
real layer against sim.golden.timing; export (images decode to what the model
evaluates); the plan JSON resolves (compress.plan) to the choice."""
import fnmatch
import json

import numpy as np
import pytest
import torch
from torch import nn

from compress.nas import NAS, NASModel, _pattern
from compress.plan import CompressionPlan
from compress.quantize import dequantize
from compress.train import fit
from ssvq.config import LayerConfig
from ssvq.errors import ConfigError
from ssvq.reference import weight_matrix

torch.set_num_threads(1)


def _toy():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))
    x = torch.randn(256, 32)
    return m, x, m(x).detach()


def _search(m, x, y, spec, steps=300):
    nm = NASModel(m, spec)
    fit(nm, lambda q, b: ((q(b) - y) ** 2).mean() / (y ** 2).mean(), lambda i: x,
        steps=steps, lr=1e-3, lr_groups={"arch_lr": 0.05}, progress=None)
    return nm


@pytest.mark.parametrize("budget,want", [
    # int8+int8 = 200, int2+int8 = 110, int8+int2 = 190, int2+int2 = 100 cycles: at 120
    # only the first layer going int2 fits with one int8 layer left (the task loss
    # prefers int8 everywhere); at 1000 everything fits and int8 wins on the loss
    (120.0, {"0": "int2", "2": "int8"}),
    (1000.0, {"0": "int8", "2": "int8"}),
])
def test_toy_search_converges_to_the_known_choice(budget, want):
    m, x, y = _toy()
    spec = NAS(candidates=("int8", "int2"), costs={"0": [100, 10], "2": [100, 90]},
               budget=budget, penalty=1.0, warmup=0.1)
    nm = _search(m, x, y, spec)
    # the raw argmax (no repair) is the answer, with a clear margin
    assert nm.choose(repair=False) == want
    assert nm.feasible
    for name, c in want.items():
        assert nm.alphas()[name][c] > 0.75
    assert float(nm.expected_cycles().detach()) <= budget + 2.0


def test_expected_cycles_and_gradient_by_hand():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2))
    cyc = {"0": [300.0, 120.0, 70.0], "1": [50.0, 30.0, 10.0]}
    alpha = {"0": [0.3, -1.0, 0.5], "1": [2.0, 0.0, -0.5]}
    lam = 2.5
    for budget, over in ((200.0, True), (400.0, False)):
        nm = NASModel(m, NAS(candidates=("int8", "int4", "int2"), costs=cyc, budget=budget,
                             penalty=lam))
        with torch.no_grad():
            for n, q in nm.nas_layers.items():
                q.alpha.copy_(torch.tensor(alpha[n]))
        e_layer, p = {}, {}
        for n in cyc:
            a = np.array(alpha[n])
            p[n] = np.exp(a) / np.exp(a).sum()
            e_layer[n] = float((p[n] * np.array(cyc[n])).sum())
        e = sum(e_layer.values())
        assert over == (e > budget)
        np.testing.assert_allclose(float(nm.expected_cycles().detach()), e, rtol=1e-6)  # float32 alpha
        pen = nm.size_penalty()
        np.testing.assert_allclose(float(pen.detach()), lam * max(0.0, e / budget - 1.0), rtol=1e-6)
        pen.backward()
        for n, q in nm.nas_layers.items():
            # d/d alpha_i of lam/B * sum_j p_j c_j = lam/B * p_i (c_i - E_layer)
            want = (lam / budget * p[n] * (np.array(cyc[n]) - e_layer[n]) if over
                    else np.zeros(3))
            np.testing.assert_allclose(q.alpha.grad.numpy(), want, rtol=1e-5, atol=1e-9)
        assert (budget == 200.0) == (float(pen.detach()) > 0)


def test_cost_table_of_a_real_layer_is_golden_timing():
    from sim import golden
    from ssvq.app.quality.nas import cost_table, nas_spec, search_build
    cands = ("int8", "int4", "int2", "vq-k64-d4", "ssvq-k8-d4")
    shapes = [("fc1", 128, 64), ("fc3", 10, 64)]
    cfg = search_build(shapes, cands)
    # the build runs every candidate on every layer, and the int8 reference
    assert set(cfg.int_bits) == {8, 4, 2} and cfg.kmax == 64 and set(cfg.d_set) == {4}
    lcs = [LayerConfig("int", bits=8), LayerConfig("int", bits=4), LayerConfig("int", bits=2),
           LayerConfig("vq", k=64, d=4, m=1, coef_bits=0),
           LayerConfig("ssvq", k=8, d=4, m=1, coef_bits=0)]
    table = cost_table(cfg, shapes, cands)
    for name, rows, cols in shapes:
        want = [golden.timing(cfg, lc, rows, cols).counters["cycles"] for lc in lcs]
        assert table[name] == want
    assert len(set(table["fc1"])) == len(cands)          # the order of candidates matters
    # rows = out_features: the transposed 64 x 128 layer costs differently
    assert golden.timing(cfg, lcs[0], 64, 128).counters["cycles"] != table["fc1"][0]
    # digits: budget = fraction x sum of the layers' int8 cycles on the search build
    from compress.models import load_model
    base = load_model("digits").module
    spec, build, ref = nas_spec(base, 0.5)
    i8 = LayerConfig("int", bits=8)
    want = sum(golden.timing(build, i8, m.out_features, m.in_features).counters["cycles"]
               for m in (base.fc1, base.fc2, base.fc3))
    assert ref == want and spec.budget == pytest.approx(0.5 * want)
    assert spec.costs["fc2"][0] == golden.timing(build, i8, 64, 128).counters["cycles"]


def test_export_images_decode_to_the_evaluated_weights(tmp_path):
    from ssvq.app.quality.checks import check_images
    from ssvq.image import read_images
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(36, 24), nn.ReLU(), nn.Linear(24, 12), nn.ReLU(),
                      nn.Linear(12, 4))
    x = torch.randn(64, 36)
    y = m(x).detach()
    cands = ("int4", "vq-k8-d4", "ssvq-k4-d4")
    costs = {"0": [90, 60, 50], "2": [60, 40, 35], "4": [20, 15, 12]}
    nm = _search(m, x, y, NAS(candidates=cands, costs=costs, budget=1e6, warmup=0.2), steps=40)
    # force one layer onto each candidate, so every image kind is checked
    with torch.no_grad():
        for i, q in enumerate(nm.nas_layers.values()):
            q.alpha.copy_(torch.tensor([5.0 if j == i else 0.0 for j in range(3)]))
    assert nm.choose() == {"0": "int4", "2": "vq-k8-d4", "4": "ssvq-k4-d4"}
    nm.eval()
    imgs = {im.name: im for im in nm.export(lambda mm: mm(x))}
    assert {n: im.config.name for n, im in imgs.items()} == nm.choice()
    f = nm.to_float()
    for n, q in nm.nas_layers.items():
        w = dequantize(imgs[n])
        rs = np.asarray(imgs[n].scales["row_scale"], np.float64)
        np.testing.assert_array_equal(
            w, (rs[:, None] * float(imgs[n].scales["cb_scale"])
                * weight_matrix(imgs[n])).astype(np.float32))
        np.testing.assert_allclose(q.weight_q().detach().numpy(), w, rtol=1e-5, atol=1e-6)
        assert (f.get_submodule(n).weight.detach().numpy() == w).all()
    with torch.no_grad():
        np.testing.assert_allclose(nm(x).numpy(), f(x).numpy(), rtol=1e-4, atol=1e-5)
    assert check_images(list(imgs.values()))
    # the finalized QuantizedModel (the chosen, trained candidates) exports the same
    qm = nm.finalize()
    with torch.no_grad():
        np.testing.assert_allclose(qm(x).numpy(), nm(x).numpy(), rtol=1e-6, atol=1e-6)
    out = qm.write_images(tmp_path / "img", qm.capture(lambda mm: mm(x)))
    iset = read_images(out)
    back = {n: iset.layer(n) for n in iset.layer_names}
    assert set(back) == set(imgs)
    for n in imgs:
        assert back[n].config == imgs[n].config
        assert (weight_matrix(back[n]) == weight_matrix(imgs[n])).all()
    # fine-tuning moves only the chosen layers, and they stay exportable
    fit(qm, lambda q, b: ((q(b) - y) ** 2).mean(), lambda i: x, steps=5, progress=None)
    assert check_images(qm.export(lambda mm: mm(x)))


def test_plan_json_reproduces_the_choice(tmp_path):
    torch.manual_seed(3)
    # "2" is 8 x 16 = 128 weights: a vq-k64-d4 codebook (256 values) would fall to int8
    # under the plan's default small-layer rule
    m = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 8))
    cands = ("int8", "int3", "vq-k16-d4", "vq-k64-d4")
    nm = NASModel(m, NAS(candidates=cands, costs={"0": [4, 3, 2, 1], "2": [4, 3, 2, 1]},
                         budget=100))
    with torch.no_grad():
        nm.nas_layers["0"].alpha.copy_(torch.tensor([0.0, 0.0, 3.0, 0.0]))
        nm.nas_layers["2"].alpha.copy_(torch.tensor([0.0, 0.0, 0.0, 3.0]))
    choice = nm.choose()
    assert choice == {"0": "vq-k16-d4", "2": "vq-k64-d4"}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(nm.plan().to_dict()))
    plan = CompressionPlan.from_file(path)
    shapes = {"0": (16, 64), "2": (8, 16)}
    for n, c in choice.items():
        assert plan.resolve(n, *shapes[n]) == LayerConfig.parse(c)
    d = json.loads(path.read_text())
    d["small_layers"] = {}
    assert CompressionPlan.from_dict(d).resolve("2", 8, 16).name == "int8"
    # a layer name with fnmatch characters gets a pattern matching only itself
    assert fnmatch.fnmatchcase("h[1]*x", _pattern("h[1]*x"))
    assert not fnmatch.fnmatchcase("h1yx", _pattern("h[1]*x"))


def test_digits_plan_through_compress_layers(tmp_path):
    from compress.models import load_model
    from compress.run import compress_layers
    lm = load_model("digits")
    cands = ("int8", "int4", "vq-k16-d4")
    nm = NASModel(lm.module, NAS(candidates=cands, costs={n: [3, 2, 1] for n in
                                                          ("fc1", "fc2", "fc3")}, budget=5))
    with torch.no_grad():
        for n, i in (("fc1", 2), ("fc2", 1), ("fc3", 0)):
            nm.nas_layers[n].alpha.copy_(torch.eye(3)[i] * 4)
    # argmax is 1 + 2 + 3 = 6 cycles > 5: the repair moves the most probable cheaper one
    assert nm.choose(repair=False) == {"fc1": "vq-k16-d4", "fc2": "int4", "fc3": "int8"}
    choice = nm.choose()
    assert nm.feasible and nm.chosen_cycles() <= 5 and choice["fc1"] == "vq-k16-d4"
    assert nm.argmax_cycles == 6 and len(nm.repairs) == 1
    c = compress_layers(lm, nm.plan().to_dict())
    assert {im.name: im.config.name for im in c.images} == choice


def test_spec_errors():
    with pytest.raises(ConfigError, match="budget"):
        NAS(candidates=("int8",), costs={}, budget=0)
    with pytest.raises(ConfigError, match="one per candidate"):
        NAS(candidates=("int8", "int4"), costs={"a": [1]}, budget=1)
    with pytest.raises(ConfigError, match="additive"):
        NAS(candidates=("vq-k16-d8-m2-c4",), budget=1)
    with pytest.raises(ConfigError, match="cost table"):
        NASModel(nn.Sequential(nn.Linear(4, 4)), NAS(candidates=("int8",), costs={"x": [1]},
                                                     budget=1))
    s = NAS(candidates=("int8", "int4"), costs={"a": [2, 1]}, budget=1.5)
    assert NAS.from_dict(json.loads(json.dumps(s.to_dict()))) == s
