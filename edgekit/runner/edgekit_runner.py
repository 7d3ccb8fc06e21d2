#!/usr/bin/env python3
"""edgekit device runner: a single file that needs only numpy and onnxruntime.

One runner, three places: edgekit's own profiler imports its functions in-process, the
arm64-emulated target runs it under qemu, and flashed bundles run it on devices over SSH.
Every subcommand prints one JSON object on stdout. `run` on a bundle's model also applies the
bundle's pre/post steps, importing the edgekit/prepost package shipped beside it (numpy, and
Numba when present) only then.

    bench    --model [LABEL=]M ... [--inputs X.npz] [--batch N] [--threads N] [--warmup N]
             [--min-runs N --min-seconds S --max-seconds S | --runs N] [--op-runs N]
             [--providers JSON] [--outputs OUT.npz] [--pid-file F] [--no-settle]
             X.npz keys NAME feed every model; keys LABEL::NAME feed model LABEL (others generate theirs)
    run      (--model M | --bundle DIR) [--inputs X.npz] --out Y.npz [--no-prepost]
             every sample of X; a bundle's pre/post steps (bundle.json "prepost") applied unless --no-prepost
    selftest --bundle DIR [--pid-file F]   (DIR/bundle.json: model, selftest{inputs, expected, atol}); exit 1 on mismatch
    warmup   --bundle DIR [--op OP ...]   compile the bundle's pre/post kernels into the cache `run --bundle DIR` uses

Several --model are timed interleaved (round-robin in short blocks, alternating who goes first) so
that a busy machine slows them alike and their ratio stays meaningful. Their threads spin after a run
as a deployed model's do, and each switch first waits until the idle models' threads have stopped
(--no-settle: every session stops them when a run returns instead).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time

import numpy as np

RUNNER_VERSION = 1
# Every session flushes denormal floats to zero. Attention over a padded sequence pushes softmax into
# the denormal range, where each x86 float op costs ~100 cycles: on MiniLM with a 15-token sentence
# padded to 128, the INT8 QAttention layers took 6.8 ms against 2.9 ms unpadded, and flushing took the
# whole INT8 model from 16.1 to 11.8 ms, FP32 unchanged, outputs identical on 400 sentences
# (benchmarks/quantize/denormals.py). Values below 1.2e-38 carry no signal in inference; the same
# setting is used for every model edgekit times, so comparisons stay like for like.
#
# Thread-pool workers still spin-wait between ops (onnxruntime's default, and how a deployed model
# runs), but stop when Run() returns. Without that, a session's idle worker spins on for ~45 ms after
# each run (CPU time measured over a 100 ms sleep), so models timed side by side slowed each other:
# `edgekit profile` gave EfficientNet-Lite0 FP32 7.2-7.7 ms on 2 cores where it ran in 3.5-5.2 ms with
# spinning stopped, and INT8 vs FP32 ratios moved with it (benchmarks/profile/spinning.py).
SESSION_CONFIG = {"session.set_denormal_as_zero": "1", "session.force_spinning_stop": "1"}
# the config entries of a session timed with no other session alive (bench_models of one model)
ALONE_CONFIG = {"session.force_spinning_stop": "0"}
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}
_SEQ_DIM = re.compile(r"seq|len|token|time|step|word", re.I)
SEQ_DEFAULT = 128


# ---------------------------------------------------------------- statistics (the only copy)

def summarize(samples_ms, batch: int = 1) -> dict:
    """Latency statistics of timed runs (ms); throughput in inferences (samples) per second."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no timed runs")
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    mean = float(a.mean())
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": mean,
            "std_ms": float(a.std(ddof=1)) if a.size > 1 else 0.0, "min_ms": float(a.min()),
            "max_ms": float(a.max()), "throughput": float(batch * 1000.0 / mean) if mean > 0 else None,
            "runs": int(a.size)}


def current_rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def _vm_hwm_mb() -> float | None:
    """VmHWM, this process's own resident high-water mark; None where there is no /proc (not Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak_rss() -> bool:
    """Start the high-water mark over at the current RSS (Linux >= 4.0), so that the peak read later is
    the measurement's, not whatever the process did before it (loading data, torch, quantizing)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across
    fork and exec, so a runner started by a 1 GB process read 1080 MB for a 7 KB model."""
    if os.path.exists("/proc/self/status"):
        return _vm_hwm_mb()
    try:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20
    except (ImportError, OSError):
        return None


_LIBC = []  # [the C library, if it has glibc's malloc_trim] once looked up, or [None]


def _malloc_trim():
    if not _LIBC:
        import ctypes
        import ctypes.util

        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.append(libc if hasattr(libc, "malloc_trim") else None)
        except OSError:
            _LIBC.append(None)
    return _LIBC[0]


def settled_rss_mb() -> float | None:
    """RSS after the heap's free memory is handed back (glibc malloc_trim); None without malloc_trim.

    Around a session's creation this is what the session keeps: the plain RSS delta read 0.0, 16, 32 or
    -0.1 MB for one 32 MiB model, as the new session reused memory an earlier one had freed or left its
    own load-time temporaries behind; trimmed on both sides it reads 32.2-32.3 MB every time."""
    libc = _malloc_trim()
    if libc is None:
        return None
    libc.malloc_trim(0)
    return current_rss_mb()


def cpu_model() -> str:
    """This machine's CPU as /proc/cpuinfo names it (x86 "model name"; ARM implementer/part)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                fields.setdefault(k.strip().lower(), v.strip())
    except OSError:
        pass
    if fields.get("model name"):
        return fields["model name"]
    arm = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd08": "Cortex-A72",
           "0xd0b": "Cortex-A76", "0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1", "0xd42": "Cortex-A78AE",
           "0xd4f": "Neoverse-V2"}
    part = fields.get("cpu part", "")
    return arm.get(part, f"{platform.machine()} part {part}" if part else platform.machine())


# ---------------------------------------------------------------- sessions and inputs

def provider_status(providers, required=None) -> tuple[list, list, str | None]:
    """(usable [(name, opts)], missing [names], reason-if-a-required-one-is-missing)."""
    import onnxruntime as ort

    avail = set(ort.get_available_providers())
    names = [n for n, _ in providers]
    problems = {n: why for n in names if n in avail and (why := provider_problem(n))}
    avail -= set(problems)
    required = names if required is None else list(required)
    usable = [(n, o) for n, o in providers if n in avail]
    missing = [n for n in names if n not in avail]
    bad = [n for n in missing if n in required]
    if not bad:
        return usable, missing, None
    return usable, missing, _missing_reason(bad[0], avail, problems)


def _missing_reason(name: str, avail, problems=None) -> str:
    import onnxruntime as ort

    ver = getattr(ort, "__version__", "?")
    if (problems or {}).get(name):
        return f"{name} cannot load in onnxruntime {ver}: {problems[name]}"
    if name in GPU_PROVIDERS:
        if "CUDAExecutionProvider" not in avail:
            return (f"onnxruntime-gpu not installed (onnxruntime {ver} offers {', '.join(sorted(avail))}; "
                    f"{name} needs `pip install onnxruntime-gpu` and an NVIDIA GPU)")
        return f"{name} is not available in onnxruntime {ver} (TensorRT libraries missing?)"
    return f"{name} is not available in onnxruntime {ver} on {platform.machine()} (has {', '.join(sorted(avail))})"


_PROVIDER_LIBS = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "tensorrt"}
_LIB_PROBLEMS = {}  # provider -> why its library cannot load here (None: it loads), looked up once per process


