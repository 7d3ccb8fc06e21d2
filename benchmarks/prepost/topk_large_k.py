"""softmax_topk with a large k: the Numba kernels against the NumPy twin on one row of logits.

    python benchmarks/prepost/topk_large_k.py

Each case's backends timed interleaved by run.interleaved (5 rounds of the same time each, best and median
per call) after both kernels are compiled (or loaded), with set_threads(1) so the
serial build runs and host load plays less part; indices are checked equal to the NumPy twin's (a full
argsort of each row) and to NumPy's argpartition + a sort of the k (run.numpy_topk, the fair NumPy baseline
for a small k), both timed.
Results: RESULTS.md, "softmax_topk with a large k".
"""
import os
import platform

import numpy as np

from edgekit.prepost import set_threads, softmax_topk
from run import interleaved, numpy_topk  # benchmarks/prepost/run.py, beside this script

CASES = [(32000, 5, "random"), (32000, 1000, "ascending"), (20000, 20000, "random"), (50000, 50000, "random")]


def main():
    set_threads(1)
    rng = np.random.default_rng(0)
    softmax_topk(np.zeros((1, 10), np.float32), 2)  # compile or load both kernels before timing
    softmax_topk(np.zeros((1, 10)), 2)
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, NumPy {np.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    for dt in (np.float32, np.float64):
        for c, k, order in CASES:
            x = rng.normal(size=(1, c)).astype(dt)
            if order == "ascending":
                x = np.sort(x)
            fns = {"numba": lambda: softmax_topk(x, k, backend="numba"),
                   "numpy twin": lambda: softmax_topk(x, k, backend="numpy"),
                   "numpy argpartition": lambda: numpy_topk(x, k)}
            idx = [f()[1] for f in fns.values()]
            same = all(np.array_equal(idx[0], i) for i in idx[1:])
            t = interleaved(fns, 5)
            print(f"{dt.__name__} C={c} k={k} {order}: " + "  ".join(
                f"{n} {t[n]['best_ms']:.1f} / {t[n]['median_ms']:.1f} ms" for n in fns) + f"  same indices {same}")
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
