"""Precision resolution: what `train.precision` becomes on a given device and CPU."""

from __future__ import annotations

import pytest
import torch

from uadp.engine import device as device_module
from uadp.engine.device import resolve_precision
from uadp.errors import ConfigError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_a_cpu_is_fp32_even_with_native_bf16(monkeypatch, native):
    """bf16 is a per-model choice on a CPU (it cost the CPU preset pixel AP), never automatic."""
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", CPU) is None


def test_auto_on_cuda_is_fp16_amp_and_fp32_is_always_plain():
    assert resolve_precision("auto", CUDA) is torch.float16
    assert resolve_precision("fp32", CUDA) is None and resolve_precision("fp32", CPU) is None


def test_fp16_on_a_cpu_is_a_config_error():
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch):
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no native bf16"):
        assert resolve_precision("bf16", CPU) is torch.bfloat16
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("bf16", CPU) is torch.bfloat16
