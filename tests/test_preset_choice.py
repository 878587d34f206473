"""Leave-one-class-out selection (benchmarks/bench_preset_choice.py): the estimate a preset
choice is judged by, checked on cases worked out by hand and through the command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import load_benchmark

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


choice = load_benchmark("bench_preset_choice")


def test_a_candidate_fitted_to_one_class_wins_in_sample_but_not_left_out():
    # "fitted" is best on average only thanks to class a; "steady" is better on every other class
    per_class = {
        "fitted": {"a": 1.00, "b": 0.70, "c": 0.70, "d": 0.70},
        "steady": {"a": 0.60, "b": 0.78, "c": 0.78, "d": 0.78},
    }
    selection = choice.leave_one_class_out(per_class, "image_auroc")
    assert selection.in_sample_best == "fitted" and selection.means["fitted"] == pytest.approx(0.775)
    # leaving a out, steady wins on b, c, d and scores 0.60 on a; leaving b out, fitted's mean on
    # a, c, d is 0.80 > 0.72, so fitted is picked and scores 0.70 on b; likewise c and d
    assert [(h.class_name, h.chosen, h.value) for h in selection.held_out] == [
        ("a", "steady", 0.60),
        ("b", "fitted", 0.70),
        ("c", "fitted", 0.70),
        ("d", "fitted", 0.70),
    ]
    assert selection.estimate == pytest.approx((0.60 + 0.70 * 3) / 4)
    assert [h.best_value for h in selection.held_out] == [1.00, 0.78, 0.78, 0.78]


def test_the_estimate_matches_a_brute_force_count_on_random_tables():
    import numpy as np

    rng = np.random.default_rng(0)
    for _ in range(50):
        n_candidates, n_classes = rng.integers(1, 6), rng.integers(2, 7)
        table = rng.uniform(0.5, 1.0, (n_candidates, n_classes)).round(3)
        per_class = {f"r{i}": {f"c{j}": float(table[i, j]) for j in range(n_classes)} for i in range(n_candidates)}
        expected = []
        for j in range(n_classes):
            others = np.delete(table, j, axis=1).mean(axis=1)
            expected.append(table[int(np.argmax(others)), j])  # argmax takes the first of ties, as the rule does
        assert choice.leave_one_class_out(per_class).estimate == pytest.approx(float(np.mean(expected)))


def test_ties_go_to_the_candidate_given_first_and_bad_tables_are_refused():
    same = {"c1": 0.9, "c2": 0.8}
    assert {h.chosen for h in choice.leave_one_class_out({"first": same, "second": same}).held_out} == {"first"}
    with pytest.raises(ValueError, match="has classes"):
        choice.leave_one_class_out({"x": {"a": 1.0, "b": 1.0}, "y": {"a": 1.0, "c": 1.0}})
    with pytest.raises(ValueError, match="at least two classes"):
        choice.leave_one_class_out({"x": {"a": 1.0}})


def test_the_command_reads_summaries_and_writes_a_results_table(tmp_path):
    for name, values in {"wide": (0.9, 0.6), "narrow": (0.7, 0.8)}.items():
        per_class = {"bottle": {"image_auroc": values[0]}, "screw": {"image_auroc": values[1]}}
        (tmp_path / f"{name}.json").write_text(json.dumps({"per_class": per_class}))
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_preset_choice.py"), f"W={tmp_path / 'wide.json'}",
         str(tmp_path / "narrow.json"), "--results", str(tmp_path / "loco.csv")],
        capture_output=True, text=True, cwd=BENCHMARKS, check=True,
    )  # fmt: skip
    # leaving bottle out, narrow wins on screw and scores 0.7 on bottle; leaving screw out, W wins and scores 0.6
    assert "leave-one-class-out estimate: 0.650" in done.stdout
    assert "in-sample best: W, mean 0.750" in done.stdout
    table = load_benchmark("results_csv").read(tmp_path / "loco.csv")
    assert ["image_auroc", "leave-one-class-out estimate", "", "0.650", "", ""] in table.rows
