"""Per-layer configuration search by differentiable architecture search (method
"nas", ProxylessNAS style, arXiv 1812.00332).

Every quantized nn.Linear chooses one of `candidates` (layer-config names the
QAT layers of compress.train train: int8, int2..int6, vq-k<K>-d<D>,
ssvq-k<K>-d<D>). Per layer a vector of architecture parameters alpha (one per
candidate, starting at 0: uniform) and one QAT layer per candidate, all
initialised from the float weights (compress.train's post-training
initialisation).

Path sampling (ProxylessNAS's binary gates). Each training step a layer draws
ONE candidate j ~ softmax(alpha) and its weight is that candidate's quantized
weight: the forward value is a single quantized weight per layer,

    W = sum_i g_i W_i,   g = onehot(j) + p - stop_gradient(p),  p = softmax(alpha),

so g's value is the one-hot gate and dL/dalpha_i = sum_k dL/dg_k dp_k/dalpha_i,
ProxylessNAS's BinaryConnect-style estimate. The gate gradient dL/dg_k =
<dL/dW, W_k> needs no forward pass through the other paths: a linear layer's
output is linear in W, so every candidate's (weight-sized) quantized weight is
enough; only the sampled candidate's own parameters receive a gradient (the
others have gate value 0). Chosen over Gumbel-softmax straight-through because
it is ProxylessNAS's own estimator and has no temperature to schedule (hard
Gumbel-ST at any temperature samples the same distribution; it only rescales
the gradient). During the first `warmup` fraction of training (progress from
QuantizedModel.step) paths are drawn uniformly and alpha gets no gradient, so
the candidates' weights adapt before they are compared (ProxylessNAS warms up
the weights first too).

Cost. `costs` is the cost table, layer name -> cycles of each candidate on the
accelerator build the images run on; this package never computes it (compress/
does not import sim/): the orchestration (ssvq.app.quality.nas) takes it from
sim.golden.timing. The model-level term NASModel.size_penalty adds to fit()'s
loss is

    penalty * max(0, E / budget - 1),   E = sum_l sum_i softmax(alpha_l)_i cycles[l][i],

the expected cycles of the whole model against the budget (cycles). It is a
hinge on the model total, which does not split into per-layer terms, so it is
NASModel's (QuantizedModel.size_penalty overridden), not the layers'.

Eval mode (and export, to_float, bits) is the layer's chosen candidate:
argmax alpha, or what NASModel.choose() fixed. After the search,
NASModel.choose(): argmax alpha per layer; if that plan is over budget (the
hinge only holds the EXPECTED cycles), a repair step moves, one at a time, the
layer whose cheaper candidate has the highest probability among all cheaper
candidates of all layers, until the plan fits (or nothing cheaper is left:
`feasible` false). NASModel.finalize() then gives a plain QuantizedModel of the
chosen, already trained candidate layers for the brief fine-tuning (sign
freezing of SSVQ candidates runs there: during the search SSVQ signs train by
their STE without freezing). NASModel.plan() is the per-layer plan
(compress.plan format, `ssvq compress --config`) that resolves to the choice.
"""
from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from compress.plan import CompressionPlan, spec_of_config
from compress.train import UNIFORM, QuantizedModel, QuantLinear, QuantSpec, SpecDict
from ssvq.config import LayerConfig
from ssvq.errors import ConfigError

CANDIDATES = ("int8", "int4", "int3", "int2", "vq-k64-d4", "vq-k16-d4", "ssvq-k8-d4")


def candidate_spec(name: str, seed: int = 0) -> QuantSpec:
    """The QAT spec (compress.train) that trains and exports layer config `name`."""
    lc = LayerConfig.parse(name, "nas candidate")
    if lc.mode == "int":
        if f"int{lc.bits}" not in UNIFORM:
            raise ConfigError(f"nas candidate {name!r}: int{lc.bits} has no QAT layer "
                              f"(trainable widths: {list(UNIFORM)})")
        return QuantSpec(f"int{lc.bits}", seed=seed)
    if lc.m != 1 or lc.coef_bits:
        raise ConfigError(f"nas candidate {name!r}: additive configurations have no QAT layer "
                          f"in compress.train (expected int-b, vq-k<K>-d<D> or ssvq-k<K>-d<D>)")
    return QuantSpec(lc.mode, k=lc.k, d=lc.d, seed=seed)


