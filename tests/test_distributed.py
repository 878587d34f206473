"""Runs of several processes (torchrun, gloo on the CPU) give one run's model and metrics.

Two processes on one machine, and two "nodes" of one process each meeting over loopback,
train the demo data with the same global batch as one process. Their gradients are averaged
by DistributedDataParallel, so the weights follow the single process's to floating-point
rounding (the order of the sums differs); the test allows 2e-3 on every mean and pooled metric.
UniAD's feature jitter and dropout are off here: each rank draws its own noise, so with them
the runs agree in distribution, not number for number.

On two cores with one thread per process the four runs take about two minutes.
Each finishes exactly one MLflow run. A rank that fails marks the run FAILED, never RUNNING.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import all_runs
from uadp.engine.distributed import RankBatches, Ranks
from uadp.engine.launcher import STOP_WAIT_S, Outcome

TOLERANCE = 2e-3
HERE = Path(__file__).parent


def _args(root: Path, out: Path, *extra: str) -> list[str]:
    """A short run on the demo data: UniAD's CPU preset at 128 px, 4 epochs, global batch 8."""
    args = ["run", "--config", "uniad-cpu", "--image-size", "128", "--epochs", "4", "--workers", "0", "--device", "cpu"]
    args += ["--set", f"tracking.root={root}", "--set", "train.batch_size=8", "--output-json", str(out)]
    args += ["--set", "reconstructor.jitter_prob=0", "--set", "reconstructor.dropout=0"]
    return args + list(extra)


def _env() -> dict[str, str]:
    # one thread a process: the two-process runs share the two cores of CI
    return {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "TQDM_DISABLE": "1"}


