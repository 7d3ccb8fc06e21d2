"""Accuracy-aware tuning, driven by Intel Neural Compressor's framework-agnostic tuning loop.

INC 3.x has no ONNX adaptor, so each candidate is a QuantSpec wrapped in a small INC
BaseConfig; INC's ConfigLoader/SequentialSampler order the trials and its TuningMonitor
keeps the history against the FP32 baseline. The quantization itself is onnxruntime's.

The objective differs from INC's default (stop at the first config within tolerance):
every trial is timed against FP32, interleaved, and the winner is the *fastest* candidate
within tolerance (an emulated target is not timed, since qemu is no device latency: there the
most accurate one wins). Phases: (1) a grid over calibration method, format, per-channel and
op types around the ISA-aware default; (2) if nothing passes, per-node sensitivity and FP32
fallback of the worst nodes first, in growing steps, until the drop is within tolerance.
"""
from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import bias_correction, dynamic, gptq, static
from .spec import QuantSpec
from .timing import HostTimed, balanced, measure, order_balanced_ratios, timed_on_host, usable

# the per-node sensitivity pass stops ranking after this long (compute ops are measured first)
SENSITIVITY_SECONDS = 180.0
# a trial's latency note where the target (or its measurement) is emulated: no speed-up is taken from it
EMULATED_LATENCY = "emulated: not device latency"


@contextlib.contextmanager
def _quiet_inc():
    lg = logging.getLogger("neural_compressor")
    old = lg.level
    lg.setLevel(logging.WARNING)  # INC prints a table per trial at INFO
    try:
        yield
    finally:
        lg.setLevel(old)


def _inc_config(spec: QuantSpec):
    from neural_compressor.common.base_config import BaseConfig

    class OrtQuantConfig(BaseConfig):
        """One onnxruntime quantization candidate as an INC config (not expandable: already concrete)."""

        name = "edgekit_ort_quant"
        params_list = ["spec"]

        def __init__(self, s):
            super().__init__(white_list=None)
            self.spec = s

        def expand(self):
            return [self]

        def to_dict(self):
            return self.spec.to_dict()

        @classmethod
        def register_supported_configs(cls):
            return []

        @classmethod
        def get_config_set_for_tuning(cls):
            return None

    return OrtQuantConfig(spec)


@dataclass
class Trial:
    name: str
    spec: QuantSpec
    path: Path
    metric: float | None = None
    drop_rel: float | None = None
    latency_ms: float | None = None
    fp32_ms: float | None = None
    speedup: float | None = None
    passed: bool = False
    phase: str = "grid"
    info: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def fp32_nodes(self) -> list:
        return list(self.spec.exclude_nodes)

    def record(self) -> dict:
        rec = {"name": self.name, "phase": self.phase, "config": self.spec.to_dict(), "metric": self.metric,
               "drop_rel": self.drop_rel, "latency_ms": self.latency_ms, "fp32_ms": self.fp32_ms,
               "speedup": self.speedup, "passed": self.passed, "fp32_nodes": self.fp32_nodes,
               "calibration": self.info.get("calibration"), "bias_correction": self.info.get("bias_correction"),
               "float_for_nonfinite_range": self.info.get("float_for_nonfinite_range"),
               "other_outputs_fidelity": self.info.get("other_outputs_fidelity"),
               "error": self.error}
        if self.info.get("float_for_onnxruntime"):  # nodes this form cannot quantize (quant/ort_limits.py)
            rec["float_for_onnxruntime"] = self.info["float_for_onnxruntime"]
        if self.info.get("speedup_range"):
            rec["speedup_range"] = self.info["speedup_range"]
        if self.info.get("runoff_speedups"):  # re-timed before the pick: speedup is the median of all
            rec["runoff_speedups"] = self.info["runoff_speedups"]
            rec["trial_speedup"] = self.info.get("trial_speedup")
            if self.info.get("runoff_timing_note"):
                rec["runoff_timing_note"] = self.info["runoff_timing_note"]
                rec["runoff_host_other_cores"] = self.info.get("runoff_host_other_cores")
        if self.info.get("timing_note"):  # re-timed with spinning off: the host was busy
            rec["timing_note"] = self.info["timing_note"]
            rec["host_other_cores"] = self.info.get("host_other_cores")
        if self.latency_ms is None and self.info.get("latency"):
            rec["latency"] = self.info["latency"]  # why no latency: emulated, or not measurable here
        return rec


