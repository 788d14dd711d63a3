"""finetune.cpu_dropout: LoRA dropout with bulk-drawn masks, on real torch and peft modules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from finetune.cpu_dropout import LANES, CpuDropout, draw_mask, keep_threshold, site_of, use_cpu_dropout


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_every_lane_of_a_word_keeps_at_the_asked_rate(p: float) -> None:
    torch.manual_seed(0)
    n = 1_000_000
    mask = draw_mask(torch.Size([n]), p).float()
    keep = keep_threshold(p) / LANES
    assert abs(keep - (1 - p)) <= 1 / (2 * LANES)
    sigma = math.sqrt(keep * (1 - keep) / (n / 4))
    # Each of the four 16-bit lanes of a 64-bit word separately: a word whose top bit is never set would
    # keep every fourth element at another rate.
    for lane in range(4):
        rate = mask[lane::4].mean().item()
        assert abs(rate - keep) < 5 * sigma, (lane, rate, keep)


def test_kept_elements_are_scaled_and_the_gradient_follows_the_mask() -> None:
    torch.manual_seed(1)
    x = torch.randn(64, 333, requires_grad=True)  # an element count that is not a multiple of four
    drop = CpuDropout(0.2).train()
    y = drop(x)
    weight = torch.randn_like(y)
    (y * weight).sum().backward()
    kept = y != 0
    scale = LANES / keep_threshold(0.2)
    assert 0.7 < kept.float().mean().item() < 0.9
    torch.testing.assert_close(y[kept], x.detach()[kept] * scale)
    torch.testing.assert_close(x.grad, weight * kept * scale)


def test_the_output_keeps_the_inputs_expectation_and_dtype() -> None:
    torch.manual_seed(2)
    ones = torch.ones(2_000_000, dtype=torch.bfloat16)
    y = CpuDropout(0.05).train()(ones)
    assert y.dtype == torch.bfloat16
    assert abs(y.float().mean().item() - 1.0) < 0.002


def test_seeded_draws_repeat_and_eval_mode_is_the_identity() -> None:
    x = torch.randn(10, 100)
    drop = CpuDropout(0.3).train()
    torch.manual_seed(3)
    first = drop(x)
    torch.manual_seed(3)
    assert torch.equal(first, drop(x))
    assert not torch.equal(first, drop(x))  # the generator moved on
    assert drop.eval()(x) is x
    with pytest.raises(ValueError):
        CpuDropout(1.0)


def test_peft_lora_dropouts_are_replaced_and_train() -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(4)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.1)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, lora_dropout=0.1, target_modules="all-linear",
                                                                init_lora_weights=False))
    assert use_cpu_dropout(model) == 2 * 7  # q, k, v, o, gate, up, down in each layer
    lora_dropouts = [m for name, m in model.named_modules() if ".lora_dropout." in name]
    assert lora_dropouts and all(isinstance(m, CpuDropout) and m.p == 0.1 for m in lora_dropouts)
    # A site per module of a block (its siblings' compiled draws stay apart), the same in every layer (one graph).
    sites = {name: m.site for name, m in model.named_modules() if isinstance(m, CpuDropout)}
    by_layer = [[site for name, site in sites.items() if f".layers.{k}." in name] for k in range(2)]
    assert len(set(by_layer[0])) == 7 and by_layer[0] == by_layer[1], sites
    assert model.base_model.model.config.attention_dropout == 0.1  # the base model's own dropout is not touched
    model.train()
    ids = torch.randint(0, 64, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for name, p in model.named_parameters() if "lora_A" in name]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    # Train mode drops, eval mode does not: two train forwards differ, two eval forwards agree.
    with torch.no_grad():
        a, b = (model(input_ids=ids).logits for _ in range(2))
        assert not torch.equal(a, b)
        model.eval()
        c, d = (model(input_ids=ids).logits for _ in range(2))
        assert torch.equal(c, d)
    assert use_cpu_dropout(model) == 0  # nothing left to replace
    assert all(not isinstance(m, nn.Dropout) for name, m in model.named_modules() if ".lora_dropout." in name)


def test_compiled_dropout_traces_whole_and_its_gradient_uses_the_forwards_mask() -> None:
    # training.compile: random_ cannot be traced, so the mask comes from an opaque operator. If the compiled
    # backward drew (or recomputed) its own mask, the gradient would land where the output was dropped.
    torch.manual_seed(2)
    drop = CpuDropout(0.3).train()
    step = torch.compile(lambda x, w: (drop(x) * w).sum(), fullgraph=True, dynamic=True)  # fails on a graph break
    x = torch.randn(48, 200, requires_grad=True)
    weight = torch.randn(48, 200)
    loss = step(x, weight)
    loss.backward()
    kept = x.grad != 0
    scale = LANES / keep_threshold(0.3)
    assert 0.6 < kept.float().mean().item() < 0.8
    torch.testing.assert_close(x.grad, weight * kept * scale)
    torch.testing.assert_close(loss, (x.detach() * kept * scale * weight).sum())


def test_compiled_siblings_reading_one_input_draw_masks_of_their_own() -> None:
    # q, k and v's adapters read the same normed input. An operator without mutations is a pure function to the
    # compiler, which merged their identical calls into one draw: the three adapters shared a mask compiled where
    # eager draws three. Each sibling's own site keeps the calls apart. (The merge happens in the training
    # graph's partitioning, hence an input that wants a gradient.)
    torch.manual_seed(5)
    q, k = (CpuDropout(0.5, site_of(f"model.layers.0.self_attn.{m}", "default")).train() for m in ("q_proj", "k_proj"))
    both = torch.compile(lambda x: (q(x), k(x)), fullgraph=True, dynamic=True)
    a, b = both(torch.ones(64, 100, requires_grad=True))
    assert 0.4 < (a != 0).float().mean().item() < 0.6 and 0.4 < (b != 0).float().mean().item() < 0.6
    assert not torch.equal(a != 0, b != 0)  # the same mask twice has probability 2**-6400
