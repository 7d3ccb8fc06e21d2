"""Optional Numba: lazy, cached kernels with one fixed signature each, and backend resolution.

Kernels are registered as plain Python functions with a signature factory and compiled on first
use (`get`), so importing edgekit.prepost stays cheap and a device without Numba still imports it.
One explicit signature per kernel means warm-up compiles exactly what real calls use, and a
non-contiguous input never triggers a surprise second compilation.
"""
from __future__ import annotations

import os
import threading
import time
import types
import warnings

from .errors import PrepostError, PrepostFallbackWarning

BACKENDS = ("auto", "numba", "numpy")

try:
    if os.environ.get("EDGEKIT_PREPOST_NUMBA", "1") == "0":
        raise ImportError("disabled by EDGEKIT_PREPOST_NUMBA=0")
    import numba
    from numba import types as nt  # noqa: F401  (signature factories use it)

    NUMBA_VERSION = numba.__version__
    NUMBA_ERROR = None
except Exception as _e:  # ImportError, or a broken llvmlite on an odd device
    numba = nt = None
    NUMBA_VERSION = None
    NUMBA_ERROR = f"{type(_e).__name__}: {_e}"

HAVE_NUMBA = numba is not None
prange = numba.prange if HAVE_NUMBA else range  # kernels use it as a global

_SPECS: dict = {}  # name -> (py_func, signature factory(nt) -> signature, njit options)
_COMPILED: dict = {}  # name -> numba dispatcher
_TIMES: dict = {}  # name -> seconds spent compiling or loading from the cache
_LOCK = threading.Lock()
_warned = False


def kernel(name: str, signature, **options):
    """Register `py_func` as kernel `name`; `signature(nt)` builds its Numba signature lazily."""

    def deco(py_func):
        _SPECS[name] = (py_func, signature, {"cache": True, "nogil": True, **options})
        return py_func

    return deco


def get(name: str, serial: bool = False):
    """The compiled dispatcher for kernel `name` (compiled, or loaded from Numba's cache, on first use).

    serial=True gives a parallel kernel's one-thread build: the same source without prange
    scheduling, which saves a thread launch on small inputs or when only one thread is wanted.
    """
    key = f"{name}:serial" if serial else name
    disp = _COMPILED.get(key)
    if disp is not None:
        return disp
    if not HAVE_NUMBA:
        raise PrepostError(f"backend: numba is unavailable ({NUMBA_ERROR})")
    with _LOCK:
        disp = _COMPILED.get(key)
        if disp is None:
            py_func, sig, opts = _SPECS[name]
            if serial:
                # a distinct function object and qualname so Numba's cache keeps the builds apart
                py_func = types.FunctionType(py_func.__code__, py_func.__globals__, py_func.__name__ + "_serial",
                                             py_func.__defaults__, py_func.__closure__)
                py_func.__qualname__ = py_func.__name__
                opts = {**opts, "parallel": False}
            t0 = time.perf_counter()
            disp = _compile(key, py_func, sig(nt), opts)
            _TIMES[key] = time.perf_counter() - t0
            _COMPILED[key] = disp
    return disp


def _compile(key: str, py_func, signature, opts: dict):
    """numba.njit(signature) of py_func. A damaged entry in Numba's on-disk cache (an index or data file
    cut short or overwritten) makes Numba raise whatever unpickling it met, on every later run, as an
    internal error of every command using the kernel: the entry is dropped and the kernel compiled again."""
    try:
        return numba.njit(signature, **opts)(py_func)
    except Exception as e:
        files = _cache_files(py_func, opts)
        if not files:
            raise  # nothing cached: a real compile error
        kept = [f for f in files if not _unlink(f)]
        # an entry that cannot be removed would fail again: compile without the cache then. A real compile
        # error raises here again, before any word about the cache
        disp = numba.njit(signature, **{**opts, "cache": not kept})(py_func)
        msg = str(e).splitlines()[0] if str(e) else ""
        warnings.warn(f"edgekit.prepost: dropped the damaged Numba cache entry {files[0]} ({type(e).__name__}: "
                      f"{msg[:160]}); compiled {key} again", RuntimeWarning, stacklevel=3)
        return disp


def _cache_files(py_func, opts: dict) -> list:
    """The on-disk cache files of py_func's kernel, index first ([] when unknown or none). Numba's
    cache layout is private, so any surprise here just means no files."""
    import glob

    try:
        cache_file = numba.njit(**opts)(py_func)._cache._cache_file  # lazy: compiles and reads nothing
        index = cache_file._index_path
        data = glob.glob(os.path.join(glob.escape(os.path.dirname(index)),
                                      glob.escape(os.path.basename(index)[:-len(".nbi")]) + ".*.nbc"))
    except Exception:
        return []
    return [f for f in [index, *sorted(data)] if os.path.lexists(f)]


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


