"""``python fail_at_rank.py RANK EPOCH uadp-args...``: the ``uadp`` command, with the process of
rank RANK failing inside its EPOCH-th training epoch, for a test of a run of several
processes that loses one."""

from __future__ import annotations

import os
import sys

from uadp.cli import main
from uadp.engine.trainer import Trainer

if __name__ == "__main__":
    rank, epoch = int(sys.argv[1]), int(sys.argv[2])
    if int(os.environ.get("RANK", "0")) == rank:
        real = Trainer.train_epoch

        def train_epoch(self, batches, number, *args, **kwargs):
            if number + 1 == epoch:
                raise RuntimeError(f"rank {rank} lost in epoch {epoch}")
            return real(self, batches, number, *args, **kwargs)

        Trainer.train_epoch = train_epoch
    sys.exit(main(sys.argv[3:]))
