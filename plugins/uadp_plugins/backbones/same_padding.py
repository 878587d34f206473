"""TensorFlow's "same" padding without padding the input, for a frozen backbone's inference.

EfficientNet-Lite's TensorFlow weights expect "same" padding: for a stride-2 convolution on an
even-sized input it pads one row and column after the input and none before. PyTorch's
convolutions pad the same amount on both sides, so timm pads the input first (``Conv2dSame``),
a copy of the whole activation for each such layer, and on a CPU the convolution of the
odd-sized result is slower still: EfficientNet-Lite0's stages 2-4 at 256 px took 10.3 ms an image
that way and take 7.5 ms this way (two threads of an AMD EPYC, benchmarks/bench_backbone_folding.py).

Padding one more row and column after the input than before needs no copy: the kernel grown by
one row and column of zeros in front, with symmetric padding one larger, reads exactly the same
inputs with the same weights (the extra zero weights only meet padding). :class:`SamePaddedConv` does that,
or plain symmetric padding where the amounts are even; the features equal the padded
convolution's (tested, and checked on a probe before the copy is used).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from timm.layers.conv2d_same import Conv2dSame
from timm.layers.padding import get_same_padding, pad_same
from torch import nn

from uadp_plugins.backbones.folding import outputs_close, replace_module


class SamePaddedConv(nn.Module):
    """A convolution with "same" padding that pads inside the convolution, not the input."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.dilation, self.groups = conv.stride, conv.dilation, conv.groups
        self._grown: dict[tuple[int, int], torch.Tensor] = {}  # kernels with a zero row / column in front

    def _kernel(self, grow_h: int, grow_w: int) -> torch.Tensor:
        if not (grow_h or grow_w):
            return self.weight
        if (grow_h, grow_w) not in self._grown:
            out, inputs, kh, kw = self.weight.shape
            grown = self.weight.new_zeros(out, inputs, kh + grow_h, kw + grow_w)
            grown[:, :, grow_h:, grow_w:] = self.weight
            self._grown[(grow_h, grow_w)] = grown.contiguous(memory_format=torch.channels_last)
        return self._grown[(grow_h, grow_w)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.weight.shape[-2:]
        pad_h = get_same_padding(x.shape[-2], kh, self.stride[0], self.dilation[0])
        pad_w = get_same_padding(x.shape[-1], kw, self.stride[1], self.dilation[1])
        grow_h, grow_w = pad_h % 2, pad_w % 2  # one more after than before: grow the kernel in front
        if (grow_h or grow_w) and self.dilation != (1, 1):  # a dilated kernel cannot grow by one tap
            x = pad_same(x, [kh, kw], list(self.stride), list(self.dilation))  # a padded copy, as timm's
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        padding = (pad_h // 2 + grow_h, pad_w // 2 + grow_w)
        return F.conv2d(x, self._kernel(grow_h, grow_w), self.bias, self.stride, padding, self.dilation, self.groups)


def without_input_padding(net: nn.Module, channels: int = 3) -> nn.Module:
    """A copy of the eval-mode ``net`` whose "same"-padded convolutions pad inside the
    convolution; ``net`` itself where it has none, or where the copy's outputs differ from the
    original's on an even- and an odd-sized probe."""
    if not any(isinstance(m, Conv2dSame) for m in net.modules()):
        return net
    copied = copy.deepcopy(net)
    for name, module in list(copied.named_modules()):
        if isinstance(module, Conv2dSame):
            replace_module(copied, name, SamePaddedConv(module))
    device = next(net.parameters()).device
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for size in (64, 67):
            probe = torch.randn(2, channels, size, size, generator=generator).to(device)
            probe = probe.contiguous(memory_format=torch.channels_last)
            if not outputs_close(net(probe), copied(probe)):
                return net
    return copied