class Tuner:
    """Runs trials for one FP32 model; all candidate files live in workdir."""

    def __init__(self, *, prep_path, fp32_path, workdir, calib, input_names, evaluate, reference: float,
                 tolerance, target, feeds, calib_size: int, max_trials: int, cache_root=None,
                 trial_runs: int = 20, trial_seconds: float = 0.3, progress=None):
        self.prep_path, self.fp32_path, self.workdir = Path(prep_path), Path(fp32_path), Path(workdir)
        self.calib, self.input_names, self.evaluate = calib, list(input_names), evaluate
        self.reference, self.tolerance, self.target, self.feeds = reference, tolerance, target, feeds
        self.calib_size, self.max_trials, self.cache_root = calib_size, max_trials, cache_root
        self.trial_runs, self.trial_seconds, self.progress = trial_runs, trial_seconds, progress
        self.trials: list[Trial] = []
        self.sensitivity: list = []
        self._fused_path = None
        self._rounded: dict = {}  # (per_channel, reduce_range) -> (path, overrides, loaded model)
        self._originals = None  # (node -> weight name, weight name -> original initializer), for mixes
        self.notes: list = []

    @property
    def budget_left(self) -> int:
        return self.max_trials - len(self.trials)

    # ------------------------------------------------------------------------------------ one trial
    def build(self, spec: QuantSpec, dest: Path) -> dict:
        if spec.mode == "int8-dynamic":
            src = self.prep_path
            if spec.fuse_transformer:
                src = self.fused_path()
                if src is None:
                    raise ValueError("graph has no BERT-like attention to fuse")
            info = dynamic.quantize(src, dest, spec)
            if spec.plain_layernorm:
                from . import layernorm

                info["plain_layernorm"] = layernorm.residual_adds_as_sum(dest)
                if not info["plain_layernorm"]:
                    raise ValueError("graph has no Add before a LayerNormalization")
            return info
        if spec.bias_correction and spec.format != "qdq":
            raise ValueError("bias correction works on QDQ graphs only")
        src, overrides, ranges_of = self.static_source(spec)
        info = static.quantize(src, dest, self.calib, spec, calib_size=self.calib_size, input_names=self.input_names,
                               cache_root=self.cache_root, overrides=overrides, calib_model=ranges_of)
        if spec.bias_correction:
            # against the pre-processed model's original weights: GPTQ's rounding drift is corrected too
            info["bias_correction"] = bias_correction.apply(dest, self.prep_path, self.calib, self.input_names,
                                                            limit=min(bias_correction.SAMPLES, self.calib_size))
        return info

    def static_source(self, spec: QuantSpec, *, only_nodes=None):
        """(model to quantize, TensorQuantOverrides, model whose calibration ranges it shares): the
        pre-processed model, or its GPTQ-rounded copy.

        With GPTQ, layers that will not be quantized (exclude_nodes, or all but only_nodes) keep their
        original FP32 weights; such a mix shares the activation ranges of the fully rounded model.
        """
        if spec.weight_rounding != "gptq":
            return self.prep_path, None, None
        if spec.weight_type != "s8":
            raise ValueError("GPTQ weight rounding needs signed INT8 weights")
        key = (spec.per_channel, spec.reduce_range)
        if key not in self._rounded:
            import onnx

            dest = self.workdir / f"gptq_{'pc' if spec.per_channel else 'pt'}{'_rr' if spec.reduce_range else ''}.onnx"
            info = gptq.apply(self.prep_path, dest, self.calib, self.input_names, per_channel=spec.per_channel,
                              reduce_range=spec.reduce_range, limit=self.calib_size)
            self.notes.append(gptq.summary(info))
            self._rounded[key] = (dest, info["overrides"], onnx.load(str(dest)))
        path, overrides, rounded = self._rounded[key]
        if not spec.exclude_nodes and only_nodes is None:
            return path, overrides, None
        if self._originals is None:
            import onnx

            prep = onnx.load(str(self.prep_path))
            self._originals = ({l.node: l.weight for l in gptq.find_layers(prep)},
                               {i.name: i for i in prep.graph.initializer})
        weight, originals = self._originals
        if only_nodes is not None:
            keep = {weight[n] for n in only_nodes if n in weight}
        else:
            keep = set(overrides) - {weight[n] for n in spec.exclude_nodes if n in weight}
        # one file serves each mix: it is quantized right away, and its calibration ranges are keyed on `path`
        dest = self.workdir / "gptq_mixed.onnx"
        return dest, gptq.mix(rounded, originals, dest, keep=keep, overrides=overrides), path

    def fused_path(self):
        if self._fused_path is None:
            p = self.workdir / "fused.onnx"
            self._fused_path = p if dynamic.fuse_transformer(self.prep_path, p) else False
        return self._fused_path or None

    def run_trial(self, spec: QuantSpec, phase: str) -> Trial:
        from ..errors import EdgekitError

        dest = self.workdir / f"trial{len(self.trials):02d}.onnx"
        t = Trial(spec.name(), spec, dest, phase=phase)
        try:
            t.info = self.build(spec, dest)
            m = self.evaluate(dest)
            t.metric = float(m["value"])
            t.drop_rel = (self.reference - t.metric) / self.reference if self.reference else None
            others = [v for v in m.get("other_outputs_fidelity") or () if v is not None]
            t.passed = bool(self.tolerance.allows(self.reference, t.metric)) and \
                all(self.tolerance.allows(1.0, v) for v in others)
            if others:
                t.info["other_outputs_fidelity"] = others
            self.time_trial(t, dest)
        except (EdgekitError, ValueError) as e:
            # the trial file is a name in a staging folder the user never sees: name the candidate of their model
            msg = (str(e).splitlines()[0] if str(e) else type(e).__name__).replace(str(dest), dest.name)
            t.error, t.passed = msg.replace(dest.name, f"{self.fp32_path.name}'s candidate"), False
        self.trials.append(t)
        if self.progress:
            self.progress(t)
        return t

    def time_trial(self, t: Trial, dest: Path) -> None:
        """The trial's p50 and speed-up over FP32, interleaved, from a real measurement only.

        Timings under emulation (qemu, or a device declared emulated) are correctness only, never device
        latency: qemu put a static INT8 CNN at 7.13x FP32 and tuning ranked candidates by it. An emulated
        target is not timed at all (as in the speed gate); a measurement that comes back emulated is
        dropped. Either way the trial keeps no latency or speed-up, and candidates rank by accuracy.
        """
        if getattr(self.target, "emulated", False):
            t.info["latency"] = EMULATED_LATENCY
            return
        # one session pair each way round: the session created second ran ~3% faster, and it was always INT8's
        timed = self._session_pairs(dest, 1)
        chunks = timed.chunks
        if timed.note:
            t.info.update(timing_note=timed.note, host_other_cores=round(timed.busy, 3))
        a, b = chunks[-1].get("fp32") or {}, chunks[-1].get("int8") or {}
        ratios = order_balanced_ratios(chunks, "int8", "fp32")
        if a.get("emulated") or b.get("emulated"):
            t.info["latency"] = EMULATED_LATENCY
        elif ratios:
            ok = [c for c in chunks if usable(c)]
            t.fp32_ms = sum(c["fp32"]["p50_ms"] for c in ok) / len(ok)
            t.speedup = 1.0 / ratios[0]
            t.latency_ms = t.fp32_ms / t.speedup
            # the two session pairs' speed-ups: how far apart they are is this trial's measured noise
            t.info["speedup_range"] = sorted(round(c["fp32"]["p50_ms"] / c["int8"]["p50_ms"], 4) for c in ok)
        else:
            t.info["latency"] = b.get("reason") or a.get("reason") or "unavailable"
        t.info["structure"] = structure_key(dest)

    def _session_pairs(self, path, pairs: int) -> HostTimed:
        """FP32 and the candidate at path timed in `pairs` session pairs, each way round (a trial's budget);
        again with thread spinning off where other processes kept the host busy (as the speed gate does)."""
        return timed_on_host(lambda: balanced(
            {"fp32": self.fp32_path, "int8": path}, self.target, self.feeds, pairs=pairs,
            min_runs=max(1, self.trial_runs // 2), min_seconds=self.trial_seconds / 2, using=measure), self.target)

    def run_phase(self, specs: list, phase: str) -> list:
        """Run specs through INC's tuning loop, within the remaining trial budget."""
        from neural_compressor.common.base_tuning import TuningConfig, init_tuning

        specs = [s for s in specs if all(s != t.spec for t in self.trials)][: max(0, self.budget_left)]
        if not specs:
            return []
        rel = self.tolerance.value if self.tolerance.relative else (
            self.tolerance.value / self.reference if self.reference else self.tolerance.value)
        out = []
        with _quiet_inc():
            tc = TuningConfig(config_set=[_inc_config(s) for s in specs], max_trials=len(specs),
                              tolerable_loss=rel)
            loader, _logger, monitor = init_tuning(tc)
            # INC divides by the baseline; a model that scores 0 still gets its trials recorded (edgekit
            # judges tolerance itself, with Tolerance, not with INC's relative loss)
            monitor.set_baseline(self.reference if self.reference else 1e-12)
            for i, cfg in enumerate(loader, 1):
                t = self.run_trial(cfg.spec, phase)
                monitor.add_trial_result(i, t.metric if t.metric is not None else float("-inf"), cfg)
                out.append(t)
                if monitor.trial_cnt >= tc.max_trials:
                    break
        return out

    # -------------------------------------------------------------------------------- the strategy
    def grid(self, base: QuantSpec, *, pinned: set, transformer_like: bool) -> list:
        specs = [base]
        if base.mode == "int8":
            if transformer_like and "mode" not in pinned:
                # transformer on CPU: static QDQ wraps every LayerNorm/Softmax/GELU in Q/DQ and measures
                # slower than FP32, so dynamic INT8 goes first and static keeps only its default as a check
                dyn = QuantSpec(mode="int8-dynamic", per_channel=True, reduce_range=base.reduce_range)
                fused = dyn.replace(fuse_transformer=True)
                return [dyn, fused, fused.replace(plain_layernorm=True), dyn.replace(per_channel=False), base]
            if "weight_rounding" not in pinned and base.weight_type == "s8" and base.weight_rounding == "nearest":
                specs.append(base.replace(weight_rounding="gptq"))
            if "method" not in pinned:
                specs += [base.replace(method="percentile"), base.replace(method="entropy")]
            if "format" not in pinned:
                specs.append(base.replace(format="qoperator" if base.format == "qdq" else "qdq"))
            if "per_channel" not in pinned:
                specs.append(base.replace(per_channel=not base.per_channel))
            if "op_types" not in pinned:
                specs.append(base.replace(op_types=("Conv", "MatMul", "Gemm")))
            if "types" not in pinned and base.types != "S8S8":
                specs.append(base.replace(activation_type="s8", weight_type="s8", symmetric_activation=True))
            if transformer_like and "mode" not in pinned:
                dyn = QuantSpec(mode="int8-dynamic", per_channel=True, reduce_range=base.reduce_range)
                fused = dyn.replace(fuse_transformer=True)
                specs[1:1] = [fused, fused.replace(plain_layernorm=True), dyn]
        else:
            if "per_channel" not in pinned:
                specs.append(base.replace(per_channel=not base.per_channel))
            specs += [s.replace(fuse_transformer=not s.fuse_transformer) for s in list(specs)]
            specs += [s.replace(plain_layernorm=True) for s in list(specs) if s.fuse_transformer]
        return specs

    def fallback(self, base: QuantSpec, eval_data, *, sensitivity_seconds: float | None = SENSITIVITY_SECONDS) -> list:
        """Sensitivity on `base` once, then bisection over how many of the worst nodes stay FP32.

        A node goes to FP32 together with the activation onnxruntime fuses into it (Conv+Clip/Relu):
        quantizing one without the other puts a Q/DQ on the pre-activation tensor, whose range is far
        wider than the activation's, and costs accuracy instead of saving it.
        """
        from . import sensitivity

        if base.mode != "int8" or self.budget_left <= 0:
            return []
        # measured in QDQ form (nodes stay addressable by name); the fallback trials keep base's format
        sbase = base.replace(format="qdq", exclude_nodes=())
        base_path = self.workdir / "sens_base.onnx"
        self.build(sbase, base_path)
        # each node is measured with its own weights rounded as the candidate would round them (GPTQ or
        # nearest) against the true FP32 model, since falling back restores both its weights and its inputs
        self.sensitivity = sensitivity.measure(self.prep_path, base_path, sbase, self.calib, eval_data,
                                               workdir=self.workdir, calib_size=self.calib_size,
                                               input_names=self.input_names, cache_root=self.cache_root,
                                               deadline_s=sensitivity_seconds,
                                               simulate=bool(getattr(self.evaluate, "simulate_qdq", False)),
                                               source_for=lambda nodes: self.static_source(sbase, only_nodes=nodes))
        order = [s["node"] for s in self.sensitivity]
        if not order:
            return []
        fused = sensitivity.fused_activations(self.prep_path)

        def spec_for(k):
            return base.replace(exclude_nodes=tuple(sensitivity.with_activations(order[:k], fused)))

        out, results = [], {}

        def attempt(k):
            t = self.run_phase([spec_for(k)], "fallback")
            out.extend(t)
            results[k] = bool(t and t[0].passed)
            return results[k]

        # exponential search for a passing count, then bisection between the last failure and it:
        # O(log n) trials, and the fewest FP32 nodes (the fastest candidate) that meets the tolerance.
        # Where INT8 can beat FP32 here at all, the search stops growing once a candidate no longer does:
        # more FP32 nodes only make it slower, and a model that is FP32 throughout is no INT8 candidate.
        # at most half the ranked nodes: beyond that the candidate is FP32 with extra steps, not an INT8
        # answer, and short trial timings cannot tell it from FP32 reliably
        top = max(1, (len(order) + 1) // 2)
        # and never every weighted layer (Conv, MatMul, Gemm): an "INT8" model without one is FP32 with
        # Q/DQ pairs around its activations, which a tabular MLP's two Gemms became when both fell back
        compute = [i for i, s in enumerate(self.sensitivity) if s["op_type"] in sensitivity.PRIORITY]
        if compute:
            top = min(top, compute[-1])
            if top < 1:
                return []  # its one weighted layer is the worst node: falling it back leaves no INT8 model
        lo, k = 0, 1
        while self.budget_left > 0:
            if attempt(k):
                break
            lo = k
            last = out[-1] if out else None
            if k == top or (last is not None and not _faster(last) and any(map(_faster, self.trials))):
                return out
            k = min(2 * k, top)
        else:
            return out
        hi = k
        while hi - lo > 1 and self.budget_left > 0:
            mid = (lo + hi) // 2
            if attempt(mid):
                hi = mid
            else:
                lo = mid
        out.extend(self._with_stem(base, order[:hi], fused))
        return out

    def _with_stem(self, base: QuantSpec, nodes: list, fused: dict) -> list:
        """The passing fallback set plus the model's input convs, as one more candidate: fewer FP32 nodes
        is not always faster, and an INT8 stem is often slower than FP32 (see stem.py). best() keeps it
        only if it measures faster within tolerance."""
        from . import sensitivity, stem

        extra = [n for n in stem.input_convs(self.prep_path) if n not in nodes]
        if not extra or self.budget_left <= 0:
            return []
        self.notes.append(f"fallback: also tried with the input conv(s) {', '.join(extra)} in FP32 (an INT8 stem "
                          "is often slower than FP32)")
        spec = base.replace(exclude_nodes=tuple(sensitivity.with_activations(list(nodes) + extra, fused)))
        return self.run_phase([spec], "fallback")

    def passing(self) -> list:
        return [t for t in self.trials if t.passed and t.error is None]

    def runoff(self) -> None:
        """Re-time the fastest graph structures within tolerance before the pick. One session pair each way
        round is a noisy speed on a shared host: MiniLM's dynamic per-channel trial read 2.19x FP32 speed
        and was picked over the fused candidates (1.79x, 1.77x); four more session pairs each gave them
        1.75x, 2.19x and 2.26x. RUNOFF_STRUCTURES structures get RUNOFF_PAIRS more pairs (for their most
        accurate member; all members run the same kernels), and each keeps the median of all its pairs.
        The pick then chooses among these contenders only, with the noise their own samples measure
        (`runoff_noise`), not the run's widest one-pair spread."""
        if getattr(self.target, "emulated", False):
            return
        pool = [t for t in self.passing() if t.speedup]
        speed, _ = speeds(pool)
        groups = by_structure(pool)
        if len(groups) < 2:
            return  # one structure: the pick is by accuracy
        top = sorted(groups.values(), key=lambda ms: -speed[id(ms[0])])[:RUNOFF_STRUCTURES]
        self.notes.append(f"the {len(top)} fastest graph structures within tolerance were re-timed with "
                          f"{RUNOFF_PAIRS} more session pairs each before the pick (speedup: the median of all)")
        for members in top:
            rep = max(members, key=lambda t: (t.metric if t.metric is not None else float("-inf")))
            timed = self._session_pairs(rep.path, RUNOFF_PAIRS)
            more = [1.0 / r for r in order_balanced_ratios(timed.chunks, "int8", "fp32") if r]
            if not more:
                continue
            for t in members:
                if timed.note:  # its runoff pairs were re-timed with spinning off: the host was busy
                    t.info.update(runoff_timing_note=timed.note, runoff_host_other_cores=round(timed.busy, 3))
                t.info["runoff_speedups"] = [round(v, 4) for v in more]
                t.info["trial_speedup"] = t.speedup
                t.speedup = statistics.median([t.speedup, *more])
                t.latency_ms = t.fp32_ms / t.speedup if t.fp32_ms else t.latency_ms

    def best(self) -> Trial | None:
        """Fastest within tolerance (and faster than FP32, where any candidate is); when none passes, the
        most accurate of those faster than FP32 (else of all; ties: fastest), so the INT8 artifact written
        beside FP32 is still worth having.

        Speeds are compared as `speeds` gives them: one per graph structure, and equal within this run's
        measured noise; of equally fast candidates the most accurate wins, then the one with fewer FP32
        nodes, then by name, so a replay of the same recipe picks the same one. Where the runoff re-timed
        contenders, the pick is among them, equal within the noise of their own repeated samples."""
        speed, noise = speeds(self.trials)

        def faster(t):
            return speed[id(t)] > 0 and t.speedup is not None and 1.0 / speed[id(t)] < _faster_than()

        ok = self.passing()
        if any(map(faster, self.trials)):
            # INT8 can beat FP32 on this model and host, so a candidate within tolerance must too: one that
            # falls back so much that it is as slow as FP32 (in the limit, FP32 with extra steps) is no answer
            ok = [t for t in ok if faster(t)]
        if ok:
            contenders = [t for t in ok if t.info.get("runoff_speedups")]
            if contenders:
                return _fastest(contenders, speed, runoff_noise(contenders))
            return _fastest(ok, speed, noise)
        done = [t for t in self.trials if t.error is None and t.metric is not None]
        if not done:
            return None
        pool = [t for t in done if faster(t)] or done
        # equal accuracy goes to the speed rule with its tie margin: the raw fastest of several equally
        # accurate candidates, all slower than FP32, flipped between replays of one recipe
        top = max(t.metric for t in pool)
        return _fastest([t for t in pool if t.metric == top], speed, noise)


SPEED_TIE = 0.03  # speed-ups this close (relative) are one speed on a shared host: a replay must not flip
RUNOFF_STRUCTURES = 3  # the fastest graph structures within tolerance re-timed before the pick
RUNOFF_PAIRS = 4  # more session pairs, each way round, for each of them


def _raw_speed(t: Trial) -> float:
    if t.speedup:
        return t.speedup
    return 1.0 / t.latency_ms if t.latency_ms else 0.0  # unmeasured ratio: rank by latency alone


def by_structure(trials: list) -> dict:
    """{graph structure (or the trial itself, where unmeasured or unknown): its trials}."""
    groups: dict = {}
    for t in trials:
        key = t.info.get("structure") if t.speedup else None
        groups.setdefault(key or ("own", id(t)), []).append(t)
    return groups


def speeds(trials: list) -> tuple[dict, float]:
    """({id(trial): speed}, noise). Candidates of one graph structure (minmax vs entropy vs percentile
    scales, nearest vs GPTQ weights) run the same kernels, so they share one speed, the median of their
    speed-ups: on a loaded host their own measurements spread 0.75x-1.56x within one run, and the pick
    between them followed that noise. The noise is the widest relative spread measured in this run: within
    one structure, or between the two session pairs of one trial (at least SPEED_TIE)."""
    speed, noise = {}, SPEED_TIE
    for members in by_structure(trials).values():
        raw = sorted(_raw_speed(t) for t in members)
        mid = statistics.median(raw)
        for t in members:
            speed[id(t)] = mid
        if len(raw) > 1 and raw[0] > 0:
            noise = max(noise, raw[-1] / raw[0] - 1.0)
    for t in trials:
        r = t.info.get("speedup_range") or [0.0]
        if r[0] > 0:
            noise = max(noise, r[-1] / r[0] - 1.0)
    return speed, noise


def runoff_noise(trials: list) -> float:
    """The relative margin within which the runoff contenders' speeds are equal: twice the standard error
    of the difference between two of their medians, from the spread of their own samples (each structure's
    trial speed-up and its runoff speed-ups, all order-balanced session pairs). The run's widest one-pair
    spread (`speeds`) is far looser: on MiniLM it made 2.15x, 1.97x and 1.86x one speed after the runoff,
    and a cosine difference in the 5th decimal picked the slowest. The spread is a pooled median absolute
    deviation of log speed-ups, so one wild pair (a noisy trial timing) does not widen it."""
    groups = []
    for members in by_structure(trials).values():
        more = next((t.info["runoff_speedups"] for t in members if t.info.get("runoff_speedups")), [])
        own = [t.info.get("trial_speedup") for t in members if t.info.get("runoff_speedups")]
        xs = [x for x in [*own, *more] if x and x > 0]
        if xs:
            groups.append(xs)
    resid = []
    for xs in groups:
        mid = statistics.median(xs)
        r = sorted(abs(math.log(x / mid)) for x in xs)
        # with an odd count one sample is the median itself: its zero residual measures no spread
        resid += r[1:] if len(r) % 2 else r
    if not resid:
        return SPEED_TIE
    sigma = 1.4826 * statistics.median(resid)  # the normal's sigma from a median absolute deviation
    n = min(len(xs) for xs in groups)
    se_median = 1.2533 * sigma / math.sqrt(n)  # a median's standard error, for normal samples
    return max(SPEED_TIE, math.exp(2.0 * math.sqrt(2.0) * se_median) - 1.0)


def _fastest(trials: list, speed: dict | None = None, noise: float = SPEED_TIE) -> Trial:
    """The fastest by each trial's own interleaved speed-up over FP32 (absolute times of trials run
    minutes apart move with the host's load); candidates within `noise` of it count as equally fast, and
    of those the most accurate wins, then the one with fewer FP32 nodes, then by name (then the earliest),
    so a replay of the same recipe picks the same one unless the measured speed really differs."""
    speed = speed or {id(t): _raw_speed(t) for t in trials}
    top = max(speed[id(t)] for t in trials)
    ties = [t for t in trials if speed[id(t)] * (1 + noise) >= top]
    return min(ties, key=lambda t: (-(t.metric if t.metric is not None else float("-inf")), len(t.fp32_nodes),
                                    t.name, trials.index(t)))


def _faster_than() -> float:
    from .speed_gate import FASTER_THAN

    return FASTER_THAN


def _faster(t: Trial) -> bool:
    """Measured faster than FP32 by the speed gate's margin (unmeasured counts as not faster)."""
    return t.speedup is not None and t.speedup > 0 and 1.0 / t.speedup < _faster_than()


def structure_key(path) -> str | None:
    """A hash of the graph's structure: nodes, wiring, attributes and initializer types and shapes, not
    their values; two candidates with one key run the same kernels. None where the file cannot be read."""
    import hashlib

    import onnx

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception:
        return None
    g = m.graph
    inits = {i.name: f"init:{i.data_type}:{tuple(i.dims)}" for i in g.initializer}
    ids: dict = {}

    def ref(name):
        if name in inits:
            return inits[name]
        return ids.setdefault(name, f"t{len(ids)}") if name else ""

    h = hashlib.sha256()
    for i in g.input:
        h.update(f"in:{ref(i.name)}:{i.type.SerializeToString().hex()}".encode())
    for n in g.node:
        attrs = []
        for a in n.attribute:
            v = onnx.helper.get_attribute_value(a)
            if isinstance(v, onnx.TensorProto):
                v = (v.data_type, tuple(v.dims))
            elif isinstance(v, onnx.GraphProto):
                v = "graph"  # control flow bodies: compared by their outer node only
            attrs.append((a.name, repr(v)))
        h.update(repr((n.op_type, n.domain, [ref(x) for x in n.input], [ref(x) for x in n.output],
                       sorted(attrs))).encode())
    for o in g.output:
        h.update(f"out:{ref(o.name)}".encode())
    return h.hexdigest()[:16]


def elapsed(t0: float) -> float:
    return round(time.perf_counter() - t0, 2)