def provider_problem(name: str) -> str | None:
    """Why onnxruntime's library for a GPU provider cannot load on this machine, or None.

    onnxruntime-gpu lists CUDA and TensorRT as available whether or not their libraries can load, and a
    session asking for one that cannot falls back: for TensorRT without libnvinfer onnxruntime printed an
    "EP Error" block on stdout for every session (34 in one `edgekit profile` on an H200 machine, which breaks
    --json), and for CUDA the session ran on the CPU. The library is loaded here as onnxruntime would load it.
    """
    short = _PROVIDER_LIBS.get(name)
    if short is None or platform.system() != "Linux":
        return None
    if name not in _LIB_PROBLEMS:
        import ctypes

        import onnxruntime as ort

        preload_gpu_libs()
        lib = os.path.join(os.path.dirname(ort.__file__), "capi", f"libonnxruntime_providers_{short}.so")
        why = None
        if not os.path.exists(lib):
            why = f"{os.path.basename(lib)} is not in this onnxruntime install (onnxruntime-gpu has it)"
        else:
            try:
                ctypes.CDLL(lib)
            except OSError as e:
                why = str(e).replace(lib + ": ", "")
                if short == "tensorrt":
                    why = f"TensorRT libraries not found ({why})"
        _LIB_PROBLEMS[name] = why
    return _LIB_PROBLEMS[name]


