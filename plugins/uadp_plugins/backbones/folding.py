"""BatchNorm folded into the convolution before it, for a frozen backbone's inference.

A frozen backbone's BatchNorm is a fixed per-channel scale and shift, so it can be merged into
the weights and bias of the convolution that feeds it: the same features (to ~1e-6 relative),
one pass over the activations fewer per layer. On EfficientNet-Lite0 at 256 px that makes the
backbone about a third faster on a CPU.

Which convolution feeds which BatchNorm is found by running the network once on a small input
and watching the modules' calls: a BatchNorm whose input is exactly the output of one
convolution, used by no other module, is folded. A functional use of that output elsewhere (an
addition, a concatenation) cannot be seen that way, so the folded copy is kept only if it gives
the original's features on that input; otherwise the network is used as it is.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

try:  # timm's BatchNorm with its activation fused in: folded, the activation stays
    from timm.layers import BatchNormAct2d
except ImportError:  # pragma: no cover - timm is a dependency
    BatchNormAct2d = None


def folded_copy(net: nn.Module, channels: int = 3, size: int = 64) -> nn.Module | None:
    """A copy of the eval-mode ``net`` with its BatchNorms folded; None if none could be, or if
    the copy's outputs differ from the original's."""
    probe = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    probe = probe.to(next(net.parameters()).device).contiguous(memory_format=torch.channels_last)
    net = net.eval()
    pairs = _conv_batchnorm_pairs(net, probe)
    if not pairs:
        return None
    folded = copy.deepcopy(net)
    names = {module: name for name, module in net.named_modules()}
    for conv, norm in pairs:
        replace_module(folded, names[conv], fuse_conv_bn_eval(_get(folded, names[conv]), _get(folded, names[norm])))
        replace_module(folded, names[norm], _what_follows(_get(folded, names[norm])))
    with torch.no_grad():
        if not outputs_close(net(probe), folded(probe)):
            return None
    return folded


def outputs_close(expected, found) -> bool:
    """Whether two networks' outputs (a tensor, or lists or dicts of them) are the same to 1e-4
    of each tensor's largest value."""
    return all(_close(a, b) for a, b in zip(_tensors(expected), _tensors(found), strict=True))


def _conv_batchnorm_pairs(net: nn.Module, probe: torch.Tensor) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(convolution, BatchNorm) pairs where the BatchNorm's input is the convolution's output."""
    calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []  # tensors kept: ids stay unique

    def watch(module, inputs, output):
        calls.append((module, inputs[0] if inputs else None, output))

    foldable = [m for m in net.modules() if isinstance(m, nn.Conv2d) or _is_plain_batchnorm(m)]
    handles = [m.register_forward_hook(watch) for m in foldable]
    try:
        with torch.no_grad():
            net(probe)
    finally:
        for handle in handles:
            handle.remove()
    times_called: dict[nn.Module, int] = {}
    consumers: dict[int, int] = {}
    for module, given, _ in calls:
        times_called[module] = times_called.get(module, 0) + 1
        if given is not None:
            consumers[id(given)] = consumers.get(id(given), 0) + 1
    made_by = {id(output): module for module, _, output in calls if isinstance(module, nn.Conv2d)}
    pairs = []
    for module, given, _ in calls:
        if not _is_plain_batchnorm(module) or given is None:
            continue
        conv = made_by.get(id(given))
        if conv is not None and consumers[id(given)] == 1 and times_called[conv] == 1 and times_called[module] == 1:
            pairs.append((conv, module))
    return pairs


def _is_plain_batchnorm(module: nn.Module) -> bool:
    """BatchNorm2d itself or timm's BatchNormAct2d, with running statistics: nothing else is known to fold."""
    kinds = (nn.BatchNorm2d,) + ((BatchNormAct2d,) if BatchNormAct2d is not None else ())
    return type(module) in kinds and module.track_running_stats and module.running_mean is not None


def _what_follows(norm: nn.Module) -> nn.Module:
    """What is left of a BatchNorm once folded: timm's dropout and activation, or nothing."""
    if BatchNormAct2d is not None and type(norm) is BatchNormAct2d:
        return nn.Sequential(norm.drop, norm.act)
    return nn.Identity()


def _get(root: nn.Module, name: str) -> nn.Module:
    return root.get_submodule(name)


def replace_module(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` in place of ``root``'s submodule called ``name``."""
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _tensors(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    return [t for item in output for t in _tensors(item)]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool((a - b).abs().max() <= 1e-4 * a.abs().max().clamp_min(1e-6))