def is_parallel(name: str) -> bool:
    return bool(_SPECS[name][2].get("parallel"))


def _env_int(name: str, default):
    """An integer setting from the environment. A value that is not an integer is ignored with a warning,
    as the other EDGEKIT_ variables ignore values they do not know: this runs on import, and an error
    here broke every edgekit command, and the device runner, with an internal error."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        warnings.warn(f"edgekit.prepost: ignoring {name}={raw!r}, not an integer; using "
                      f"{default if default is not None else 'the default'}", RuntimeWarning, stacklevel=2)
        return default


# Below this many output elements a kernel runs on one thread: waking Numba's workers costs more
# than it saves, and on a busy host a parallel region can wait milliseconds for a free core.
PARALLEL_MIN_WORK = _env_int("EDGEKIT_PREPOST_PARALLEL_MIN", 32768)


def call(name: str, work: int, *args):
    """Run kernel `name`; a parallel kernel runs its serial build when `work` (elements) is small
    or Numba is set to one thread."""
    if is_parallel(name) and (work < PARALLEL_MIN_WORK or numba.get_num_threads() == 1):
        return get(name, serial=True)(*args)
    return get(name)(*args)


def set_threads(n: int) -> int:
    """Threads for parallel kernels in this thread (1 = serial builds only); returns the previous value.

    On a device, pre/post runs next to ONNX Runtime's own (spinning) thread pool; two pools on few
    cores can stall each other for milliseconds, so one thread is often the steadier choice there.
    Also settable before import with EDGEKIT_PREPOST_THREADS.
    """
    if not HAVE_NUMBA:
        return 1
    prev = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    return prev


_THREADS = _env_int("EDGEKIT_PREPOST_THREADS", None)
if HAVE_NUMBA and _THREADS is not None:
    set_threads(_THREADS)


def variants(name: str) -> list:
    """The builds of `name` that calls may use here: [False] (the kernel) and/or [True] (serial)."""
    if not is_parallel(name):
        return [False]
    return [True] if numba.get_num_threads() == 1 else [False, True]


def freeze(obj):
    """A hashable key for JSON-like parameters (lists -> tuples); None when not cacheable (arrays)."""
    if obj is None:
        return ("<None>",)
    if isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, (list, tuple)):
        items = tuple(freeze(o) for o in obj)
        return None if None in items else items
    return None


def kernel_names() -> list:
    return sorted(_SPECS)


def compile_info(name: str) -> dict:
    """Seconds spent getting `name` (all its builds) ready and whether Numba's on-disk cache supplied it."""
    builds = [k for k in (name, f"{name}:serial") if k in _COMPILED]
    if not builds:
        return {"compiled": False}
    hits = [bool(sum(_COMPILED[k].stats.cache_hits.values())) for k in builds]
    return {"compiled": True, "builds": ["serial" if k.endswith(":serial") else "parallel" if is_parallel(name)
                                         else "serial" for k in builds],
            "seconds": sum(_TIMES.get(k, 0.0) for k in builds),
            "cache": "hit" if all(hits) else "miss" if not any(hits) else "partial",
            "cache_path": _COMPILED[builds[0]].stats.cache_path}


def resolve_backend(backend: str = "auto", strict: bool = False) -> str:
    """The backend that will actually run: "numba" or "numpy".

    "auto" takes Numba when it is importable. "numba" without Numba falls back to NumPy with a
    PrepostFallbackWarning, or raises PrepostError when `strict` (the caller insists).
    """
    global _warned
    if backend not in BACKENDS:
        raise PrepostError(f"backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "numpy":
        return "numpy"
    if HAVE_NUMBA:
        return "numba"
    if backend == "numba":
        if strict:
            raise PrepostError(f"backend: numba was required but is unavailable ({NUMBA_ERROR})")
        if not _warned:
            _warned = True
            warnings.warn(f"edgekit.prepost: numba unavailable ({NUMBA_ERROR}); using the NumPy twins",
                          PrepostFallbackWarning, stacklevel=3)
    return "numpy"


def backend_info() -> dict:
    """What this process can run; JSON-serialisable, for reports and the device runner."""
    info = {"numba": NUMBA_VERSION, "default": resolve_backend("auto")}
    if not HAVE_NUMBA:
        info["reason"] = NUMBA_ERROR
    else:
        from numba.core import config

        info["threads"] = numba.get_num_threads()
        info["cache_dir"] = config.CACHE_DIR or None
    return info
