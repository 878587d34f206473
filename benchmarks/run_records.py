"""What a set of `uadp` commands records, to show that a change of the code left it unchanged.

``snapshot`` runs four scenarios on the embedded demo data in a fresh store (a trained model with
the CADA aligner, ``--from-run`` of it with another aligner, PatchCore, and a ``--resume`` that is
refused because the run finished) and writes, per scenario, everything it recorded: the exit code,
stdout and stderr, the MLflow run's params, tags and metrics, its artifacts (the bytes of each
file, and the tensors of the model bundle), with what changes from one run to the next by nature
(run ids, dates, durations, temporary paths) replaced by placeholders. ``compare`` prints every
difference between two snapshots and exits 1 if there is one.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/run_records.py snapshot before.json
    ... change the code ...
    OMP_WAIT_POLICY=PASSIVE python benchmarks/run_records.py snapshot after.json
    python benchmarks/run_records.py compare before.json after.json [--renamed OLD=NEW ...]

``--python`` runs the commands with another interpreter (e.g. a checkout of an earlier commit
put first on ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

TIMING = re.compile(r"\d+(\.\d+)?( s\b| s/|s\b| images/s|/s| MiB| it/s)")
RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")
SHORT_ID = re.compile(r"\b[0-9a-f]{8}\b")


def _clean(text: str, root: Path) -> str:
    """Text with what differs between two identical runs masked: paths under the store, ids, times."""
    text = text.replace(str(root.resolve()), "<root>").replace(str(root), "<root>")
    text = RUN_ID.sub("<run>", text)
    text = SHORT_ID.sub("<id>", text)
    lines = [line for line in text.splitlines() if "\r" not in line and not line.startswith(("  0%", "100%"))]
    return TIMING.sub("<t>", "\n".join(lines))


def _tensors_digest(path: Path) -> dict[str, str]:
    """Each tensor of a saved bundle, by name, as a digest of its bytes (weights_only: plain data)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    out: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            out[prefix] = hashlib.sha256(
                value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            ).hexdigest()[:16]
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                walk(f"{prefix}[{index}]", item)
        elif prefix.split(".")[-1] not in ("uadp_version",):
            out[prefix] = repr(value)

    walk("", state)
    return out


def _artifacts(client, run_id: str, root: Path) -> dict[str, object]:
    folder = Path(client.download_artifacts(run_id, "", tempfile.mkdtemp()))
    found: dict[str, object] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = str(path.relative_to(folder))
        if path.suffix == ".pt":
            found[name] = _tensors_digest(path)
        elif name == "metrics.json":
            document = json.loads(path.read_text())
            document.pop("timing", None)
            document.pop("mlflow_run_id", None)
            found[name] = document
        elif path.suffix in (".csv", ".txt", ".yaml", ".json"):
            found[name] = _clean(path.read_text(), root)
        else:
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return found


def _recorded(root: Path, run_id: str) -> dict[str, object]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root.resolve() / 'mlflow.db'}")
    run = client.get_run(run_id)
    volatile_tags = ("mlflow.user", "mlflow.source.name", "mlflow.source.git.commit", "mlflow.runName")
    return {
        "status": run.info.status,
        "params": {k: _clean(v, root) for k, v in sorted(run.data.params.items())},
        "tags": {k: _clean(v, root) for k, v in sorted(run.data.tags.items()) if k not in volatile_tags},
        "metrics": {k: v for k, v in sorted(run.data.metrics.items()) if not k.startswith(("timing/", "fit/seconds"))}
        | {k: "<t>" for k in run.data.metrics if k.startswith("timing/")},
        "epoch_metrics": sorted(
            (m.key, m.step, m.value)
            for key in run.data.metrics
            if key.startswith(("train/", "fit/")) and key not in ("train/epoch_s", "fit/seconds")
            for m in client.get_metric_history(run_id, key)
        ),
        "artifacts": _artifacts(client, run_id, root),
    }


def _uadp(python: str, root: Path, *args: str) -> tuple[dict[str, object], str | None]:
    summary = root / "summary.json"
    summary.unlink(missing_ok=True)
    command = [python, "-m", "uadp.cli", *args, "--set", f"tracking.root={root}", "--output-json", str(summary)]
    done = subprocess.run(  # noqa: S603
        command, capture_output=True, text=True, timeout=1800, cwd=root, env=os.environ | {"TQDM_DISABLE": "1"}
    )
    result: dict[str, object] = {
        "command": " ".join(args),
        "exit": done.returncode,
        "stdout": _clean(done.stdout, root),
        "stderr": _clean(done.stderr, root),
    }
    run_id = None
    if summary.is_file():
        run_id = json.loads(summary.read_text())["mlflow_run_id"]
        result["record"] = _recorded(root, run_id)
    return result, run_id


