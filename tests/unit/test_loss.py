"""finetune.loss: the same loss and gradients as torch's cross-entropy, with the gradient in the logits' memory."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from finetune.loss import summed_cross_entropy


def _case(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(37, 1000, generator=generator) * 4
    targets = torch.randint(0, 1000, (37,), generator=generator)
    targets[::3] = -100  # prompts and padding carry no loss
    return logits, targets


def test_loss_and_gradients_equal_torch_cross_entropy():
    logits, targets = _case()
    ours_in = logits.clone().requires_grad_()
    ref_in = logits.clone().requires_grad_()
    ours = summed_cross_entropy(ours_in * 1.0, targets)  # through one op, as the model's head output is
    ref = F.cross_entropy(ref_in, targets, reduction="sum")
    assert ours.item() == ref.item()  # torch's own loss: the same value, bit for bit
    (ours / 7).backward()
    (ref / 7).backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-5, atol=1e-7)
    assert ours_in.grad[::3].abs().max() == 0  # ignored rows get no gradient


def test_the_gradient_is_written_into_the_logits_memory():
    logits, targets = _case(1)
    leaf = logits.clone().requires_grad_()
    head_output = leaf * 1.0  # stands for the vocabulary projection's fresh output
    seen = {}
    head_output.register_hook(lambda grad: seen.update(ptr=grad.data_ptr()))
    summed_cross_entropy(head_output, targets).backward()
    assert seen["ptr"] == head_output.data_ptr()  # no new logits-sized buffer for the gradient


def test_an_ignored_row_with_non_finite_logits_poisons_neither_loss_nor_gradients():
    logits, targets = _case(2)
    logits[0] = float("inf")
    targets[0] = -100
    leaf = logits.requires_grad_()
    loss = summed_cross_entropy(leaf * 1.0, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(leaf.grad).all()


def test_chunks_give_torch_loss_and_the_same_gradients_as_one_chunk():
    logits, targets = _case(3)
    whole_in = logits.clone().requires_grad_()
    chunked_in = logits.clone().requires_grad_()
    whole = summed_cross_entropy(whole_in * 1.0, targets)
    # 1000 logits per chunk: one row at a time (and 37 rows never divide evenly into larger chunks below).
    chunked = summed_cross_entropy(chunked_in * 1.0, targets, chunk_elements=1000)
    uneven = summed_cross_entropy(logits.clone() * 1.0, targets, chunk_elements=5000)
    reference = F.cross_entropy(logits, targets, reduction="sum")
    torch.testing.assert_close(chunked, reference, rtol=1e-6, atol=0)
    torch.testing.assert_close(uneven, reference, rtol=1e-6, atol=0)
    (whole / 7).backward()
    (chunked / 7).backward()
    assert torch.equal(chunked_in.grad, whole_in.grad)  # rows are independent: the same values, bit for bit


def test_bf16_logits_give_the_gradient_of_the_old_fp32_copy_and_no_fp32_buffer():
    logits, targets = _case(4)
    head = logits.bfloat16()
    # Before: the head's bf16 output upcast whole to fp32, the loss over that copy (its gradient written into it),
    # autograd casting the gradient back to bf16.
    old_in = head.clone().requires_grad_()
    old = summed_cross_entropy((old_in * 1.0).float(), targets, chunk_elements=10**9)
    (old / 7).backward()
    new_in = head.clone().requires_grad_()
    head_output = new_in * 1.0
    seen = {}
    head_output.register_hook(lambda grad: seen.update(ptr=grad.data_ptr(), dtype=grad.dtype))
    new = summed_cross_entropy(head_output, targets, chunk_elements=4000)
    assert new.dtype == torch.float32
    torch.testing.assert_close(new, old, rtol=1e-6, atol=0)
    (new / 7).backward()
    assert seen == {"ptr": head_output.data_ptr(), "dtype": torch.bfloat16}  # written into the bf16 logits
    torch.testing.assert_close(new_in.grad, old_in.grad, rtol=0, atol=0)
