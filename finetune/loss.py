"""The training loss: summed token cross-entropy whose backward reuses the logits' own memory.

The vocabulary projection's output is the largest tensor of a small model's step (demo: 8 rows x ~220
labelled positions x 49,152 vocabulary = 87M values). torch's cross_entropy saves its fp32 log-softmax for
backward and then holds two more fp32 buffers of that size while it backpropagates (NLL's gradient and
log-softmax's), 12 bytes per logit at the step's peak. The gradient of cross-entropy is softmax minus the
one-hot target, which can be written into the fp32 logits themselves: 4 bytes per logit (measured in
docs/bench.md, "Memory"). The loss value is torch's cross_entropy itself, run without grad
(tests/unit/test_loss.py compares loss and gradients with torch's).
"""

from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100


def summed_cross_entropy(logits: Any, targets: Any) -> Any:
    """Sum of cross-entropies of (N, V) fp32 logits at targets (N,), skipping IGNORE_INDEX; logits are reused."""
    return _summed_cross_entropy().apply(logits, targets)


def _summed_cross_entropy() -> Any:
    """The autograd Function, built on first use so importing this module does not import torch."""
    global _FUNCTION
    if _FUNCTION is None:
        import torch

        class SummedCrossEntropy(torch.autograd.Function):
            """Forward: sum of logsumexp - target logit. Backward: softmax - one-hot, in the logits' memory."""

            @staticmethod
            def forward(ctx: Any, logits: Any, targets: Any) -> Any:
                import torch.nn.functional as F

                # torch's own loss, so the value is bit for bit the usual one; without grad its log-softmax
                # buffer is freed at once instead of being kept for backward.
                total = F.cross_entropy(logits, targets, reduction="sum", ignore_index=IGNORE_INDEX)
                ctx.save_for_backward(logits, targets)
                return total

            @staticmethod
            def backward(ctx: Any, grad_total: Any) -> Any:
                logits, targets = ctx.saved_tensors
                valid = targets != IGNORE_INDEX
                # Softmax in place. Nothing else keeps these logits (the fp32 copy, or the head's fresh output,
                # which the head's own backward does not need); autograd would raise if something did.
                grad = logits.sub_(logits.amax(dim=-1, keepdim=True)).exp_()
                grad.div_(grad.sum(dim=-1, keepdim=True))
                grad.scatter_add_(-1, targets.masked_fill(~valid, 0).unsqueeze(-1),
                                  torch.full_like(targets, -1, dtype=grad.dtype).unsqueeze(-1))
                grad.masked_fill_(~valid.unsqueeze(-1), 0.0)  # ignored rows: zero, even with non-finite logits
                return grad.mul_(grad_total), None

        _FUNCTION = SummedCrossEntropy
    return _FUNCTION


_FUNCTION: Any = None