def session_options(threads=None, config=None):
    """onnxruntime SessionOptions as edgekit runs every model: quiet, SESSION_CONFIG (+ config), threads."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    # fatal only: a failing kernel also logs its error in colour on stderr before raising it, and every
    # caller turns the exception into its own one-line message
    so.log_severity_level = 4
    for k, v in {**SESSION_CONFIG, **(config or {})}.items():
        so.add_session_config_entry(k, v)
    if threads:
        so.intra_op_num_threads = int(threads)
    return so


GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
_GPU_LIBS = []  # [the lines onnxruntime printed while loading its CUDA/cuDNN libraries], once per process


def preload_gpu_libs() -> list:
    """Load the CUDA and cuDNN libraries pip's nvidia-* packages hold, once per process, before the first
    CUDA/TensorRT session; the lines onnxruntime printed (its failures) are returned.

    onnxruntime-gpu's CUDA provider library needs libcudart/libcublas/libcudnn; where those come from pip's
    nvidia-* packages (`pip install onnxruntime-gpu[cuda,cudnn]`) and are not on the loader's path, the provider
    cannot load and the session runs on the CPU. onnxruntime's preload_dlls() loads them from site-packages
    (on the H200 machine checked, 2026-12-04, the libraries were found either way). It prints what it could
    not load on stdout, which would corrupt --json output: that is captured.
    """
    if not _GPU_LIBS:
        import contextlib
        import io

        import onnxruntime as ort

        said = io.StringIO()
        try:
            # environment-level warnings of onnxruntime-gpu are not the user's to act on: 1.31 logged "No
            # registered plugin EP device found for 'CUDAExecutionProvider' with device_id=0" for every session
            # given a device_id (32 lines on stderr in one `edgekit profile` on an H200). Errors still show.
            ort.set_default_logger_severity(3)
            if hasattr(ort, "preload_dlls") and "CUDAExecutionProvider" in ort.get_available_providers():
                with contextlib.redirect_stdout(said):
                    ort.preload_dlls()
        except Exception as e:  # a broken install: the session's own check says what is missing
            said.write(f"{type(e).__name__}: {e}")
        text = re.sub(r"\x1b\[[0-9;]*m", "", said.getvalue())
        _GPU_LIBS.append([ln.strip() for ln in text.splitlines() if ln.strip()])
    return _GPU_LIBS[0]


def open_session(path, providers=None, threads=None, profile_prefix=None, config=None):
    """An onnxruntime session for a model file (or its bytes); providers: names or (name, options) pairs
    (default CPU); config: extra session config entries."""
    import onnxruntime as ort

    so = session_options(threads, config)
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    providers = [(p, {}) if isinstance(p, str) else p for p in providers or ["CPUExecutionProvider"]]
    if any(n in GPU_PROVIDERS for n, _ in providers):
        # one that is missing or cannot load is left out, as onnxruntime would leave it (check_active says
        # why), without the warnings and the lines on stdout onnxruntime gives when it does so
        providers = provider_status(providers, required=[])[0] or [("CPUExecutionProvider", {})]
    src = path if isinstance(path, bytes) else str(path)
    return keep_fp_env(lambda: ort.InferenceSession(src, so, providers=[n for n, _ in providers],
                                                    provider_options=[dict(o) for _, o in providers]))


_LIBM = []  # [the C maths library] once looked up, or [None] where there is none


def _libm():
    # find_library runs ldconfig in a subprocess: once per process, not once per session
    if not _LIBM:
        import ctypes
        import ctypes.util

        try:
            _LIBM.append(ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6"))
        except OSError:
            _LIBM.append(None)
    return _LIBM[0]


def keep_fp_env(create):
    """create(), then give the calling thread back its floating-point environment (MXCSR / FPCR).

    With set_denormal_as_zero and an explicit thread count, onnxruntime also sets flush-to-zero on the
    thread that creates the session; that would silently change the caller's numpy and torch arithmetic
    for the rest of the process. The pool threads keep it, and they are where the time goes.
    """
    import ctypes

    libm = _libm()
    env = ctypes.create_string_buffer(512)  # larger than any fenv_t
    try:
        if libm is None or libm.fegetenv(env) != 0:
            return create()
    except AttributeError:  # no C99 fenv here: nothing to restore with
        return create()
    try:
        return create()
    finally:
        libm.fesetenv(env)


def check_active(sess, providers, required) -> str | None:
    """Why the session is not what was asked (onnxruntime drops an unusable GPU provider quietly), or None."""
    active = sess.get_providers()
    for n in required:
        if n not in active:
            _, _, missing = provider_status([(n, {})])
            if missing:  # not in this onnxruntime, or its library cannot load here
                return missing
            if n in GPU_PROVIDERS:
                failed = [ln for ln in _GPU_LIBS[0] if "fail" in ln.lower()] if _GPU_LIBS else []
                libs = f"; loading CUDA libraries: {failed[0]}" if failed else ""
                return (f"no CUDA device: onnxruntime created the session without {n} "
                        f"(active: {', '.join(active)}; is an NVIDIA GPU with CUDA/cuDNN present?){libs}")
            return f"{n} could not be initialised (active: {', '.join(active)})"
    return None


class BatchConflict(ValueError):
    """The batch asked for is not the one a fixed-batch model was exported with."""


class InputsNeeded(ValueError):
    """Generated inputs would need a size nobody can know (a symbolic H or W): real inputs are required."""


def _fmt_shape(shape) -> str:
    return "[" + ", ".join("?" if d is None or d == "" else str(d) for d in shape) + "]"


def _fixed(d) -> bool:
    return isinstance(d, int) and d > 0


def fixed_batch(ins) -> int | None:
    """The batch a fixed-batch model always runs (axis 0 of its inputs, as exported), or None if dynamic.

    One input with a dynamic axis 0 makes the model dynamic (an [N, ...] input next to a [1, ...] state);
    rank-1 inputs count only when there is nothing else, as a fixed [1] there is usually a scalar knob.
    """
    firsts = [inp.shape[0] for inp in ins if len(inp.shape) >= 1]
    if not firsts or not all(_fixed(d) for d in firsts) or no_batch_axis(ins):
        return None
    return max([inp.shape[0] for inp in ins if len(inp.shape) >= 2] or firsts)


def no_batch_axis(ins) -> bool:
    """Only fixed vectors ([16]: a feature vector a module was called on unbatched): axis 0 is the
    features, not a batch of 16, and each run is one sample."""
    ranked = [inp for inp in ins if len(inp.shape) >= 1]
    return (bool(ranked) and all(len(inp.shape) == 1 and _fixed(inp.shape[0]) for inp in ranked)
            and max(inp.shape[0] for inp in ranked) > 1)


def unbatched_note(ins, outputs, ran: int) -> str | None:
    """Why a fixed axis 0 of ran > 1 is not a batch (no output keeps it: an unbatched [3, 8, 8] image
    whose outputs have other leading sizes), or None when it may well be one."""
    if ran <= 1 or fixed_batch(ins) != ran:
        return None
    tensors = [np.asarray(v) for v in outputs if isinstance(v, np.ndarray) and v.dtype != object]
    if not tensors or any(v.ndim and v.shape[0] == ran for v in tensors):
        return None
    inp = next(i for i in ins if len(i.shape) >= 1 and i.shape[0] == ran)
    return (f"input {inp.name!r} is {_fmt_shape(inp.shape)} and no output keeps its axis 0 of {ran}: "
            "timed as one sample per run, not a batch of {ran}".replace("{ran}", str(ran)))


def batch_conflict(ins, batch: int) -> str | None:
    """Why `batch` cannot run on this model (its batch is fixed at another value), or None."""
    fixed = fixed_batch(ins)
    if fixed is None or batch == fixed:
        return None
    inp = next(i for i in ins if len(i.shape) >= 1 and i.shape[0] == fixed)
    return (f"the model has a fixed batch of {fixed} (input {inp.name!r} is {_fmt_shape(inp.shape)}); "
            f"cannot run batch {batch}")


def run_batch(ins, batch: int = 1) -> int:
    """The batch a run actually processes, which is what throughput must be computed from.

    A fixed-batch model always runs its own batch. batch 1 is the default everywhere (--batch, single
    samples in fit_feeds, cmd_run, selftest), so it stands for "the model's own"; any other batch that
    differs is refused rather than timed at one batch and reported as another.
    """
    if no_batch_axis(ins):
        if batch != 1:
            inp = max((i for i in ins if len(i.shape) == 1), key=lambda i: i.shape[0])
            raise BatchConflict(f"the model has no batch axis (input {inp.name!r} is {_fmt_shape(inp.shape)}: "
                                f"one sample per run); cannot run batch {batch}")
        return 1
    fixed = fixed_batch(ins)
    if fixed is None:
        return batch
    if batch not in (1, fixed):
        raise BatchConflict(batch_conflict(ins, batch))
    return fixed


def feed_shapes(ins, batch: int = 1) -> dict:
    """{input name: shape} for generated inputs: axis 0 the run's batch, sequence-like dims SEQ_DEFAULT.

    Any other symbolic dim (an image's height and width) has no size that works for every model, and a
    guess of 1 breaks every convolution: InputsNeeded names the input and its dims instead.
    """
    b = run_batch(ins, batch)
    shapes = {}
    for inp in ins:
        shape, unknown = [], []
        for i, d in enumerate(inp.shape):
            if _fixed(d):
                shape.append(d)
            elif i == 0:
                shape.append(b)
            elif _SEQ_DIM.search(str(d or "")) or (i == 1 and re.search(r"ids|mask|seq|token", inp.name, re.I)):
                shape.append(SEQ_DEFAULT)
            else:
                unknown.append(str(d) if d else f"axis {i}")
        if unknown:
            raise InputsNeeded(f"input {inp.name!r} {_fmt_shape(inp.shape)} has symbolic dims "
                               f"{', '.join(unknown)} whose size cannot be guessed; pass real inputs "
                               "(--inputs FILE.npz)")
        shapes[inp.name] = shape
    return shapes


def make_feeds(sess, batch: int = 1, seed: int = 0) -> dict:
    """Seeded inputs of the right shape and dtype (see feed_shapes)."""
    rng = np.random.default_rng(seed)
    ins = sess.get_inputs()
    shapes = feed_shapes(ins, batch)
    feeds = {}
    for inp in ins:
        dtype = ORT_DTYPES.get(inp.type)
        if dtype is None:
            raise ValueError(f"input {inp.name!r} has type {inp.type}, which cannot be generated; pass inputs")
        shape = shapes[inp.name]
        lname = inp.name.lower()
        if dtype.startswith("float"):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == "bool" or "mask" in lname:
            feeds[inp.name] = np.ones(shape, dtype=dtype)
        elif "type" in lname or "segment" in lname or "position" in lname:
            feeds[inp.name] = np.zeros(shape, dtype=dtype)
        else:
            # token ids and other integers: 0 and 1 are inside every embedding table (a 50-row one
            # rejects id 85) and every Gather axis; a kernel's speed does not depend on which row it reads
            feeds[inp.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds


def castable(src, dst) -> bool:
    """Safe casts plus float -> narrower float and integer/bool -> any number; never float -> integer,
    which truncates ids silently. The rule of edgekit.calibration._castable (this file cannot import it)."""
    src, dst = np.dtype(src), np.dtype(dst)
    if np.can_cast(src, dst, casting="safe"):
        return True
    return (src.kind == "f" and dst.kind == "f") or (src.kind in "iub" and dst.kind in "iuf")


def pick_input(ins, feeds: dict, inp):
    """The value in feeds for model input inp: by name, or the only one when both sides have one."""
    if inp.name in feeds:
        arr, key = feeds[inp.name], inp.name
    elif len(ins) == 1 and len(feeds) == 1:
        key, arr = next(iter(feeds.items()))
    else:
        have = ", ".join(sorted(str(k) for k in feeds)) or "none"
        raise ValueError(f"inputs lack {inp.name!r} (have {have})")
    if arr is None:
        where = "" if key == inp.name else f" (given as {key!r})"
        raise ValueError(f"input {inp.name!r}{where} is None, not an array")
    return arr


def fit_feeds(sess, feeds: dict, batch: int = 1) -> dict:
    """Real data shaped for this session: pick its inputs by name (or the only one), cast, set the batch."""
    out = {}
    ins = sess.get_inputs()
    b = run_batch(ins, batch)
    for inp in ins:
        arr = np.asarray(pick_input(ins, feeds, inp))
        dtype = ORT_DTYPES.get(inp.type)
        if dtype and arr.dtype != dtype:
            if np.dtype(dtype).kind == "b" and arr.dtype.kind in "iu":
                # 0/1 integer masks for a bool input, as edgekit.calibration accepts them
                if arr.size and not np.isin(arr, (0, 1)).all():
                    raise ValueError(f"input {inp.name!r} is bool in the model; integer data for it must be 0 or 1")
            elif not castable(arr.dtype, dtype):
                raise ValueError(f"input {inp.name!r} has dtype {arr.dtype}; the model wants {dtype} "
                                 "and that cast would lose information")
            arr = arr.astype(dtype)
        if arr.ndim != len(inp.shape):
            raise ValueError(f"input {inp.name!r}: got rank {arr.ndim}, model wants {list(inp.shape)}")
        for ax, (got, want) in enumerate(zip(arr.shape[1:], inp.shape[1:]), start=1):
            if _fixed(want) and got != want:
                raise ValueError(f"input {inp.name!r}: got shape {list(arr.shape)}, model wants "
                                 f"{_fmt_shape(inp.shape)} (axis {ax}: {got} != {want})")
        d0 = inp.shape[0] if inp.shape else None
        want = d0 if _fixed(d0) else b
        if arr.ndim and arr.shape[0] != want:
            reps = -(-want // arr.shape[0])
            arr = np.concatenate([arr] * reps, axis=0)[:want]
        if _fixed(d0) and b != d0 and b != 1:
            raise ValueError(f"input {inp.name!r} has a fixed batch of {d0}; cannot run batch {b}")
        out[inp.name] = np.ascontiguousarray(arr)
    return out


RUN_CHUNK = 64  # samples per session.run for a model with a dynamic batch (bounds memory, not results)


def split_samples(sess, feeds: dict) -> tuple[dict, set, int]:
    """({input name: array}, names of the inputs that carry one row per sample, sample count).

    Every input carries samples along axis 0, except one declared with a fixed axis 0 next to
    dynamic ones (a state or a knob, the same for every sample). Inputs that disagree on the
    count are refused: pairing row i of one with row i of another would be a guess.
    """
    ins = sess.get_inputs()
    dynamic = fixed_batch(ins) is None
    arrays, counts = {}, {}
    for inp in ins:
        arr = np.asarray(pick_input(ins, feeds, inp))
        arrays[inp.name] = arr
        if arr.ndim >= 1 and not (dynamic and inp.shape and _fixed(inp.shape[0])):
            counts[inp.name] = arr.shape[0]
    if len(set(counts.values())) > 1:
        raise ValueError("inputs hold different numbers of samples ("
                         + ", ".join(f"{k}: {v}" for k, v in counts.items())
                         + "); give every input the same leading sample axis")
    n = next(iter(counts.values()), 1)
    if n == 0:
        raise ValueError("inputs hold no samples (leading axis 0)")
    return arrays, set(counts), n


def run_samples(sess, feeds: dict) -> tuple[dict, int]:
    """Run every sample in feeds (leading axis) and return ({output name: all rows}, sample count).

    A model with a dynamic batch runs RUN_CHUNK samples at a time (one at a time if it fails on
    more, as a model exported with a batch-1 reshape does); a fixed-batch model runs its own batch,
    the last one padded by repeating rows, which are dropped from the outputs.
    """
    arrays, per_sample, n = split_samples(sess, feeds)
    fixed = fixed_batch(sess.get_inputs())
    step = fixed or min(n, RUN_CHUNK)
    try:
        return _run_chunks(sess, arrays, per_sample, n, step, fixed), n
    except _RunFailed as e:
        if fixed or step == 1:
            raise e.error from None
        first = e.error
    try:
        return _run_chunks(sess, arrays, per_sample, n, 1, None), n
    except _RunFailed:
        raise first from None  # not the batch's fault: the error as the full batch met it


class _RunFailed(Exception):
    """session.run raised (the inputs themselves were fine): error holds what it raised."""

    def __init__(self, error):
        super().__init__(str(error))
        self.error = error


def _run_chunks(sess, arrays, per_sample, n, step, fixed) -> dict:
    names = [o.name for o in sess.get_outputs()]
    parts = {k: [] for k in names}
    for start in range(0, n, step):
        m = min(step, n - start)
        chunk = {k: (v[start:start + m] if k in per_sample else v) for k, v in arrays.items()}
        ran = fixed or m
        fed = fit_feeds(sess, chunk, 1 if fixed else m)
        try:
            outs = sess.run(None, fed)
        except Exception as e:
            raise _RunFailed(e) from None
        for k, v in zip(names, outs):
            v = np.asarray(v)
            batched = v.ndim >= 1 and v.shape[0] == ran
            parts[k].append((v[:m] if batched else v, batched))
    result = {}
    for k, vs in parts.items():
        if len(vs) == 1:
            result[k] = vs[0][0]
        elif all(b for _, b in vs) and len({v.shape[1:] for v, _ in vs}) == 1:
            result[k] = np.concatenate([v for v, _ in vs], axis=0)
        else:  # an output without a batch axis: one value per run
            result[k] = np.stack([v for v, _ in vs])
    return result


# ---------------------------------------------------------------- ONNX Runtime profiler output

def parse_ort_profile(events, skip_runs: int = 1) -> dict:
    """Per-node kernel times and providers from onnxruntime's profiler JSON (a list of trace events).

    The first `skip_runs` model runs (allocation, kernel selection) are left out; each node's
    time is its median over the remaining runs, so one preempted run on a busy machine does not
    skew the breakdown. Returns {"runs", "nodes": [{name, op_type, provider, ms}],
    "op_breakdown": {op_type: ms per run}, "providers_by_node": {provider: node count}}.
    """
    import bisect

    starts = sorted(e.get("ts", 0) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    counted = max(1, len(starts) - skip_runs)
    per: dict = {}  # (node, op, provider) -> {run index: us}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        args = e.get("args", {})
        key = (e["name"][: -len("_kernel_time")], args.get("op_name", "?"), args.get("provider", "?"))
        run = bisect.bisect_right(starts, e.get("ts", 0)) - 1 if starts else 0
        runs = per.setdefault(key, {})
        if run >= skip_runs or not starts:
            runs[run] = runs.get(run, 0.0) + float(e.get("dur", 0))
    nodes = []
    for (n, op, prov), runs in per.items():
        vals = list(runs.values()) + [0.0] * max(0, counted - len(runs))  # a run without the node: 0
        nodes.append({"name": n, "op_type": op, "provider": prov,
                      "ms": float(np.median(vals)) / 1000.0 if vals else 0.0})
    nodes.sort(key=lambda x: -x["ms"])
    ops: dict = {}
    by_prov: dict = {}
    for n in nodes:
        ops[n["op_type"]] = ops.get(n["op_type"], 0.0) + n["ms"]
        by_prov[n["provider"]] = by_prov.get(n["provider"], 0) + 1
    return {"runs": counted, "nodes": nodes, "providers_by_node": by_prov,
            "op_breakdown": dict(sorted(ops.items(), key=lambda kv: -kv[1]))}


def op_profile(path, feeds: dict, *, providers=None, threads=None, runs: int = 10) -> dict:
    """Run a profiling session (apart from the timed ones: the profiler adds overhead) and parse it."""
    with tempfile.TemporaryDirectory(prefix="edgekit-prof-") as d:
        sess = open_session(path, providers, threads, profile_prefix=os.path.join(d, "p"))
        for _ in range(runs + 1):
            sess.run(None, feeds)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    return parse_ort_profile(events, skip_runs=1)


# ---------------------------------------------------------------- interleaved timing

BLOCK_RUNS = 5  # timed runs of one model in a row, after one untimed run on each switch
# With settle: the slowest model's block lasts about this long, as each switch first waits for the idle ones' threads
SETTLE_BLOCK_S = 0.05
SETTLE_MAX_S = 0.25  # the longest wait for them; a window with under a quarter of its time in CPU is quiet
SETTLE_WINDOW_S = 0.005


def wait_idle(max_s: float = SETTLE_MAX_S, window: float = SETTLE_WINDOW_S) -> float:
    """Sleep until no thread of this process used CPU for a `window` (the thread pools of the sessions
    that just ran have stopped spin-waiting), at most max_s; returns the seconds waited."""
    clock = time.perf_counter
    t0 = clock()
    while clock() - t0 < max_s:
        c0 = time.process_time()  # every thread of the process
        time.sleep(window)
        if time.process_time() - c0 < window / 4:
            break
    return clock() - t0


def timed_loop(fns: dict, *, warmup=5, min_runs=30, min_seconds=1.0, max_seconds=30.0, settle=False) -> dict:
    """Call fns[label](i) in blocks, round-robin, until every label has min_runs timed runs and
    min_seconds passed (or max_seconds).

    Each block is one untimed run and BLOCK_RUNS timed ones: run by run, a small model always ran on
    the caches a big one had just flushed (mlp_dyn next to a 40 MB Linear: p50 0.095 ms against
    0.021 ms alone). Blocks still alternate who goes first, so a busy machine slows them alike.
    settle: the sessions keep their threads spinning after a run (as deployed); each switch then first
    waits until the last model's threads have stopped (wait_idle), and blocks are long enough for the
    slowest model's to last SETTLE_BLOCK_S (by its last warm-up run), the same run count for all.
    """
    labels = list(fns)
    clock = time.perf_counter
    slowest = 0.0  # the longest run of the last warm-up round
    for i in range(warmup):
        for k in labels:
            t0 = clock()
            fns[k](i)
            if i == warmup - 1:
                slowest = max(slowest, clock() - t0)
    times = {k: [] for k in labels}
    t_start = clock()
    switch = len(labels) > 1
    # settled blocks: one run count for every model (equal turns), so that the slowest one's lasts SETTLE_BLOCK_S
    runs_per_block = BLOCK_RUNS
    if settle and switch and slowest > 0:
        runs_per_block = max(BLOCK_RUNS, min(1000, int(-(-SETTLE_BLOCK_S // slowest))))
    r = 0
    while True:
        for k in (labels if r % 2 == 0 else labels[::-1]):  # alternate who goes first
            n = len(times[k])
            if switch:
                if settle:
                    wait_idle()
                fns[k](n)  # refills the caches the other models evicted (and wakes this model's threads)
            block = min(runs_per_block, min_runs - n) if n < min_runs else runs_per_block  # --runs N: exactly N
            for j in range(n, n + block):
                t0 = clock()
                fns[k](j)
                times[k].append((clock() - t0) * 1000.0)
                if clock() - t_start >= max_seconds:
                    break  # the round still ends: every model gets a timed run before the loop stops
        r += 1
        elapsed = clock() - t_start
        if (min(len(t) for t in times.values()) >= min_runs and elapsed >= min_seconds) or elapsed >= max_seconds:
            return times


def bench_models(models: dict, inputs=None, *, providers=None, required=None, threads=None, batch=1,
                 warmup=5, min_runs=30, min_seconds=1.0, max_seconds=30.0, op_runs=10,
                 keep_outputs=False, settle=True) -> dict:
    """Measure several ONNX models interleaved in this process: {label: measurement or status}.

    inputs: list of feed dicts (cycled through), or {label: list of feed dicts} when the models take
    different inputs, or None to generate them per model (as for a label missing from the dict).
    providers: [(name, options)] in preference order; required: names that must be active.
    settle: several models keep spinning after a run, as deployed, and each switch waits for the idle
    ones' threads (timed_loop); False stops every session's spinning when a run returns instead (the
    speed gate's and tuning's setting, whose statistics were measured with it).
    """
    import onnxruntime as ort

    providers = [(n, dict(o)) for n, o in (providers or [("CPUExecutionProvider", {})])]
    usable, missing, reason = provider_status(providers, required)
    if reason:
        return {k: {"status": "unavailable", "reason": reason} for k in models}
    required = [n for n, _ in providers] if required is None else list(required)
    res, sess, feeds, batches = {}, {}, {}, {}
    notes = {}
    cannot = [f"{n} cannot load ({_LIB_PROBLEMS[n]})" for n in missing if _LIB_PROBLEMS.get(n)]
    if cannot:
        notes["providers_note"] = "; ".join(cannot) + "; ran without it"
    usable = _drop_failing_optional(models, usable, required, threads, missing, notes)
    _warm_runtime(models, usable, threads)
    # the peak is then the measurement's; where it cannot be reset it is the process's lifetime peak
    base_rss = settled_rss_mb() or current_rss_mb()
    base_rss = base_rss if reset_peak_rss() else None
    colds = cold_starts(models, usable, threads, inputs, batch)
    # one model timed alone keeps onnxruntime's spinning after each run, as a deployed loop with default
    # options runs it: stopping it cost sub-millisecond models 8-16% there and a 4 ms one 0-2%
    # (benchmarks/profile/deploy_spinning.py). Several do too when each switch waits for the last one's
    # threads to stop (settle): left spinning without that wait, an idle model's threads slowed the one
    # being timed 1.4-2.2x (spinning.py); stopped after every run, digits-cnn's FP32 and INT8 read 12-13%
    # above their deployed loops side by side, settled 1.5-7% below (deploy_spinning.py, 23:52).
    settle = bool(settle) and len(models) > 1
    config = ALONE_CONFIG if len(models) == 1 or settle else None
    for label, path in models.items():
        try:
            rss0 = settled_rss_mb()
            t0 = time.perf_counter()
            s = open_session(path, usable, threads, config=config)
            why = check_active(s, usable, required)
            if why:
                res[label] = {"status": "unavailable", "reason": why}
                continue
            try:
                batches[label] = run_batch(s.get_inputs(), batch)
            except BatchConflict as e:  # not a broken model: this batch does not exist for it
                res[label] = {"status": "unavailable", "reason": str(e)}
                continue
            mine = _inputs_of(inputs, label)
            fl = [fit_feeds(s, f, batch) for f in mine] if mine else [make_feeds(s, batch)]
            first = s.run(None, fl[0])
            cold = (time.perf_counter() - t0) * 1000.0
            rss1 = settled_rss_mb()
        except Exception as e:  # a model that cannot load or run is reported, the others still measured
            res[label] = {"status": "failed", "reason": _one_line(e)}
            continue
        sess[label], feeds[label] = s, fl
        res[label] = {"status": "ok", "provider": s.get_providers()[0], "providers_active": s.get_providers(),
                      "providers_missing": missing, "cold_start_ms": colds[label][0] if label in colds else cold,
                      "cold_start_runs": colds[label][1] if label in colds else 1, **notes,
                      "rss_delta_mb": (rss1 - rss0) if rss0 is not None and rss1 is not None else None}
        why = unbatched_note(s.get_inputs(), first, batches[label])
        if why:  # throughput is samples per second: a [3, 8, 8] image is one sample, not three
            batches[label] = 1
            res[label]["batch_note"] = why
        if keep_outputs:
            res[label]["_outputs"] = {o.name: v for o, v in zip(s.get_outputs(), first)}
    if sess:
        fns = {k: (lambda i, s=s, fl=feeds[k]: s.run(None, fl[i % len(fl)])) for k, s in sess.items()}
        times = timed_loop(fns, warmup=warmup, min_runs=min_runs, min_seconds=min_seconds,
                           max_seconds=max_seconds, settle=settle)
        if settle:
            wait_idle()  # the last model's threads, before the per-operator profiles
        peak = peak_rss_mb()
        for k, t in times.items():
            res[k].update(summarize(t, batches[k]))
            res[k]["samples_ms"] = [round(x, 5) for x in t]
            # the process's peak while measuring, all models loaded, and its RSS before: rss_delta_mb is per model
            res[k]["peak_rss_mb"] = peak
            if base_rss is not None:
                res[k]["base_rss_mb"] = base_rss
    for k in list(sess):
        if op_runs:
            try:
                prof = op_profile(models[k], feeds[k][0], providers=usable, threads=threads, runs=op_runs)
            except Exception as e:
                res[k]["op_profile_error"] = f"{type(e).__name__}: {e}"
                continue
            main = res[k]["provider"]
            res[k]["op_breakdown"] = prof["op_breakdown"]
            res[k]["op_runs"] = prof["runs"]
            res[k]["providers_by_node"] = prof["providers_by_node"]
            res[k]["fallback_nodes"] = sum(c for p, c in prof["providers_by_node"].items() if p != main)
            res[k]["nodes"] = prof["nodes"]
    for k in sess:  # facts about a measurement; an unavailable/failed entry keeps only its reason
        res[k]["threads"] = threads
        res[k]["batch"] = batches[k]  # what ran, not what was asked: a fixed-batch model runs its own
        res[k]["onnxruntime"] = ort.__version__
        res[k]["session_config"] = {**SESSION_CONFIG, **(config or {})}
        if len(sess) > 1:
            res[k]["settle"] = settle
        res[k]["machine"] = platform.machine()
        res[k]["device_cpu"] = cpu_model()
    return res


def _inputs_of(inputs, label):
    return inputs.get(label) if isinstance(inputs, dict) else inputs


COLD_REPEATS = 5
COLD_BUDGET_MS = 1000.0  # a model's cold starts stop repeating past this: a long one is timed once


def cold_starts(models: dict, providers, threads, inputs, batch) -> dict:
    """{label: (median ms, sessions timed)}: each model's cold start up to COLD_REPEATS times, in rounds
    that alternate the order. One session each left whatever stall a busy host dealt it in one model's
    figure: three copies of one model read 12-28 ms for one of them and about 2 ms for the others on a
    loaded host (stalls of 15-50 ms hit about one session in five), and alike on an idle one."""
    samples = {label: [] for label in models}
    failed = set()
    order = list(models)
    for r in range(COLD_REPEATS):
        for label in (order if r % 2 == 0 else order[::-1]):
            done = samples[label]
            if label in failed or sum(done) > COLD_BUDGET_MS:
                continue
            try:
                done.append(cold_start(models[label], providers, threads, _inputs_of(inputs, label), batch))
            except Exception:
                failed.add(label)  # the timed session meets the same error and reports it
    return {k: (statistics.median(v), len(v)) for k, v in samples.items() if v}


def cold_start(path, providers, threads, inputs, batch) -> float:
    """ms to open a session and finish its first run, with no other session alive.

    Measured in a session of its own, dropped before the next model's: the sessions kept for timing
    each have a thread pool whose workers spin-wait after every run, so a model opened after two
    others shared the cores with them and read 10-20x the first one's cold start (three copies of one
    model: 2.6, 31.8 and 53.3 ms).
    """
    t0 = time.perf_counter()
    s = open_session(path, providers, threads)
    s.run(None, fit_feeds(s, inputs[0], batch) if inputs else make_feeds(s, batch))
    ms = (time.perf_counter() - t0) * 1000.0
    del s  # joins its thread pool now, before anything else is timed
    return ms


def _one_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


def _drop_failing_optional(models, usable, required, threads, missing: list, notes: dict) -> list:
    """An optional provider (TensorRT without its libraries) that breaks session creation is dropped,
    and said so in the results; a required one is never dropped (the session then fails or is unavailable)."""
    optional = [n for n, _ in usable if n not in required]
    if not optional:
        return usable
    path = next(iter(models.values()))
    try:
        open_session(path, usable, threads)
        return usable
    except Exception as e:
        kept = [(n, o) for n, o in usable if n in required]
        try:
            open_session(path, kept, threads)
        except Exception:
            return usable  # not the optional provider's fault: let each model report its own failure
        missing.extend(optional)
        notes["providers_note"] = f"{', '.join(optional)} failed to initialise ({_one_line(e)}); ran without it"
        return kept


def _warm_runtime(models: dict, providers, threads) -> None:
    """Create, run once and drop one session first: onnxruntime's one-time set-up (thread pools, provider
    libraries, the first run's kernel initialisation) then lands in no model's cold start, so cold starts
    compare like for like (the first of two identical models read 12 ms, the second 1.6 ms)."""
    for path in models.values():
        try:
            s = open_session(path, providers, threads)
        except Exception:
            continue
        try:
            s.run(None, make_feeds(s))
        except Exception:
            pass  # inputs that cannot be generated: the session's own set-up was still paid
        return


# ---------------------------------------------------------------- command line

LABEL_KEYS = ("y", "labels")  # arrays of an inputs .npz that are labels, not model inputs


def _load_npz(path):
    """An .npz of inputs: keys NAME, one feed dict for every model ([dict]); or keys LABEL::NAME, each
    model its own ({label: [dict]}), as models with different inputs need."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k not in LABEL_KEYS}
    if not arrays:
        return None  # nothing given: each model generates its own (an empty feed dict fitted none)
    if not any("::" in k for k in arrays):
        return [arrays]
    per = {}
    for key, v in arrays.items():
        label, _, name = key.partition("::")
        per.setdefault(label, {})[name] = v
    return {label: [f] for label, f in per.items()}


