"""LoRA dropout on a CPU with its masks drawn in bulk: 16 random bits an element, four elements a 64-bit word.

torch's CPU dropout draws one Bernoulli variate per element (~5 ms per million elements on every CPU measured,
whatever the dtype: docs/bench.md), so the masks for a step's 210 LoRA inputs cost about as much as all of its
matmuls. Filling 64-bit words with random bits costs ~0.9 ms per million elements (a quarter of the draws), and
a 16-bit lane compared with a threshold keeps an element with probability k / 65536, k = round((1 - p) * 65536):
within 1/131072 of 1 - p. The kept elements are scaled by 65536 / k, so the output's expectation is the input's
exactly, as with torch's dropout. The mask is kept for backward as one byte an element, as torch keeps its own.
The draws come from torch's default generator, so a seeded run (and a resumed one, whose checkpoint restores
that generator) draws the same masks every time.
"""

from __future__ import annotations

import zlib
from typing import Any

import torch
from torch import nn

LANES = 65536  # values a 16-bit lane takes


def keep_threshold(p: float) -> int:
    """How many of the 65,536 values of a 16-bit lane keep an element: round((1 - p) * 65536), at least one."""
    return max(1, round((1.0 - p) * LANES))


def draw_mask(shape: torch.Size, p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A uint8 mask of `shape`: 1 with probability keep_threshold(p) / 65536, independently per element."""
    count = 1
    for size in shape:
        count *= size
    # random_(-2**63, None) fills all 64 bits of each word: random_() alone leaves the top bit 0, and every
    # fourth lane would then drop twice as often at p = 0.05 (tests/unit/test_cpu_dropout.py sees it).
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    lanes = words.view(torch.int16)[:count].view(shape)
    mask = torch.empty(shape, dtype=torch.uint8, device=device)
    return torch.lt(lanes, keep_threshold(p) - LANES // 2, out=mask)


@torch.library.custom_op("finetune::lora_dropout_mask", mutates_args=())
def _mask_op(x: torch.Tensor, p: float, site: int) -> torch.Tensor:
    """draw_mask as an operator torch.compile calls but does not trace (it cannot trace random_).

    `site` tells apart the adapters of one block that read the same input (q, k and v; gate and up): the
    compiler takes an operator without mutations for a pure function and merged their calls into one draw, so
    the compiled q, k and v adapters shared a mask where eager ones draw three.
    """
    del site  # only the call's identity for the compiler; the draw does not depend on it
    return draw_mask(x.shape, p, x.device).view(torch.bool)


@_mask_op.register_fake
def _(x: torch.Tensor, p: float, site: int) -> torch.Tensor:
    return torch.empty_like(x, dtype=torch.bool)


class _Dropout(torch.autograd.Function):
    """y = x * mask * scale; the gradient is the incoming one through the same mask and scale."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float) -> torch.Tensor:  # noqa: D102
        mask = draw_mask(x.shape, p, x.device)
        ctx.save_for_backward(mask)
        ctx.scale = LANES / keep_threshold(p)
        return (x * mask).mul_(ctx.scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:  # noqa: D102
        (mask,) = ctx.saved_tensors
        return (grad * mask).mul_(ctx.scale), None


class CpuDropout(nn.Module):
    """Drop-in for nn.Dropout(p) in training on a CPU (see the module's docstring); identity in eval mode."""

    def __init__(self, p: float, site: int = 0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.site = site  # tells the compiled draws of sibling adapters apart (see _mask_op; site_of)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if not self.training or self.p == 0.0:
            return x
        if torch.compiler.is_compiling():
            # Compiled (training.compile): the mask comes from the same draws as an opaque operator, is saved for
            # backward like any operator's output, and the select and scale fuse into the kernels around them.
            return torch.where(_mask_op(x, self.p, self.site), x, 0) * (LANES / keep_threshold(self.p))
        return _Dropout.apply(x, self.p)

    def extra_repr(self) -> str:  # noqa: D102
        return f"p={self.p}, site={self.site}"


def site_of(module_name: str, adapter: str) -> int:
    """A LoRA dropout's site: from the adapted module's own name and the adapter's, not the layer's index.

    Siblings in a block (q_proj, k_proj, v_proj) get different sites, so their compiled draws stay apart; the
    same module in every layer gets the same one, so the layers, compiled one by one, share one graph (a site
    per layer would fail the compiled graph's guards and recompile every layer).
    """
    return zlib.crc32(f"{module_name.rsplit('.', 1)[-1]}/{adapter}".encode()) & 0x7FFFFFFF


def use_cpu_dropout(model: nn.Module) -> int:
    """Replace the nn.Dropout of every LoRA layer's `lora_dropout` with CpuDropout; returns how many it replaced.

    Only peft's LoRA dropouts change: the base model's own dropout layers (attention dropout, usually 0) stay.
    """
    replaced = 0
    for module_name, module in model.named_modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, dropout in list(dropouts.items()):
            if type(dropout) is nn.Dropout and dropout.p > 0:
                fast = CpuDropout(dropout.p, site_of(module_name, name))
                fast.train(dropout.training)
                dropouts[name] = fast
                replaced += 1
    return replaced
