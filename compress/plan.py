"""Per-layer compression plans (coremltools-palettization style).

A plan is JSON::

    {"global": {"method": "ssvq", "k": 256, "d": 8},
     "layers": {"encoder.layer.0.*": {"d": 4},
                "*.output.dense": {"method": "additive", "k": 16, "d": 8, "m": 2,
                                   "coef_bits": 4, "signs": true},
                "fc3": "int8"},
     "small_layers": {"max_weights": 4096, "method": "int8"}}

Resolution of a layer (name, rows, cols), later steps overriding earlier ones key by key:

1. the defaults (DEFAULTS: ssvq, k 256, d 8; additive: m 2, coef_bits 4, no signs);
2. "global";
3. every "layers" entry whose fnmatch pattern (case-sensitive) matches the name, in
   the order written (so a later pattern overrides an earlier one);
4. "small_layers": when rows*cols <= max_weights (default 0), or -- the default rule,
   "codebook_rule": true -- when the layer resolved so far is a codebook method whose
   codebook (m*k*d 8-bit values) holds more values than the layer has weights (a 2x16
   conv would otherwise cost 517 bits/weight), the layer takes the small-layer spec
   (DEFAULTS < small_layers, method int8 unless given) instead.

A spec is an object of: method (ssvq, vq, additive, int1..int6, int8), k, d (vq, ssvq,
additive), m, coef_bits, signs (additive only; signs true = ssvq-style non-negative
magnitudes with a sign bit per weight), rank (any method; 0 = none: r >= 1 makes the
layer a low-rank pair W ~ A.B, B = r x cols and A = rows x r, each compressed with
the method and run as a chain, A on B's int8 outputs; r must leave fewer weights than
the layer, r*(rows+cols) < rows*cols), or a layer-config name string ("int4",
"vq-k256-d4", "ssvq-k256-d8", "vq-k16-d8-m2-c4"). A key the spec's own method does
not use is an error; keys inherited from an earlier step that the final method does
not use are ignored. Unknown keys are ConfigErrors naming the key path.

Method -> ssvq.config.LayerConfig: intB -> int, bits B; vq / ssvq -> k, d, m 1, no
coefficients; additive -> vq (ssvq with signs) with k, d, m, coef_bits.
"""
from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

from ssvq.config import COEF_BITS_MAX, INT_BITS, M_MAX, LayerConfig
from ssvq.errors import ConfigError
from ssvq.files import load_json

INT_METHODS = tuple(f"int{b}" for b in INT_BITS)
METHODS = ("ssvq", "vq", "additive") + INT_METHODS
SPEC_KEYS = ("method", "k", "d", "m", "coef_bits", "signs", "rank")
SMALL_KEYS = SPEC_KEYS + ("max_weights", "codebook_rule")
TOP_KEYS = ("global", "layers", "small_layers")
DEFAULTS = {"method": "ssvq", "k": 256, "d": 8, "m": 2, "coef_bits": 4, "signs": False,
            "rank": 0}
SMALL_DEFAULTS = {"max_weights": 0, "codebook_rule": True, "method": "int8"}
FLAGS = {"method": "--method", "k": "--k", "d": "--d", "m": "--m", "coef_bits": "--coef-bits"}


def uses(method: str) -> tuple[str, ...]:
    """The spec keys a method reads (besides `method`)."""
    if method in ("ssvq", "vq"):
        return ("k", "d")
    if method == "additive":
        return ("k", "d", "m", "coef_bits", "signs")
    return ()


def _pow2(x) -> bool:
    return type(x) is int and x >= 1 and (x & (x - 1)) == 0


def spec_of_config(lc: LayerConfig) -> dict:
    """The spec dict that resolves to `lc`."""
    if lc.mode == "int":
        return {"method": f"int{lc.bits}"}
    if lc.m == 1 and lc.coef_bits == 0:
        return {"method": lc.mode, "k": lc.k, "d": lc.d}
    return {"method": "additive", "k": lc.k, "d": lc.d, "m": lc.m, "coef_bits": lc.coef_bits,
            "signs": lc.mode == "ssvq"}


def config_of_spec(spec: dict, where: str = "spec") -> LayerConfig:
    """A complete spec (DEFAULTS merged in) -> LayerConfig."""
    s = dict(DEFAULTS, **spec)
    mth = s["method"]
    try:
        if mth in INT_METHODS:
            return LayerConfig("int", bits=int(mth[3:]))
        if mth in ("ssvq", "vq"):
            return LayerConfig(mth, k=s["k"], d=s["d"], m=1, coef_bits=0)
        if mth == "additive":
            return LayerConfig("ssvq" if s["signs"] else "vq", k=s["k"], d=s["d"], m=s["m"],
                               coef_bits=s["coef_bits"])
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    raise ConfigError(f"{where}.method: expected one of {list(METHODS)}, found {mth!r}")