def _labelled(specs) -> dict:
    out = {}
    for i, s in enumerate(specs):
        label, sep, path = s.partition("=")
        if not sep or os.path.exists(s):
            label, path = (os.path.splitext(os.path.basename(s))[0] if len(specs) == 1 else f"m{i}"), s
        out[label] = path
    return out


def stopped_before_start(pid_file) -> bool:
    """Write this process's id to pid_file (if given), so a caller in another session can stop it; True when
    the caller already gave up (its stop mark, PID_FILE.stop, is there), having found no pid to signal."""
    if not pid_file:
        return False
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    if os.path.exists(pid_file + ".stop"):
        print(json.dumps({"status": "stopped", "ok": False, "reason": "stopped by the caller before it started"}))
        return True
    return False


def cmd_bench(a) -> int:
    if stopped_before_start(a.pid_file):
        return 130
    models = _labelled(a.model)
    inputs = _load_npz(a.inputs) if a.inputs else None
    if a.runs:
        a.min_runs, a.min_seconds, a.max_seconds = a.runs, 0.0, 1e9
    providers = json.loads(a.providers) if a.providers else None
    if providers is not None:
        providers = [(p["name"], p.get("options", {})) if isinstance(p, dict) else (p, {}) for p in providers]
    required = a.required.split(",") if a.required else None
    res = bench_models(models, inputs, providers=providers, required=required, threads=a.threads,
                       batch=a.batch, warmup=a.warmup, min_runs=a.min_runs, min_seconds=a.min_seconds,
                       max_seconds=a.max_seconds, op_runs=a.op_runs, keep_outputs=bool(a.outputs),
                       settle=not a.no_settle)
    if a.outputs:
        # tensors only: a sequence of maps (ZipMap) would be pickled, which no reader loads
        flat = {f"{k}::{n}": v for k, r in res.items() for n, v in r.pop("_outputs", {}).items()
                if isinstance(v, np.ndarray) and v.dtype != object}
        np.savez(a.outputs, **flat)
    if not a.keep_nodes:
        for r in res.values():
            r.pop("nodes", None)
    if len(models) == 1 and not a.always_dict:
        out = next(iter(res.values()))
    else:
        out = {"status": "ok" if all(r["status"] == "ok" for r in res.values()) else "partial", "results": res}
    print(json.dumps(out))
    return 0 if any(r["status"] == "ok" for r in res.values()) else 1