def snapshot(out: Path, python: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="uadp-records-"))
    scenarios: dict[str, object] = {}
    scenarios["train_cada"], trained = _uadp(python, root, "run", "--epochs", "2", "--aligner", "cada")
    if trained is None:
        raise SystemExit(f"the first run failed:\n{scenarios['train_cada']['stderr']}")
    scenarios["from_run"], _ = _uadp(python, root, "run", "--from-run", trained, "--aligner", "cada-sigma")
    scenarios["refused_resume"], _ = _uadp(python, root, "run", "--resume", trained)
    scenarios["patchcore"], _ = _uadp(python, root, "run", "--reconstructor", "patchcore")
    out.write_text(json.dumps(scenarios, indent=1, sort_keys=True, default=str))
    exits = ", ".join(f"{name} exit {scenario['exit']}" for name, scenario in scenarios.items())
    print(f"{out}: {exits}")


VOLATILE_METRIC = re.compile(r"^timing/|(_s|_s_per_10k_picks|epoch_s)$")
VOLATILE_TEXT = re.compile(r"\d+(\.\d+)? (img/s|MB)\b|(?<=_s )\d+(\.\d+)?|(?<=_s_per_10k_picks )\d+(\.\d+)?")


def _normalised(document: dict, renamed: list[tuple[str, str]], hashes: bool = True) -> dict:
    """``document`` with what varies between identical runs masked (durations, the store's
    temporary folder, run ids in commands) and the ``renamed`` (old, new) texts replaced."""
    text = json.dumps(document)
    for old, new in renamed:
        text = text.replace(old, new)
    document = json.loads(text)
    for scenario in document.values():
        scenario["command"] = RUN_ID.sub("<run>", scenario["command"])
        for stream in ("stdout", "stderr"):
            scenario[stream] = VOLATILE_TEXT.sub("<n>", scenario[stream])
        record = scenario.get("record")
        if not record:
            continue
        record["metrics"] = {k: "<t>" if VOLATILE_METRIC.search(k) else v for k, v in record["metrics"].items()}
        record["epoch_metrics"] = [m for m in record["epoch_metrics"] if not VOLATILE_METRIC.search(m[0])]
        if not hashes:  # a digest of the config: it changes with any renamed key
            record["tags"].pop("uadp.config_hash", None)
        for name, artifact in record["artifacts"].items():
            if isinstance(artifact, dict) and "config.tracking.root" in artifact:
                artifact["config.tracking.root"] = "<root>"
            if isinstance(artifact, str):
                record["artifacts"][name] = VOLATILE_TEXT.sub("<n>", artifact)
    return document


def _differences(before, after, where: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in sorted(before.keys() | after.keys()):
            if key not in after:
                found.append(f"{where}/{key}: only before")
            elif key not in before:
                found.append(f"{where}/{key}: only after")
            else:
                found += _differences(before[key], after[key], f"{where}/{key}")
        return found
    if before != after:
        if isinstance(before, str) and isinstance(after, str) and "\n" in before + after:
            import difflib

            diff = "\n".join(difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0))
            return [f"{where}:\n{diff}"]
        return [f"{where}: {before!r} -> {after!r}"]
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("snapshot")
    p.add_argument("out", type=Path)
    p.add_argument("--python", default=sys.executable)
    p = sub.add_parser("compare")
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    p.add_argument(
        "--renamed",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="a text renamed on purpose between the two (replaced in the first before comparing; repeatable)",
    )
    args = parser.parse_args()
    if args.command == "snapshot":
        snapshot(args.out, args.python)
        return 0
    renamed = [tuple(pair.split("=", 1)) for pair in args.renamed]
    found = _differences(
        _normalised(json.loads(args.before.read_text()), renamed, hashes=not renamed),
        _normalised(json.loads(args.after.read_text()), [], hashes=not renamed),
    )
    if renamed:
        print("renamed on purpose: " + "; ".join(f"{old!r} -> {new!r}" for old, new in renamed))
    print("\n".join(found) if found else "identical")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
