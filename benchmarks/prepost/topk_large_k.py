"""softmax_topk with a large k: the Numba kernels against the NumPy twin on one row of logits.

    python benchmarks/prepost/topk_large_k.py

One call per case and backend after both kernels are compiled (or loaded), with set_threads(1) so the
serial build runs and host load plays less part; indices are checked equal to the NumPy twin's.
Results: RESULTS.md, "softmax_topk with a large k".
"""
import platform
import time

import numpy as np

from edgekit.prepost import set_threads, softmax_topk

CASES = [(32000, 5, "random"), (32000, 1000, "ascending"), (20000, 20000, "random"), (50000, 50000, "random")]


def main():
    set_threads(1)
    rng = np.random.default_rng(0)
    softmax_topk(np.zeros((1, 10), np.float32), 2)  # compile or load both kernels before timing
    softmax_topk(np.zeros((1, 10)), 2)
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, NumPy {np.__version__}")
    for dt in (np.float32, np.float64):
        for c, k, order in CASES:
            x = rng.normal(size=(1, c)).astype(dt)
            if order == "ascending":
                x = np.sort(x)
            took, idx = {}, {}
            for backend in ("numba", "numpy"):
                t = time.perf_counter()
                _, idx[backend] = softmax_topk(x, k, backend=backend)
                took[backend] = (time.perf_counter() - t) * 1e3
            same = np.array_equal(idx["numba"], idx["numpy"])
            print(f"{dt.__name__} C={c} k={k} {order}: numba {took['numba']:8.1f} ms  numpy {took['numpy']:6.1f} ms  "
                  f"same indices {same}")


if __name__ == "__main__":
    main()