def _load_arrays(path) -> dict:
    """{name: array} from an .npz (labels "y"/"labels" left out) or {"input": array} from an .npy."""
    data = np.load(path, allow_pickle=False)
    if isinstance(data, np.ndarray):
        return {"input": data}
    with data as z:
        arrays = {k: z[k] for k in z.files if k not in LABEL_KEYS}
    if not arrays:
        raise ValueError(f"{path}: holds no input arrays")
    return arrays


def find_bundle(model=None, bundle=None) -> tuple[str, dict | None, str | None]:
    """(model path, bundle.json or None, bundle directory or None) for `run`.

    --bundle DIR names the bundle (its model unless --model says otherwise); without it, a
    bundle.json beside the model that names that model file makes it a bundle's model.
    """
    root = os.path.abspath(bundle) if bundle is not None else None
    if root is None and model is not None:
        here = os.path.dirname(os.path.abspath(model))
        if os.path.isfile(os.path.join(here, "bundle.json")):
            root = here
    meta = None
    if root is not None:
        with open(os.path.join(root, "bundle.json")) as f:
            meta = json.load(f)
        if model is None:
            model = os.path.join(root, meta["model"])
        elif bundle is None and os.path.basename(model) != meta.get("model"):
            root, meta = None, None  # another model that merely sits in a bundle's directory
    if model is None:
        raise ValueError("run needs --model M or --bundle DIR")
    return model, meta, root


