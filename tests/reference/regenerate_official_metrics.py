"""Recompute the expected values of ``tests/test_metric_official.py`` with the authors' own code.

The reference implementations are not part of uadp and are not copied into it; this script
imports them from folders given on the command line:

* ``--mvtec-eval DIR``: MVTec AD's evaluation scripts (``pro_curve_util.py`` with ``compute_pro``,
  ``generic_util.py`` with ``trapezoid``), as distributed by MVTec with the dataset
  (Bergmann & Sattlegger, (c) 2021 MVTec Software GmbH); public copies of the folder
  ``mvtec_ad_evaluation`` live in many GitHub repositories.
* ``--aupimo DIR``: a folder holding the package ``aupimo_np``, the files ``_validate.py``,
  ``binclf_curve_numpy.py``, ``_binclf_curve_numba.py`` and ``pimo_numpy.py`` of
  https://github.com/jpcbertoldo/aupimo (``src/aupimo``, unmodified) beside an empty
  ``__init__.py`` (the package's own ``__init__`` imports torch, which the numpy code does not need).

Run it in an environment with numpy (< 2.4: ``pimo_numpy`` calls ``np.trapz``), scipy and,
for speed, numba::

    python tests/reference/regenerate_official_metrics.py --mvtec-eval ... --aupimo ...

It prints the two tables of expected values to paste into the test.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the case generator

from official_metric_cases import (  # noqa: E402
    AUPIMO_KINDS,
    AUPIMO_SEEDS,
    AUPIMO_SETTINGS,
    AUPRO_KINDS,
    AUPRO_LIMITS,
    AUPRO_SEEDS,
    aupimo_case,
    aupro_case,
)


def reference_aupro(mvtec_eval: Path) -> dict[tuple[str, int, float], float]:
    sys.path.insert(0, str(mvtec_eval))
    from generic_util import trapezoid  # type: ignore[import-not-found]
    from pro_curve_util import compute_pro  # type: ignore[import-not-found]

    values = {}
    for kind in AUPRO_KINDS:
        for seed in AUPRO_SEEDS:
            maps, masks = aupro_case(kind, seed)
            # as evaluate_experiment.py passes them: lists of 2-D maps and of 2-D ground-truth maps
            with contextlib.redirect_stdout(io.StringIO()):
                fprs, pros = compute_pro(list(maps), list(masks.astype(np.uint8)))
            for limit in AUPRO_LIMITS:
                values[kind, seed, limit] = float(trapezoid(fprs, pros, x_max=limit) / limit)
    return values


def reference_aupimo(aupimo: Path) -> dict[tuple[str, int, float, float, int], list[float]]:
    sys.path.insert(0, str(aupimo))
    from aupimo_np import pimo_numpy  # type: ignore[import-not-found]

    values = {}
    for kind in AUPIMO_KINDS:
        for seed in AUPIMO_SEEDS:
            maps, masks = aupimo_case(kind, seed)
            for lower, upper, n in AUPIMO_SETTINGS:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    result = pimo_numpy.aupimo_scores(maps, masks, num_threshs=n, fpr_bounds=(lower, upper))
                classes, scores = result[3], result[4]
                values[kind, seed, lower, upper, n] = [float(v) for v in scores[classes == 1]]
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mvtec-eval", type=Path, required=True)
    parser.add_argument("--aupimo", type=Path, required=True)
    args = parser.parse_args()
    print(f"# numpy {np.__version__}")
    print("# fmt: off")
    print("AUPRO_EXPECTED = {")
    for key, value in reference_aupro(args.mvtec_eval).items():
        print(f"    {key!r}: {value!r},".replace("'", '"'))
    print("}")
    print("AUPIMO_EXPECTED = {")
    for key, values in reference_aupimo(args.aupimo).items():
        print(f"    {key!r}: {values!r},".replace("'", '"'))
    print("}")
    print("# fmt: on")


if __name__ == "__main__":
    main()
