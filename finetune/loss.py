"""The training loss: summed token cross-entropy, a few rows of logits at a time, its gradient in their memory.

The vocabulary projection's output is the largest tensor of a small model's step (demo: 8 rows x ~220
labelled positions x 49,152 vocabulary = 87M values). Upcasting it to fp32 for a stable loss, and torch's
cross_entropy over the whole of it, each allocate a fresh logits-sized buffer every step; cross_entropy also
saves its fp32 log-softmax for backward and holds two more fp32 buffers while it backpropagates (12 bytes
per logit at the step's peak, on top of the head's own output). On the 2-core CPUs this was measured on,
those fresh buffers also cost time: the bf16-to-fp32 copy and the log-softmax took 30-260 ms each per step,
depending on whether malloc could reuse memory or had to fault in new pages (torch.profiler, docs/bench.md).

Here the logits stay in the head's dtype. Forward and backward walk them in chunks of rows small enough
(16 MB in fp32) for malloc to reuse one buffer: each chunk is upcast, its loss is torch's own cross_entropy,
and in backward its gradient (softmax minus the one-hot target, computed in fp32 exactly as before) is
written back over the chunk's logits, which nothing else keeps. Rows are independent, so the gradient is the
same, value for value, as the unchunked computation; the loss differs only by the order its sum is added in
(tests/unit/test_loss.py compares both with torch's).
"""

from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100
# Logits per chunk: 4M fp32 values = 16 MB, under glibc's largest mmap threshold (32 MB), so every chunk after
# the first reuses heap memory instead of faulting in fresh pages.
CHUNK_ELEMENTS = 1 << 22


def rows_per_chunk(vocab: int, chunk_elements: int = CHUNK_ELEMENTS) -> int:
    """How many rows of logits one chunk holds (at least one)."""
    return max(1, chunk_elements // max(1, vocab))


def summed_cross_entropy(logits: Any, targets: Any, chunk_elements: int = CHUNK_ELEMENTS) -> Any:
    """Sum of cross-entropies of (N, V) logits at targets (N,), skipping IGNORE_INDEX; the logits are reused.

    `logits` may be 16-bit (the head's output under autocast) or fp32; the loss is computed in fp32 either way
    and returned as an fp32 scalar. Backward overwrites `logits` with their gradient: pass the head's fresh
    output (or a view of it), never a tensor something else needs afterwards.
    """
    return _summed_cross_entropy().apply(logits, targets, rows_per_chunk(logits.size(-1), chunk_elements))


def _summed_cross_entropy() -> Any:
    """The autograd Function, built on first use so importing this module does not import torch."""
    global _FUNCTION
    if _FUNCTION is None:
        import torch

        class SummedCrossEntropy(torch.autograd.Function):
            """Forward: torch's cross_entropy per chunk, summed. Backward: softmax - one-hot, in the logits."""

            @staticmethod
            def forward(ctx: Any, logits: Any, targets: Any, rows: int) -> Any:
                import torch.nn.functional as F

                total = torch.zeros((), dtype=torch.float32, device=logits.device)
                for start in range(0, logits.size(0), rows):
                    # torch's own loss on each chunk; without grad its log-softmax is freed at once.
                    total += F.cross_entropy(logits[start:start + rows].float(), targets[start:start + rows],
                                             reduction="sum", ignore_index=IGNORE_INDEX)
                ctx.rows = rows
                ctx.save_for_backward(logits, targets)
                return total

            @staticmethod
            def backward(ctx: Any, grad_total: Any) -> Any:
                logits, targets = ctx.saved_tensors
                for start in range(0, logits.size(0), ctx.rows):
                    part = logits[start:start + ctx.rows]
                    target = targets[start:start + ctx.rows]
                    valid = target != IGNORE_INDEX
                    # fp32 logits are worked on in place (.float() returns them); 16-bit ones through one fp32
                    # chunk, rounded once when written back, as autograd's cast back to 16 bits rounded before.
                    grad = part.float()
                    grad.sub_(grad.amax(dim=-1, keepdim=True)).exp_()
                    grad.div_(grad.sum(dim=-1, keepdim=True))
                    grad.scatter_add_(-1, target.masked_fill(~valid, 0).unsqueeze(-1),
                                      torch.full_like(target, -1, dtype=grad.dtype).unsqueeze(-1))
                    grad.masked_fill_(~valid.unsqueeze(-1), 0.0)  # ignored rows: zero, even with non-finite logits
                    grad.mul_(grad_total)
                    if grad.data_ptr() != part.data_ptr():
                        part.copy_(grad)
                # Nothing else keeps these logits (the head's fresh output, which the head's own backward does not
                # need); autograd would raise if something did.
                return logits, None, None

        _FUNCTION = SummedCrossEntropy
    return _FUNCTION


_FUNCTION: Any = None
