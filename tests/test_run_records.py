"""``benchmarks/run_records.py compare``: what two snapshots of the same commands differ in, with
what varies between identical runs (durations, run ids, the store's folder) left out."""

from __future__ import annotations

import copy

from helpers import load_benchmark


def _snapshot() -> dict:
    return {
        "train": {
            "command": "run --from-run " + "a" * 32,
            "exit": 0,
            "stdout": "epoch 1/1  loss 0.1  <t>\ninference 53.0 img/s, peak RSS 1327 MB",
            "stderr": "",
            "record": {
                "params": {"aligner.calibration": "mean-max", "tracking.preset": "cpu"},
                "tags": {"uadp.config_hash": "abc", "uadp.preset": "cpu"},
                "metrics": {"mean/image_auroc": 0.91, "timing/train_s": 3.0, "train/epoch_s": 1.5},
                "epoch_metrics": [["train/loss", 1, 0.1], ["train/epoch_s", 1, 1.5]],
                "artifacts": {"model/model.pt": {"config.tracking.root": "'/tmp/x'", "model.w": "00ff"}},
            },
        }
    }


def test_what_varies_between_identical_runs_is_not_a_difference() -> None:
    records = load_benchmark("run_records")
    before, after = _snapshot(), _snapshot()
    after["train"]["command"] = "run --from-run " + "b" * 32
    after["train"]["stdout"] = after["train"]["stdout"].replace("53.0 img/s", "14.0 img/s").replace("1327", "1300")
    after["train"]["record"]["metrics"] |= {"timing/train_s": 9.0, "train/epoch_s": 4.0}
    after["train"]["record"]["artifacts"]["model/model.pt"]["config.tracking.root"] = "'/tmp/y'"
    assert records._differences(records._normalised(before, []), records._normalised(after, [])) == []


def test_a_metric_a_weight_or_a_param_that_changed_is_reported() -> None:
    records = load_benchmark("run_records")
    for where, key, value in (
        ("metrics", "mean/image_auroc", 0.92),
        ("params", "tracking.preset", "uniad-cpu"),
    ):
        after = _snapshot()
        after["train"]["record"][where][key] = value
        found = records._differences(records._normalised(_snapshot(), []), records._normalised(after, []))
        assert found == [f"/train/record/{where}/{key}: {_snapshot()['train']['record'][where][key]!r} -> {value!r}"]
    after = _snapshot()
    after["train"]["record"]["artifacts"]["model/model.pt"]["model.w"] = "0100"
    assert records._differences(_snapshot(), after) != []


def test_renames_on_purpose_are_applied_to_the_first_snapshot() -> None:
    records = load_benchmark("run_records")
    after = copy.deepcopy(_snapshot())
    record = after["train"]["record"]
    record["params"] = {"aligner.mapping": "mean-max", "tracking.preset": "uniad-cpu"}
    record["tags"] = {"uadp.config_hash": "def", "uadp.preset": "uniad-cpu"}
    renamed = [("aligner.calibration", "aligner.mapping"), ('"cpu"', '"uniad-cpu"')]
    before = records._normalised(_snapshot(), renamed, hashes=False)
    assert records._differences(before, records._normalised(after, [], hashes=False)) == []
    # without the renames, the same two differ
    assert records._differences(records._normalised(_snapshot(), []), records._normalised(after, [])) != []
