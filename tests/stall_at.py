"""``python stall_at.py STAGE MARKER uadp-args...``: the ``uadp`` command with one stage made to
write MARKER and wait there, so that a test can kill the process at a known point.

STAGE: ``epoch-N`` (inside the N-th training epoch), ``aligner`` (fitting the aligner) or
``evaluation`` (after the test split was predicted, before its metrics are computed).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import uadp.engine.alignment as alignment
import uadp.engine.evaluation as evaluation
from uadp.cli import main
from uadp.engine.trainer import Trainer


def _stall(marker: Path) -> None:
    marker.write_text("waiting")
    time.sleep(600)  # killed here


def patch(stage: str, marker: Path) -> None:
    if stage.startswith("epoch-"):
        target, real, calls = int(stage.split("-")[1]), Trainer.train_epoch, {"n": 0}

        def train_epoch(self, batches, epoch, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == target:
                _stall(marker)
            return real(self, batches, epoch, *args, **kwargs)

        Trainer.train_epoch = train_epoch
    elif stage == "aligner":
        alignment.fit_aligner = lambda job, detector: _stall(marker)
    elif stage == "evaluation":
        evaluation.evaluate = lambda *args, **kwargs: _stall(marker)
    else:
        raise SystemExit(f"unknown stage {stage}")


if __name__ == "__main__":
    patch(sys.argv[1], Path(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
