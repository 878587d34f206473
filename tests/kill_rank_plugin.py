"""A "plugin" for ``uadp run --plugins-dir`` that registers nothing: in the process of rank
``UADP_TEST_FAIL_RANK``, as training epoch ``UADP_TEST_FAIL_EPOCH`` begins, it fails that process:
``UADP_TEST_FAIL=kill`` kills it with SIGKILL, as the out-of-memory killer would (no Python code
runs after it); ``raise`` raises an exception, as a bug would; ``raise-abort`` raises, and then the
process ends with SIGABRT as it exits, as it sometimes does when gloo's connections are torn down
while the other process still sends on them."""

from __future__ import annotations

import atexit
import os
import signal

from uadp.engine.trainer import Trainer

if os.environ.get("RANK") == os.environ.get("UADP_TEST_FAIL_RANK"):
    _real, _epoch = Trainer.train_epoch, int(os.environ.get("UADP_TEST_FAIL_EPOCH", "2"))

    def train_epoch(self, batches, number, *args, **kwargs):
        if number + 1 == _epoch:
            how = os.environ.get("UADP_TEST_FAIL")
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if how == "raise-abort":
                atexit.register(os.abort)
            raise RuntimeError(f"rank {os.environ['RANK']} lost in epoch {_epoch}")
        return _real(self, batches, number, *args, **kwargs)

    Trainer.train_epoch = train_epoch
