"""NMS with one far-away box: the Numba kernel's time should not depend on where one stray box lies.

    python benchmarks/prepost/nms_outlier.py [--rounds 5]

20,000 boxes 1-5 px in a 600x600 frame (IoU 0.5), once as they are and once with box 0 moved to
(far, far). Prints the best and median of the rounds per case, and the kept count (the same in every
case but the first and checked equal to the NumPy twin's). Results: RESULTS.md, "NMS with a far-away box".
"""
import argparse
import platform
import time

import numpy as np

from edgekit.prepost import nms


def boxes(far=None, n=20000):
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 600, (n, 2))
    wh = rng.uniform(1, 5, (n, 2))
    b = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    if far is not None:
        b[0] = [far, far, far + 5, far + 5]
    return b, rng.random(n).astype(np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    nms(*boxes(n=10), 0.5)  # compile or load from the cache outside the timing
    print(f"machine: {platform.machine()} {platform.processor() or ''}, python {platform.python_version()}")
    print("| far box at | best ms | median ms | kept | equal to NumPy twin |")
    print("|---|---|---|---|---|")
    for far in (None, 1e4, 1e5, 1e6, 1e9):
        b, s = boxes(far)
        times = []
        for _ in range(a.rounds):
            t = time.perf_counter()
            keep = nms(b, s, 0.5)
            times.append(time.perf_counter() - t)
        same = np.array_equal(keep, nms(b, s, 0.5, backend="numpy")) if far in (None, 1e9) else "-"
        print(f"| {far} | {min(times) * 1e3:.1f} | {np.median(times) * 1e3:.1f} | {len(keep)} | {same} |")


if __name__ == "__main__":
    main()