def _check_value(key: str, v, where: str):
    p = f"{where}.{key}"
    if key == "method":
        if not isinstance(v, str) or v not in METHODS:
            raise ConfigError(f"{p}: expected one of {list(METHODS)}, found {v!r}")
    elif key == "signs" or key == "codebook_rule":
        if type(v) is not bool:
            raise ConfigError(f"{p}: expected true or false, found {v!r}")
    elif type(v) is not int:
        raise ConfigError(f"{p}: expected an integer, found {v!r}")
    elif key == "k" and not (_pow2(v) and 2 <= v <= 4096):
        raise ConfigError(f"{p}: expected a power of two in 2..4096, found {v}")
    elif key == "d" and not (_pow2(v) and v <= 64):
        raise ConfigError(f"{p}: expected a power of two in 1..64, found {v}")
    elif key == "m" and not 1 <= v <= M_MAX:
        raise ConfigError(f"{p}: expected 1..{M_MAX}, found {v}")
    elif key == "coef_bits" and not 0 <= v <= COEF_BITS_MAX:
        raise ConfigError(f"{p}: expected 0..{COEF_BITS_MAX}, found {v}")
    elif key == "rank" and v < 0:
        raise ConfigError(f"{p}: expected 0 (no factorization) or a rank >= 1, found {v}")
    elif key == "max_weights" and v < 0:
        raise ConfigError(f"{p}: expected a non-negative integer, found {v}")


def check_spec(spec, where: str, keys: tuple = SPEC_KEYS) -> dict:
    """A validated copy of one spec (a string is a layer-config name)."""
    if isinstance(spec, str):
        try:
            return spec_of_config(LayerConfig.parse(spec, where))
        except ConfigError as e:
            raise ConfigError(f"{where}: expected a method spec object or a layer-config "
                              f"name, found {spec!r} ({e})") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected an object or a layer-config name, found "
                          f"{type(spec).__name__} {spec!r}"[:200])
    for key in spec:
        if key not in keys:
            raise ConfigError(f"{where}.{key}: unknown key; expected one of {list(keys)}")
    for key, v in spec.items():
        _check_value(key, v, where)
    if "method" in spec:
        unused = [k for k in spec if k in SPEC_KEYS and k not in ("method", "rank")
                  and k not in uses(spec["method"])]
        if unused:
            raise ConfigError(f"{where}.{unused[0]}: not used by method {spec['method']!r} "
                              f"(it takes {list(uses(spec['method'])) or 'no other keys'})")
    return dict(spec)


def _quote(pattern: str) -> str:
    return "layers[" + json.dumps(pattern) + "]"


@dataclass(frozen=True)
class Resolved:
    config: LayerConfig
    rules: tuple          # the rules applied, in order: "global", 'layers["p"]', "small_layers"
    spec: dict            # the merged spec (DEFAULTS included) the config came from

    @property
    def rank(self) -> int:
        """0, or the rank r of a low-rank layer W ~ A.B (B: r x cols, A: rows x r), each
        factor compressed with `config` and run as a chain (B, then A on B's outputs)."""
        return self.spec.get("rank", 0)

    @property
    def rule(self) -> str:
        """The last rule that applied ("defaults" if none)."""
        return self.rules[-1] if self.rules else "defaults"

    def to_meta(self) -> dict:
        s = {k: self.spec[k] for k in ("method",) + uses(self.spec["method"])}
        if self.rank:
            s["rank"] = self.rank
        return {"config": self.config.name, "spec": s, "rule": self.rule,
                "rules": list(self.rules)}