def _numba_cache_dir(root: str) -> str | None:
    """A writable directory outside the bundle for Numba's kernel cache, one per bundle: its real path,
    since `current` is a symlink that moves to each new version and flashed files all carry mtime 0, and
    older Numba tells sources apart by path, mtime and size only. None if none can be made.

    Numba loads its index files with pickle, so whoever can write into this directory runs code as this
    user: when the user's own cache dir cannot be made (read-only home on a device), the fallback is a
    folder of this user's alone in the temp dir, else a private one for this process only."""
    real = os.path.realpath(root)
    name = f"{os.path.basename(real)}-{hashlib.sha256(real.encode()).hexdigest()[:12]}"
    base = os.environ.get("EDGEKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgekit")
    shared = os.path.join(tempfile.gettempdir(), f"edgekit-numba-{os.getuid()}")
    for parent in (os.path.join(base, "numba"), shared):
        if parent == shared and not _private_dir(shared):
            continue
        d = os.path.join(parent, name)
        try:
            os.makedirs(d, exist_ok=True)
            tempfile.TemporaryFile(dir=d).close()
        except OSError:
            continue
        _drop_orphan_caches(parent, keep=name)
        _mark_source(d, real)
        return d
    return _process_cache_dir(shared)


def _private_dir(path: str) -> bool:
    """Whether path is (made if missing) a real directory of this user that no one else can write into:
    a name in the shared temp dir can be made first by anyone, or be a symlink to their folder."""
    import stat

    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def _process_cache_dir(shared: str) -> str | None:
    """A fresh private cache for this process alone, removed at exit: kernels compile on every run."""
    import atexit
    import shutil

    try:
        d = tempfile.mkdtemp(prefix="edgekit-numba-")
    except OSError:
        return None
    atexit.register(shutil.rmtree, d, True)
    print(f"edgekit_runner: note: no private Numba cache dir ({shared} is not a folder of this user's alone, "
          "and $EDGEKIT_CACHE or ~/.cache cannot be written): pre/post kernels compile on every run",
          file=sys.stderr)
    return d


