"""How thresholds set on normal calibration images do on a test split, for several false-alarm rates.

Loads a run's model bundle, scores the calibration images its run kept apart (the same seeded
draw) and the test split, and for each α prints per class and pooled: the observed false-alarm
rate on good parts beside α, the escape rate (defective parts passed), precision and the Dice
of the predicted defect masks; beside them the same at the test split's own F1-max thresholds
(an oracle that needs test labels). No retraining: the model is the run's.

Run from the repository root:
    PYTHONPATH=platform:plugins:benchmarks OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_thresholds.py \\
        --model uadp-runs/checkpoints/<run id>/model.pt --data PATH/TO/realmix-dev --alphas 0.01 0.05
"""

from __future__ import annotations

import argparse
import math
import os

import numpy as np
import torch

from rescoring import load_test_split
from uadp.engine.device import cpu_name


def main() -> None:
    from uadp.data.loader import SampleDataset, batches, make_loader
    from uadp.thresholds import calibrate, threshold_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a run's model.pt")
    parser.add_argument("--data", required=True, help="the MVTec-layout root the run trained on")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.01, 0.05])
    parser.add_argument("--scope", choices=["all", "per-class"], help="default: the run's eval.threshold_scope")
    args = parser.parse_args()

    split = load_test_split(args.model, args.data, None, parser.error)
    detector, cfg = split.detector, split.config
    if not split.calibration:
        parser.error(
            f"{args.model}: its run kept no calibration images (eval.calibration_fraction {cfg.eval.calibration_fraction})"
        )
    mean, std = detector.normalisation
    calibration_names = [s.class_name for s in split.calibration]
    loader = make_loader(
        SampleDataset(split.calibration, cfg.data.size_hw, mean, std), cfg.eval.batch_size, cfg.data.workers
    )
    calibration = detector.predict_split(
        batches(loader), len(split.calibration), calibration_names, desc="calibration", keep_base=False
    )
    test = detector.predict_split(batches(split.loader), len(split.names), split.names, keep_base=False)
    classes = list(dict.fromkeys(split.names))
    scope = args.scope or cfg.eval.threshold_scope
    print(
        f"{args.model}: {cfg.reconstructor.name} + {cfg.aligner.name if cfg.aligner else 'no aligner'}; "
        f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    )
    counts = {c: calibration_names.count(c) for c in classes}
    print(
        f"calibration images: {len(calibration_names)} ({', '.join(f'{c} {n}' for c, n in counts.items())}); "
        f"scope {scope}; pixel false-alarm rate {cfg.eval.pixel_false_alarm_rate:g}"
    )
    labels = test.labels
    for alpha in args.alphas:
        thresholds = calibrate(
            calibration.scores,
            calibration.maps,
            calibration_names,
            classes,
            scope,
            alpha,
            cfg.eval.pixel_false_alarm_rate,
        )
        report = threshold_report(test.scores, labels, test.maps, test.masks, split.names, thresholds)
        print(
            f"\nα = {alpha:g}: image threshold {thresholds.image_threshold():.5g}, pixel {thresholds.pixel_threshold():.5g}"
        )
        for note in thresholds.notes:
            print(f"  note: {note}")
        print(
            f"{'class':<14}{'good':>6}{'bad':>6}{'false alarms':>14}{'escapes':>9}{'precision':>11}{'Dice':>7}"
            f"  |{'oracle FA':>10}{'escapes':>9}{'Dice':>7}"
        )
        names = np.asarray(split.names)
        for unit in [*classes, "pooled"]:
            chosen = np.ones(len(names), bool) if unit == "pooled" else names == unit
            ours, oracle = report["calibrated"][unit], report["f1_max_oracle"][unit]

            def cell(value: float, width: int) -> str:
                return f"{'-' if math.isnan(value) else f'{value:.3f}':>{width}}"

            print(
                f"{unit:<14}{int((labels[chosen] == 0).sum()):>6}{int((labels[chosen] == 1).sum()):>6}"
                f"{cell(ours['false_alarm_rate'], 14)}{cell(ours['escape_rate'], 9)}{cell(ours['precision'], 11)}"
                f"{cell(ours['dice'], 7)}  |{cell(oracle['false_alarm_rate'], 10)}{cell(oracle['escape_rate'], 9)}"
                f"{cell(oracle['dice'], 7)}"
            )


if __name__ == "__main__":
    main()