@dataclass(frozen=True)
class NAS(SpecDict):
    """candidates: layer-config names; costs: {layer name: [cycles per candidate]}
    (the cost table, from the orchestration); budget: cycles of the whole model;
    penalty: lambda of the hinge; warmup: fraction of the search with uniform paths
    and no alpha gradient; seed: path sampling and the candidates' initialisation."""
    method: ClassVar[str] = "nas"
    candidates: tuple = CANDIDATES
    costs: dict = field(default_factory=dict)
    budget: float = 0.0
    penalty: float = 1.0
    warmup: float = 0.2
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "candidates", tuple(self.candidates))
        object.__setattr__(self, "costs", {str(n): [float(c) for c in v]
                                           for n, v in dict(self.costs).items()})
        if len(self.candidates) < 1 or len(set(self.candidates)) != len(self.candidates):
            raise ConfigError(f"NAS: candidates: expected distinct layer-config names, found "
                              f"{list(self.candidates)}")
        for c in self.candidates:
            candidate_spec(c, self.seed)
        for n, v in self.costs.items():
            if len(v) != len(self.candidates):
                raise ConfigError(f"NAS: costs[{n!r}]: expected {len(self.candidates)} cycle "
                                  f"counts (one per candidate), found {len(v)}")
        if not self.budget > 0:
            raise ConfigError(f"NAS: budget: expected a positive number of cycles, found "
                              f"{self.budget}")
        if self.penalty < 0 or not 0.0 <= self.warmup < 1.0:
            raise ConfigError("NAS: need penalty >= 0 and 0 <= warmup < 1")

    def layer_class(self) -> type:
        return NASLinear

    @property
    def layer_config(self) -> LayerConfig:
        return LayerConfig.parse(self.candidates[0])


class NASLinear(QuantLinear):
    method = "nas"

    def __init__(self, linear: nn.Linear, spec: NAS, name: str):
        super().__init__(linear, spec, name)
        if name not in spec.costs:
            raise ConfigError(f"NAS: layer {name!r} has no row in the cost table (costs has "
                              f"{list(spec.costs)[:8]}); the orchestration computes it")
        self.cands = nn.ModuleList()
        for c in spec.candidates:
            q = candidate_spec(c, spec.seed).layer_class()(linear, candidate_spec(c, spec.seed),
                                                           name)
            q.bias = None                     # the layer's bias is shared (self.bias)
            self.cands.append(q)
        self.alpha = nn.Parameter(torch.zeros(len(spec.candidates)))
        self.register_buffer("cycles", torch.tensor(spec.costs[name], dtype=torch.float64))
        self.gen = torch.Generator().manual_seed(spec.seed * 1000003
                                                 + zlib.crc32(name.encode()))
        self.progress = 0.0
        self.choice: int | None = None        # fixed by NASModel.choose(); None = argmax
        self.samples = torch.zeros(len(spec.candidates), dtype=torch.int64)

    # ---- architecture
    def probs(self) -> torch.Tensor:
        return torch.softmax(self.alpha, 0)

    def expected_cycles(self) -> torch.Tensor:
        return (self.probs().double() * self.cycles).sum()

    def chosen(self) -> int:
        return int(self.alpha.detach().argmax()) if self.choice is None else self.choice

    def chosen_candidate(self) -> QuantLinear:
        return self.cands[self.chosen()]

    # ---- QuantLinear
    def weight_q(self) -> torch.Tensor:
        if not self.training:
            return self.chosen_candidate().weight_q()
        n = len(self.cands)
        if self.progress < self.spec.warmup:
            j = int(torch.randint(0, n, (1,), generator=self.gen))
            self.samples[j] += 1
            return self.cands[j].weight_q()
        p = self.probs()
        j = int(torch.multinomial(p.detach(), 1, generator=self.gen))
        self.samples[j] += 1
        gate = torch.nn.functional.one_hot(torch.tensor(j), n).to(p.dtype) + p - p.detach()
        return sum(gate[i] * self.cands[i].weight_q() for i in range(n))

    def groups(self):
        g: dict[str, list] = {}
        for q in self.cands:
            for k, ps in q.groups().items():
                g.setdefault(k, []).extend(ps)
        g["arch"] = [self.alpha]
        return g

    def after_step(self, step: int, progress: float | None) -> dict:
        self.progress = 0.0 if progress is None else progress
        rec = {}
        for q in self.cands:
            for k, v in q.after_step(step, progress).items():
                rec[k] = rec.get(k, 0) + v
        return rec

    def export_config(self) -> LayerConfig:
        return self.chosen_candidate().export_config()

    def image_fields(self):
        return self.chosen_candidate().image_fields()

    def extra_repr(self):
        return (f"{self.in_features} -> {self.out_features}, nas over "
                f"{list(self.spec.candidates)}")


def expected_cycles_penalty(expected: torch.Tensor, budget: float, penalty: float) -> torch.Tensor:
    """penalty * max(0, expected / budget - 1)."""
    return penalty * torch.clamp(expected / budget - 1.0, min=0.0)