def _mark_source(d: str, real: str) -> None:
    """Record the real path of the version d serves, whole or not at all: another runner reading half a
    path would take the version for gone. mkstemp, as a planted name there must not be written through."""
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{SOURCE_MARK}-")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as f:
            f.write(real)
        os.replace(tmp, os.path.join(d, SOURCE_MARK))
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


SOURCE_MARK = "edgekit-source"  # in each bundle's Numba cache: the real path of the version it serves


def _drop_orphan_caches(parent: str, keep: str) -> None:
    """Remove the Numba caches of versions no longer on the device: flash retention removes old
    versions, and each one's compiled kernels would otherwise stay here forever. A cache without its
    mark (another runner is just making it, or something not ours) is left alone."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for n in names:
        d = os.path.join(parent, n)
        if n == keep or os.path.islink(d):
            continue
        try:
            with open(os.path.join(d, SOURCE_MARK)) as f:
                src = f.read()
        except OSError:
            continue
        if src and not os.path.exists(src):
            import shutil

            shutil.rmtree(d, ignore_errors=True)


def import_prepost(root: str, hint: str = "; pass --no-prepost for the model's own outputs"):
    """The bundle's edgekit.prepost (in root), imported so that nothing is written into the version directory
    and Numba's kernels are cached where every `run` and `warmup` of this version finds them.

    Imported only when needed: the runner itself needs only numpy and onnxruntime, and the package falls
    back to NumPy kernels where Numba is missing.
    """
    if not os.path.isfile(os.path.join(root, "edgekit", "prepost", "__init__.py")):
        raise ValueError(f"bundle.json declares pre/post steps, but {os.path.join(root, 'edgekit', 'prepost')} "
                         f"is missing{hint}")
    import importlib

    sys.dont_write_bytecode = True  # leave the flashed version directory exactly as verified
    if "numba" not in sys.modules and not os.environ.get("NUMBA_CACHE_DIR"):
        # Numba caches its kernels beside their source, in the version directory, unless told otherwise
        cache = _numba_cache_dir(root)
        if cache is not None:
            os.environ["NUMBA_CACHE_DIR"] = cache
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        return importlib.import_module("edgekit.prepost")
    except Exception as e:
        raise ValueError(f"cannot import the bundle's edgekit.prepost ({type(e).__name__}: {e}){hint}") from None


def load_prepost(root: str, spec: dict):
    """A Pipeline of edgekit.prepost built from spec, the package imported from the bundle in root."""
    return import_prepost(root).Pipeline.from_spec(spec)


def _has_steps(spec) -> bool:
    return isinstance(spec, dict) and bool(spec.get("pre") or spec.get("post"))


def _rows(v, n: int) -> bool:
    return isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == n


def postprocess_samples(pipe, outputs: dict, env: dict, n: int) -> tuple[dict, list]:
    """Run the post steps on each sample on its own (a batch of one, as a device does frame by frame).

    Results with a row per sample are stacked into N rows; results whose length varies by sample
    (detections after NMS) are concatenated, and "sample" (or KEY.sample when they differ in
    length) gives each row's sample index. Returns ({name: array}, {ragged result: its index's name}).
    """
    names = list(outputs)
    per = []
    for i in range(n):
        outs = [v[i:i + 1] if n > 1 and _rows(v, n) else v for v in outputs.values()]
        feeds = {k: (v[i:i + 1] if n > 1 and _rows(v, n) else v) for k, v in env.items()}
        r = pipe.postprocess(outs, feeds=feeds, names=names)
        per.append({k: np.asarray(v) for k, v in (r.items() if isinstance(r, dict) else [("output", r)])})
    result, ragged = {}, {}
    for key in per[0]:
        vals = [r[key] for r in per]
        if n == 1:
            result[key] = vals[0]
            continue
        if any(v.ndim == 0 for v in vals) or len({v.shape[1:] for v in vals}) != 1:
            raise ValueError(f"post-processing result {key!r} cannot be combined across samples "
                             f"(shapes {sorted({tuple(v.shape) for v in vals})}); run one sample at a time")
        result[key] = np.concatenate(vals, axis=0)
        if any(v.shape[0] != 1 for v in vals):
            ragged[key] = tuple(v.shape[0] for v in vals)
    if not ragged:
        return result, {}
    # one "sample" index when the ragged results share their rows (indices, boxes, scores of NMS)
    shared = len(set(ragged.values())) == 1 and "sample" not in result
    index = {key: np.repeat(np.arange(n, dtype=np.int64), counts) for key, counts in ragged.items()}
    names = {key: "sample" if shared else f"{key}.sample" for key in ragged}
    for key, name in names.items():
        result[name] = index[key]
    return result, names


def _grey_stack(raw, pipe):
    """[N, H, W] grey frames (what a stack of Pillow 'L' images is) as [N, H, W, 1] for an image resize:
    [30, 8, 8] was read as one 8 x 8 image of 8 channels. A last axis of 1, 3 or 4 is a channel axis."""
    raw = np.asarray(raw)
    first = pipe.pre[0].op if pipe.pre else None
    if first == "resize_normalize" and raw.ndim == 3 and raw.shape[-1] not in (1, 3, 4):
        return raw[..., None]
    return raw


def cmd_run(a) -> int:
    model, meta, root = find_bundle(a.model, a.bundle)
    spec = (meta or {}).get("prepost") or {}
    pipe = load_prepost(root, spec) if _has_steps(spec) and not a.no_prepost else None
    sess = open_session(model, threads=a.threads)
    arrays = _load_arrays(a.inputs) if a.inputs else None
    env = {}
    if pipe is not None and pipe.pre:
        if arrays is None:
            raise ValueError("the bundle's pre-processing needs a raw input: pass --inputs RAW.npy "
                             "(or --no-prepost with model inputs)")
        if len(arrays) != 1:
            raise ValueError(f"the pre-processing reads one raw input; {a.inputs} holds {len(arrays)} arrays "
                             f"({', '.join(arrays)}): pass one (.npy or a one-array .npz), or --no-prepost "
                             "with model inputs")
        fed = pipe.preprocess(_grey_stack(next(iter(arrays.values())), pipe))
        if isinstance(fed, dict):
            env = dict(fed)
        else:
            env = {sess.get_inputs()[0].name: fed}
        feeds = env
    else:
        feeds = arrays if arrays is not None else make_feeds(sess)
    outs, n = run_samples(sess, feeds)
    rep = {"status": "ok", "model": model, "out": a.out, "samples": n}
    if pipe is not None and pipe.post:
        env = {**env, **split_samples(sess, feeds)[0]}
        result, ragged = postprocess_samples(pipe, outs, env, n)
        if ragged:
            rep["sample_index"] = ragged  # these results hold a variable number of rows per sample
    else:
        result = outs
    if pipe is not None:
        rep["prepost"] = {"pre": [s.op for s in pipe.pre], "post": [s.op for s in pipe.post],
                          "backend": pipe.backend,
                          "package": os.path.dirname(os.path.abspath(sys.modules["edgekit.prepost"].__file__))}
    elif _has_steps(spec):
        rep["prepost"] = "off (--no-prepost): the model's own outputs"
    np.savez(a.out, **result)
    rep["outputs"] = {k: list(v.shape) for k, v in result.items()}
    print(json.dumps(rep))
    return 0


def cmd_warmup(a) -> int:
    """Compile (or load) the kernels of the bundle's pre/post steps into the cache `run` uses, so the first
    real run is not charged the compile. `python -m edgekit.prepost` in a bundle comes here too: on its own
    it cached the kernels inside the verified version directory (flash then called the version damaged),
    where no `run` looked for them."""
    root = os.path.abspath(a.bundle)
    with open(os.path.join(root, "bundle.json")) as f:
        spec = json.load(f).get("prepost") or {}
    if not (_has_steps(spec) or a.op):
        print(json.dumps({"status": "ok", "steps": [], "note": "bundle.json declares no pre/post steps: "
                          "run does not use edgekit.prepost, there is nothing to warm up"}))
        return 0
    pp = import_prepost(root, hint="")
    if a.op:
        res = pp.warmup_all(ops=a.op)
    else:
        pipe = pp.Pipeline.from_spec(spec)
        res = {"steps": [s.op for s in pipe.pre + pipe.post], **pipe.warmup()}
    print(json.dumps({"status": "ok", **res, "cache_dir": os.environ.get("NUMBA_CACHE_DIR")}))
    return 0


def compare(got: dict, expected: dict, atol: float) -> tuple[bool, dict]:
    """Max abs difference per output; ok when every output is within atol (and shapes match).

    NaN where the other side also has NaN, and infinities of the same sign, are equal: a model with a
    sqrt or log of a negative input is otherwise a "mismatch" against itself, and its NaN difference
    is not valid JSON. A non-finite value facing anything else is counted in "nonfinite_mismatch".
    Outputs that are not tensors (ZipMap's sequence of maps) are listed in "not_compared".
    """
    diffs, ok, skipped, nonfinite = {}, True, {}, {}
    for name, want in expected.items():
        if not isinstance(want, np.ndarray) or want.dtype == object:
            skipped[name] = f"not a tensor ({type(want).__name__})"
            continue
        have = got.get(name)
        if have is None:
            return False, {"reason": f"output {name!r} missing"}
        have = np.asarray(have)
        if have.shape != want.shape:
            return False, {"reason": f"output {name!r} has shape {list(have.shape)}, expected {list(want.shape)}"}
        if not want.size:
            d = 0.0
        elif want.dtype.kind in "fc":
            wide = np.complex128 if "c" in (want.dtype.kind, have.dtype.kind) else np.float64
            h, w = have.astype(wide), want.astype(wide)
            with np.errstate(invalid="ignore"):
                same = (h == w) | (np.isnan(h) & np.isnan(w))
                bad = ~same & ~(np.isfinite(h) & np.isfinite(w))
                d = float(np.max(np.where(same | bad, 0.0, np.abs(h - w))))
            if bad.any():
                nonfinite[name] = int(bad.sum())
                ok = False
        else:
            d = float(np.max(np.abs(have.astype(np.int64) - want.astype(np.int64))))
        diffs[name] = d
        ok = ok and d <= atol
    info = {"max_abs_diff": diffs}
    if skipped:
        info["not_compared"] = skipped
    if nonfinite:
        info["nonfinite_mismatch"] = nonfinite
        info["reason"] = "; ".join(f"output {k!r}: {n} NaN/infinite value(s) where the other side differs"
                                   for k, n in nonfinite.items())
    return ok, info


def cmd_selftest(a) -> int:
    if stopped_before_start(a.pid_file):
        return 130
    root = a.bundle
    try:
        with open(os.path.join(root, "bundle.json")) as f:
            meta = json.load(f)
        st = meta["selftest"]
        sess = open_session(os.path.join(root, meta["model"]), threads=a.threads)
        with np.load(os.path.join(root, st["inputs"]), allow_pickle=False) as z:
            feeds = fit_feeds(sess, {k: z[k] for k in z.files}, 1)
        with np.load(os.path.join(root, st["expected"]), allow_pickle=False) as z:
            expected = {k: z[k] for k in z.files}
        t0 = time.perf_counter()
        outs = sess.run(None, feeds)
        ms = (time.perf_counter() - t0) * 1000.0
    except Exception as e:
        print(json.dumps({"ok": False, "reason": f"{type(e).__name__}: {e}"}))
        return 1
    atol = float(st.get("atol", 1e-4))
    ok, info = compare({o.name: v for o, v in zip(sess.get_outputs(), outs)}, expected, atol)
    rep = {"ok": ok, "atol": atol, "run_ms": ms, "provider": sess.get_providers()[0],
           "machine": platform.machine(), **info}
    if not ok and "reason" not in rep:
        worst = max(info["max_abs_diff"].items(), key=lambda kv: kv[1])
        rep["reason"] = f"output {worst[0]!r} differs by {worst[1]:.3g} > atol {atol:g}"
    print(json.dumps(rep))
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="edgekit_runner", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="time one or more models (interleaved)")
    b.add_argument("--model", action="append", required=True, help="[LABEL=]PATH; repeat to interleave")
    b.add_argument("--inputs", help=".npz with one array per input name")
    b.add_argument("--batch", type=int, default=1, help="a fixed-batch model runs its own batch; any other "
                   "value than 1 or that batch is refused")
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--warmup", type=int, default=5)
    b.add_argument("--min-runs", type=int, default=30)
    b.add_argument("--min-seconds", type=float, default=1.0)
    b.add_argument("--max-seconds", type=float, default=30.0)
    b.add_argument("--runs", type=int, default=None, help="exactly N timed runs (overrides the three above)")
    b.add_argument("--op-runs", type=int, default=0, help="profiled runs for the per-operator breakdown")
    b.add_argument("--providers", help='JSON list of names or {"name", "options"}')
    b.add_argument("--required", help="comma-separated providers that must be active")
    b.add_argument("--outputs", help="save each model's outputs for the first input here (.npz, LABEL::NAME)")
    b.add_argument("--keep-nodes", action="store_true", help="include per-node times")
    b.add_argument("--always-dict", action="store_true", help="{results: {label: ...}} even for one model")
    b.add_argument("--pid-file", help="write this process's id here (so a caller can stop it from another session)")
    b.add_argument("--no-settle", action="store_true", help="several models: stop each session's threads when a "
                   "run returns, instead of leaving them spinning and waiting for them at each switch")
    r = sub.add_parser(
        "run", help="run a model on every sample of --inputs and save the outputs",
        description="Run every sample (leading axis) of --inputs and save one result row per sample. "
        "A bundle's model (--bundle DIR, or --model M with a bundle.json beside it naming M) runs with the "
        "bundle's pre/post steps: --inputs is then the raw input the first pre step reads (one array: an "
        "image, a batch of images, token id rows), or model inputs when there are only post steps, and "
        "--out holds the post-processed results (e.g. probs and indices of softmax_topk).")
    r.add_argument("--model", help="the .onnx to run (default: the bundle's model with --bundle)")
    r.add_argument("--bundle", help="a bundle directory (bundle.json): its model and its pre/post steps")
    r.add_argument("--inputs", help=".npz with one array per input name (or a .npy), leading axis = samples; "
                   "without it, one generated model input (only without pre steps: those need the raw input)")
    r.add_argument("--out", required=True, help=".npz of the outputs, one row per sample")
    r.add_argument("--no-prepost", action="store_true",
                   help="skip the bundle's pre/post steps: --inputs are model inputs and --out holds the model's "
                   "own outputs (as does any model outside a bundle)")
    r.add_argument("--threads", type=int, default=None)
    s = sub.add_parser("selftest", help="check a bundle's model against its expected outputs (the model alone, "
                       "without pre/post steps)")
    s.add_argument("--bundle", required=True)
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--pid-file", help="write this process's id here (so a caller can stop it from another session)")
    w = sub.add_parser("warmup", help="compile the bundle's pre/post kernels into the cache run uses")
    w.add_argument("--bundle", required=True, help="the bundle as `run --bundle` names it (current): Numba files "
                   "its cache under the path the package is imported from")
    w.add_argument("--op", action="append", help="warm up this op instead of the bundle's steps (repeatable)")
    a = ap.parse_args(argv)
    try:
        return {"bench": cmd_bench, "run": cmd_run, "selftest": cmd_selftest, "warmup": cmd_warmup}[a.cmd](a)
    except Exception as e:  # one JSON line, whatever went wrong
        print(json.dumps({"status": "failed", "ok": False, "reason": f"{type(e).__name__}: {e}"}))
        return 1


if __name__ == "__main__":
    sys.exit(main())