def _torchrun(*options: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *options]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(path: Path) -> dict[str, float]:
    summary = json.loads(path.read_text())
    return {f"{unit}/{k}": v for unit in ("mean", "pooled") for k, v in summary[unit].items()}


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict[str, float]:
    """The reference: one process, the same global batch."""
    root = tmp_path_factory.mktemp("single")
    out = root / "summary.json"
    done = subprocess.run([sys.executable, "-m", "uadp", *_args(root, out)], env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return _metrics(out)


def _assert_same(found: dict[str, float], expected: dict[str, float]) -> None:
    assert found.keys() == expected.keys()
    far = {k: (found[k], expected[k]) for k in expected if abs(found[k] - expected[k]) > TOLERANCE}
    assert not far, far
    # the runs learned something to compare (without feature jitter UniAD learns less)
    assert expected["mean/image_auroc"] > 0.65 and expected["mean/pixel_auroc"] > 0.65


def _one_finished_run(root: Path) -> None:
    runs = all_runs(root)
    assert [r.info.status for r in runs] == ["FINISHED"], [r.info.status for r in runs]


@pytest.mark.slow
def test_two_processes_with_nproc_match_one_process(single, tmp_path):
    out = tmp_path / "summary.json"
    done = subprocess.run(
        [sys.executable, "-m", "uadp", *_args(tmp_path, out), "--nproc", "2"],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "x 2 processes" in done.stdout and done.stdout.count("Results (") == 1  # rank 0 alone reports
    # a clean run says nothing beyond its own lines: no launcher logs, no C++ warnings of DDP's reducer
    assert [line for line in done.stderr.splitlines() if not line.startswith(("uadp:", "note:"))] == [], done.stderr
    _assert_same(_metrics(out), single)
    _one_finished_run(tmp_path)
    assert not list((tmp_path / "checkpoints").rglob("uadp-maps-*"))  # the maps' files are gone


@pytest.mark.slow
def test_two_nodes_over_loopback_match_one_process(single, tmp_path):
    out = tmp_path / "summary.json"
    port = _free_port()
    nodes = [
        subprocess.Popen(
            _torchrun(
                "--nnodes=2",
                f"--node-rank={rank}",
                "--nproc-per-node=1",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                "-m",
                "uadp",
                *_args(tmp_path, out),
            ),
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    results = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in results]
    _assert_same(_metrics(out), single)
    _one_finished_run(tmp_path)


def _failing_rank(tmp_path: Path, how: str, out: Path, epoch: int) -> subprocess.CompletedProcess:
    """``uadp run --nproc 2`` whose rank 1 fails as ``epoch`` begins (see kill_rank_plugin.py)."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    shutil.copy(HERE / "kill_rank_plugin.py", plugins)
    return subprocess.run(
        [sys.executable, "-m", "uadp", *_args(tmp_path, out), "--nproc", "2", "--plugins-dir", str(plugins)],
        env={**_env(), "UADP_TEST_FAIL_RANK": "1", "UADP_TEST_FAIL_EPOCH": str(epoch), "UADP_TEST_FAIL": how},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _uadp_lines(stderr: str) -> list[str]:
    said = [line for line in stderr.splitlines() if line.startswith("uadp:")]
    assert said and said[0].startswith("uadp: starting 2 processes"), stderr[-3000:]
    return said[1:]


@pytest.mark.slow
def test_a_killed_rank_is_one_line_and_the_run_is_marked_failed(tmp_path):
    """Rank 1 killed (SIGKILL) in epoch 2: one ``uadp:`` line that names it, no traceback, the run
    FAILED whatever the timing, and ``--resume`` (with the short run id) finishes it."""
    out = tmp_path / "summary.json"
    done = _failing_rank(tmp_path, "kill", out, epoch=2)
    assert done.returncode == 1, done.stderr[-3000:]
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FAILED"
    assert _uadp_lines(done.stderr) == [
        f"uadp: error: the process of rank 1 (of 2) was killed by SIGKILL; MLflow run {run.info.run_id} is marked "
        f"FAILED; its checkpoint after epoch 1/4 is kept: `uadp run --resume {run.info.run_id} "
        f"--set tracking.root={tmp_path}` continues it"
    ]
    assert "Traceback" not in done.stderr and "ChildFailedError" not in done.stderr, done.stderr[-3000:]
    assert not out.exists()
    done = subprocess.run(
        [sys.executable, "-m", "uadp", "run", "--resume", run.info.run_id[:8], "--set", f"tracking.root={tmp_path}"]
        + ["--nproc", "2", "--output-json", str(out)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    _one_finished_run(tmp_path)
    assert json.loads(out.read_text())["mlflow_run_id"] == run.info.run_id


@pytest.mark.slow
@pytest.mark.parametrize("how", ["raise", "raise-abort"])
def test_a_rank_that_crashes_on_a_bug_shows_its_traceback_and_one_line(tmp_path, how):
    """Rank 1 raises in epoch 1: its traceback once, and one line that names its error, also when
    the process then ends by a signal as it exits (seen on a loaded machine: SIGABRT from gloo's
    teardown), which would otherwise be all the line said."""
    done = _failing_rank(tmp_path, how, tmp_path / "summary.json", epoch=1)
    assert done.returncode == 1, done.stderr[-3000:]
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FAILED"
    (line,) = _uadp_lines(done.stderr)
    assert line.startswith(
        "uadp: error: the process of rank 1 (of 2) stopped on an error, RuntimeError: rank 1 lost in epoch 1 "
        "(its traceback is above); "
    ), done.stderr[-3000:]
    assert f"no epoch had finished: `uadp run --resume {run.info.run_id}" in line  # the checkpoint of the start
    said = done.stderr
    assert said.count("Traceback") == 1 and "RuntimeError: rank 1 lost in epoch 1" in said, said[-3000:]  # the bug's


def test_the_supervisor_names_the_failure_that_came_first():
    """Rank 0's own error first; else the earliest crash a process recorded, whatever signal ended
    it afterwards; else the earliest failure the launcher saw among the other ranks."""
    killed = {"exitcode": -6, "signal": "SIGABRT", "time": 20.0}
    failures = {"0": {"exitcode": 1, "signal": "", "time": 30.0}, "1": killed, "2": {**killed, "time": 10.0}}
    crashes = {"1": {"error": "RuntimeError: b", "time": 5.0}, "2": {"error": "KeyError: 'a'", "time": 4.0}}
    own = {"error": "the disk is full", "peer_lost": False}
    lost = {"error": "another process of the run stopped", "peer_lost": True}
    assert Outcome(1, failures, own, crashes).first_failure() == (0, failures["0"])
    assert Outcome(1, failures, lost, crashes).first_failure() == (2, crashes["2"])
    assert Outcome(1, failures, lost, {"1": crashes["1"]}).first_failure() == (1, crashes["1"])
    assert Outcome(1, failures, lost).first_failure() == (2, failures["2"])
    assert Outcome(1, {"0": failures["0"]}, {}).first_failure() == (0, failures["0"])


@pytest.mark.slow
def test_ctrl_c_stops_every_process_and_marks_the_run_killed(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    # started as a terminal starts it, with Ctrl-C's default handling: a test run in the background
    # of a shell (`pytest &`) inherits SIGINT ignored, and a process that starts so ignores Ctrl-C
    start = "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); runpy.run_module('uadp', run_name='__main__', alter_sys=True)"  # noqa: E501
    command = [sys.executable, "-c", start, *_args(tmp_path, tmp_path / "s.json"), "--nproc", "2"]
    command[command.index("--epochs") + 1] = "500"
    run = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(checkpoints.rglob("checkpoint.pt")) and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.5)
    assert run.poll() is None, "the run ended before it could be interrupted"
    os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    # a rank held in a collective by its stopped peer is killed by the supervisor after STOP_WAIT_S
    # (on a loaded machine the ranks may not all see the interrupt at a step's end): wait beyond it
    _, err = run.communicate(timeout=STOP_WAIT_S + 120)
    assert run.returncode != 0
    statuses = [r.info.status for r in all_runs(tmp_path)]
    assert statuses in (["KILLED"], ["FAILED"]), (statuses, err[-2000:])


def test_a_batch_that_does_not_split_is_refused(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "uadp",
            *_args(tmp_path, tmp_path / "s.json", "--set", "train.batch_size=7"),
            "--nproc",
            "2",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "train.batch_size 7 does not split among 2 processes" in done.stderr
    assert "Traceback" not in done.stderr
    assert not all_runs(tmp_path)


def test_the_ranks_together_take_the_batches_of_one_process():
    one = list(RankBatches(21, 6, seed=3, ranks=Ranks(), drop_last=True))
    parts = [list(RankBatches(21, 6, seed=3, ranks=Ranks(rank, 3), drop_last=True)) for rank in range(3)]
    assert len(one) == 3 and all(len(p) == 3 for p in parts)
    for step, batch in enumerate(one):
        joined = sorted(i for p in parts for i in p[step])
        assert joined == sorted(batch) and all(len(p[step]) == 2 for p in parts)
    # one process's order is the seeded shuffle itself
    order = torch.randperm(21, generator=torch.Generator().manual_seed(3)).tolist()
    assert [i for b in one for i in b] == order[:18]


def test_shards_cover_every_item_once():
    for count in (0, 1, 5, 17):
        covered = [i for rank in range(3) for i in range(count)[Ranks(rank, 3).shard(count)]]
        assert covered == list(range(count))


@pytest.mark.slow
def test_a_fitted_reconstructor_under_two_processes_is_the_single_process_model(tmp_path):
    """PatchCore under --nproc 2: each rank computes a shard of the features, rank 0 fits the bank
    and sends it to the other; the metrics are the one-process run's, to the same tolerance as
    training (the shards' features may differ from one process's in the last bits)."""
    summaries = {}
    for name, extra in (("one", []), ("two", ["--nproc", "2"])):
        root, out = tmp_path / name, tmp_path / f"{name}.json"
        args = ["run", "--reconstructor", "patchcore", "--image-size", "128", "--workers", "0", "--device", "cpu"]
        args += ["--set", f"tracking.root={root}", "--set", "reconstructor.coreset_ratio=0.25"]
        args += ["--output-json", str(out), *extra]
        done = subprocess.run([sys.executable, "-m", "uadp", *args], env=_env(), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        summaries[name] = _metrics(out)
        assert [run.info.status for run in all_runs(root)] == ["FINISHED"]
    for key, value in summaries["one"].items():
        assert summaries["two"][key] == pytest.approx(value, abs=TOLERANCE), key
    assert summaries["one"]["mean/image_auroc"] > 0.8