def _pattern(name: str) -> str:
    """An fnmatch pattern matching exactly `name`."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


class NASModel(QuantizedModel):
    """QuantizedModel whose layers are NASLinear (spec: NAS, with the cost table
    and budget); its size_penalty is the model-level expected-cycles hinge."""

    def __init__(self, model: nn.Module, spec: NAS, **kw):
        if not isinstance(spec, NAS):
            raise ConfigError(f"NASModel: expected a NAS spec, found {type(spec).__name__}")
        super().__init__(model, spec, **kw)
        self.spec = spec
        self.feasible: bool | None = None
        self.argmax_choice, self.argmax_cycles, self.repairs = None, None, []

    @property
    def nas_layers(self) -> dict[str, NASLinear]:
        return {n: q for n, q in self._q.items() if isinstance(q, NASLinear)}

    def expected_cycles(self) -> torch.Tensor:
        return sum(q.expected_cycles() for q in self.nas_layers.values())

    def size_penalty(self) -> torch.Tensor | None:
        if not self.nas_layers or self.spec.penalty == 0:
            return None
        return expected_cycles_penalty(self.expected_cycles(), self.spec.budget,
                                       self.spec.penalty).float()

    def chosen_cycles(self) -> float:
        return float(sum(q.cycles[q.chosen()] for q in self.nas_layers.values()))

    @torch.no_grad()
    def choose(self, repair: bool = True) -> dict[str, str]:
        """Fixes each layer's candidate: argmax alpha, then (repair) the cheapest-
        regret moves to cheaper candidates until the plan fits the budget (module
        docstring). Returns {layer: candidate name}."""
        layers = self.nas_layers
        for q in layers.values():
            q.choice = int(q.alpha.argmax())
        self.argmax_choice, self.argmax_cycles = self.choice(), self.chosen_cycles()
        self.repairs = []                  # [(layer, from, to)] moves of the repair step
        if repair:
            while self.chosen_cycles() > self.spec.budget:
                best = None
                for n, q in layers.items():
                    p = q.probs()
                    cur = q.cycles[q.choice]
                    for i in range(len(q.cands)):
                        if q.cycles[i] < cur and (best is None or p[i] > best[0]):
                            best = (float(p[i]), q, i)
                if best is None:
                    break
                self.repairs.append((best[1].name, self.spec.candidates[best[1].choice],
                                     self.spec.candidates[best[2]]))
                best[1].choice = best[2]
        self.feasible = self.chosen_cycles() <= self.spec.budget
        return self.choice()

    def choice(self) -> dict[str, str]:
        return {n: self.spec.candidates[q.chosen()] for n, q in self.nas_layers.items()}

    def alphas(self) -> dict[str, dict[str, float]]:
        return {n: dict(zip(self.spec.candidates, map(float, q.probs().detach())))
                for n, q in self.nas_layers.items()}

    def plan(self) -> CompressionPlan:
        """The compress.plan plan that resolves every searched layer to its choice
        (one exact-name pattern per layer; the small-layer codebook rule off, so a
        chosen codebook larger than its layer stays as chosen)."""
        layers = {_pattern(n): spec_of_config(LayerConfig.parse(c))
                  for n, c in self.choice().items()}
        return CompressionPlan({}, layers, {"codebook_rule": False})

    def finalize(self) -> QuantizedModel:
        """A QuantizedModel of the chosen candidate layers (trained during the
        search), each with the layer's bias: what the brief fine-tuning trains."""
        m = copy.deepcopy(self.model)
        qm = QuantizedModel(m, inplace=True, layers=[])
        for name, q in self.nas_layers.items():
            layer = m.get_submodule(name)
            c = copy.deepcopy(layer.chosen_candidate())
            c.bias = layer.bias
            parent, _, leaf = name.rpartition(".")
            setattr(m.get_submodule(parent) if parent else m, leaf, c)
            qm._q[name] = c
        qm.skipped = list(self.skipped)
        return qm


def search_meta(nm: NASModel) -> dict:
    """How the search went, for the manifest."""
    return {"method": "nas", "spec": nm.spec.to_dict(), "choice": nm.choice(),
            "chosen_cycles": nm.chosen_cycles(), "expected_cycles": float(nm.expected_cycles().detach()),
            "feasible": nm.feasible, "argmax_choice": nm.argmax_choice,
            "argmax_cycles": nm.argmax_cycles, "repairs": [list(r) for r in nm.repairs],
            "probabilities": nm.alphas(),
            "samples": {n: dict(zip(nm.spec.candidates, map(int, q.samples)))
                        for n, q in nm.nas_layers.items()},
            "plan": nm.plan().to_dict()}