@dataclass
class CompressionPlan:
    """global_spec < layers (patterns, in order) < small_layers (module docstring)."""
    global_spec: dict = field(default_factory=dict)
    layers: dict = field(default_factory=dict)
    small_layers: dict = field(default_factory=dict)

    def __post_init__(self):
        self.global_spec = check_spec(self.global_spec, "global")
        if not isinstance(self.layers, dict):
            raise ConfigError(f"layers: expected an object of fnmatch pattern -> spec, found "
                              f"{type(self.layers).__name__}")
        self.layers = {p: check_spec(s, _quote(p)) for p, s in self.layers.items()}
        self.small_layers = check_spec(self.small_layers, "small_layers", SMALL_KEYS)

    # ---- (de)serialisation ----------------------------------------------
    @classmethod
    def from_dict(cls, d: dict, where: str | None = None) -> "CompressionPlan":
        try:
            if not isinstance(d, dict):
                raise ConfigError(f"plan: expected an object with keys {list(TOP_KEYS)}, "
                                  f"found {type(d).__name__}")
            for key in d:
                if key not in TOP_KEYS:
                    raise ConfigError(f"{key}: unknown key; expected one of {list(TOP_KEYS)}")
            small = d.get("small_layers", {})
            return cls(d.get("global", {}), d.get("layers", {}),
                       {} if small is None else small)
        except ConfigError as e:
            if where:
                raise ConfigError(f"{where}: {e}") from None
            raise

    def to_dict(self) -> dict:
        return {"global": dict(self.global_spec),
                "layers": {p: dict(s) for p, s in self.layers.items()},
                "small_layers": dict(self.small_layers)}

    @classmethod
    def from_file(cls, path: str | Path) -> "CompressionPlan":
        path = Path(path).expanduser()
        d = load_json(path, ConfigError, "a plan JSON file")
        return cls.from_dict(d, str(path))

    @classmethod
    def coerce(cls, plan) -> "CompressionPlan":
        """A plan from a CompressionPlan, a dict, a LayerConfig, or a method /
        layer-config name (the global spec)."""
        if isinstance(plan, CompressionPlan):
            return plan
        if isinstance(plan, dict):
            return cls.from_dict(plan)
        if isinstance(plan, LayerConfig):
            return cls(spec_of_config(plan))
        if isinstance(plan, str):
            return cls({"method": plan} if plan in METHODS else plan)
        raise ConfigError(f"plan: expected a CompressionPlan, dict, LayerConfig or name, "
                          f"found {type(plan).__name__}")

    def with_shorthand(self, method=None, k=None, d=None, m=None, coef_bits=None,
                       source: str = "the plan") -> "CompressionPlan":
        """The command line's --method/--k/--d/--m/--coef-bits over the global spec.
        A flag the resulting global method does not use is a ConfigError naming it."""
        flags = {key: v for key, v in (("method", method), ("k", k), ("d", d), ("m", m),
                                       ("coef_bits", coef_bits)) if v is not None}
        if not flags:
            return self
        for key, v in flags.items():
            try:
                _check_value(key, v, "x")
            except ConfigError as e:
                raise ConfigError(f"{FLAGS[key]}: {str(e).split(': ', 1)[1]}") from None
        g = dict(self.global_spec)
        g.update(flags)
        final = g.get("method", DEFAULTS["method"])
        for key in flags:
            if key != "method" and key not in uses(final):
                why = (f"--method {final}" if "method" in flags else
                       f"global.method {final!r} of {source}" if "method" in self.global_spec
                       else f"the default method {final!r}")
                raise ConfigError(f"{FLAGS[key]}: not used by {why} (it takes "
                                  f"{[FLAGS.get(u, u) for u in uses(final)] or 'no other flags'})")
        if "method" in flags:       # keys of the old method that the new one does not use
            g = {key: v for key, v in g.items() if key == "method" or key in uses(final)}
        return CompressionPlan(g, self.layers, self.small_layers)

    # ---- resolution ----------------------------------------------------------
    def explain(self, name: str, rows: int, cols: int) -> Resolved:
        spec, rules = dict(DEFAULTS), []
        if self.global_spec:
            spec.update(self.global_spec)
            rules.append("global")
        for pattern, s in self.layers.items():
            if fnmatch.fnmatchcase(name, pattern):
                spec.update(s)
                rules.append(_quote(pattern))
        where = f"layer {name}: {rules[-1] if rules else 'defaults'}"
        lc = config_of_spec(spec, where)
        if spec["rank"] and spec["rank"] * (rows + cols) >= rows * cols:
            raise ConfigError(f"{where}.rank: expected a rank below rows*cols/(rows+cols) = "
                              f"{rows * cols / (rows + cols):.1f} for {rows} x {cols} (fewer "
                              f"weights than the layer), found {spec['rank']}")
        small = dict(SMALL_DEFAULTS, **self.small_layers)
        n = rows * cols
        codebook_values = lc.m * lc.k * lc.d if lc.mode != "int" else 0
        if n <= small["max_weights"] or (small["codebook_rule"] and codebook_values > n):
            spec = dict(DEFAULTS, **{k: v for k, v in small.items() if k in SPEC_KEYS})
            rules.append("small_layers")
            lc = config_of_spec(spec, f"layer {name}: small_layers")
        return Resolved(lc, tuple(rules), spec)

    def resolve(self, name: str, rows: int, cols: int) -> LayerConfig:
        return self.explain(name, rows, cols).config

    def unused_patterns(self, names) -> list[str]:
        names = list(names)
        return [p for p in self.layers if not any(fnmatch.fnmatchcase(n, p) for n in names)]


def plan_from_args(config: str | None = None, method=None, k=None, d=None, m=None,
                   coef_bits=None) -> CompressionPlan:
    """The plan of `ssvq compress`: --config FILE (or the defaults) with the
    shorthand flags over its global spec."""
    plan = CompressionPlan.from_file(config) if config else CompressionPlan()
    return plan.with_shorthand(method, k, d, m, coef_bits,
                               source=str(config) if config else "the plan")
