"""Speed check for the exact metric engine (printed, not a test).

Times the four ranking metrics and AUPRO on 705 maps of 224x224 (~35 M pixels, MVTec AD test
set size) with blob-shaped masks covering ~5 % of the pixels, and scikit-learn's
``roc_auc_score`` on the same pixels for comparison. Peak RSS is the process high-water mark
after each step (it only grows).

Run from the repository root:
    PYTHONPATH=platform OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_metrics.py
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from scipy import ndimage

from uadp.metrics.aupro import aupro
from uadp.metrics.curves import auroc, average_precision, binary_curve, f1_max

T = TypeVar("T")
REPEATS = 3  # the first run pays for fresh memory pages, later ones reuse them


def peak_rss_mib() -> float:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def timed(label: str, fn: Callable[[], T]) -> T:
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    print(f"{label:<44} {seconds:7.2f} s   peak RSS {peak_rss_mib():7.0f} MiB", flush=True)
    return result


def make_data(n: int = 705, size: int = 224, coverage: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth-noise blobs as masks; maps = noise plus a blurred copy of the mask (float32)."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, size, size), dtype=np.float32)
    field = ndimage.gaussian_filter(noise, (0, 8, 8))
    del noise
    masks = field > np.quantile(field[:: max(1, n // 50)], 1.0 - coverage)
    del field
    signal = ndimage.gaussian_filter(masks.astype(np.float32), (0, 3, 3))
    maps = rng.random((n, size, size), dtype=np.float32) + 0.8 * signal
    return maps, masks


def main() -> None:
    maps, masks = timed("generate data", make_data)
    print(f"{maps.size / 1e6:.1f} M pixels, {masks.mean():.1%} anomalous, {maps.dtype}")
    print(f"{'':<44} {'':>9}   peak RSS {peak_rss_mib():7.0f} MiB before metrics")

    for attempt in range(1, REPEATS + 1):
        print(f"-- run {attempt}/{REPEATS}")
        curve = timed("binary_curve", lambda: binary_curve(maps, masks))
        values = timed(
            "auroc + average_precision + f1_max",
            lambda curve=curve: (auroc(curve), average_precision(curve), f1_max(curve)),
        )
        n_thresholds = curve.thresholds.size
        del curve
        pro = timed("aupro (fpr_limit 0.3)", lambda: aupro(maps, masks, 0.3))
    print(f"{n_thresholds / 1e6:.1f} M distinct thresholds")
    print(f"AUROC {values[0]:.6f}  AP {values[1]:.6f}  F1max {values[2]:.6f}")
    print(f"AUPRO {pro:.6f}")

    from sklearn.metrics import roc_auc_score

    reference = timed("sklearn roc_auc_score", lambda: roc_auc_score(masks.ravel(), maps.ravel()))
    print(f"sklearn AUROC {reference:.6f}  |diff| {abs(reference - values[0]):.2e}")


if __name__ == "__main__":
    main()
