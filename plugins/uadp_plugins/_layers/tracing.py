"""Whether the code runs inside a trace (TorchScript, ONNX export, torch.compile).

A traced graph records tensor operations with fixed shapes; Python decisions on a tensor's value
(loops over clusters, probing a network) would be frozen into it or fail. Components take their
plain, fixed-shape path while this is true.
"""

from __future__ import annotations

import torch


def in_static_graph() -> bool:
    """True while a model is traced or exported (ONNX): only fixed-shape operations then."""
    return (
        torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch.onnx.is_in_onnx_export()
    )
