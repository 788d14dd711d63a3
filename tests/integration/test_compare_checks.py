"""Compare's sharp edges, checked independently: where the fine-tune's cost comes from, and multiple-choice
scores with the shared-prefix KV cache against plain full-sequence log-probabilities."""

from __future__ import annotations

import pytest
import torch

from finetune.recipe import parse_recipe
from finetune.runs import read_summary
from finetune.train import train
from tests.conftest import recipe_dict

pytestmark = pytest.mark.slow


def tiny_run(tmp_path, tiny_llama, pirate_rows, name, cost=None):
    spec = recipe_dict(str(tiny_llama), pirate_rows, max_steps=2)
    spec["name"] = name
    if cost is not None:
        spec["cost"] = cost
    train(parse_recipe(spec), output_dir=tmp_path / name, say=lambda *_: None)
    return tmp_path / name


def test_finetune_cost_comes_from_the_summary_when_the_run_priced_itself(tiny_llama, pirate_rows, tmp_path):
    from finetune.compare.prices import local_figures
    from finetune.compare.run import Adapter, _finetune_cost

    priced = tiny_run(tmp_path, tiny_llama, pirate_rows, "priced",
                      cost={"hourly_rate": {"amount": 3600.0, "currency": "JPY"}})  # 1 yen a second
    summary = read_summary(priced)
    assert summary["cost"]["amount"] > 0
    spent = _finetune_cost(Adapter("priced", priced, summary))
    # The fallback (an electricity estimate) must not be used when the run has its own cost.
    assert spent.source == "summary" and spent.note is None
    assert spent.amount == summary["cost"]["amount"] and spent.currency == "JPY"
    assert spent.amount == pytest.approx(summary["wall_time_s"], rel=0.05, abs=0.05)

    unpriced = tiny_run(tmp_path, tiny_llama, pirate_rows, "unpriced")
    summary = read_summary(unpriced)
    assert summary["cost"] is None
    spent = _finetune_cost(Adapter("unpriced", unpriced, summary))
    local = local_figures()
    # kWh = s / 3600 h x W / 1000; computed here from the catalogue's stated figures, not the product's helper.
    want = summary["wall_time_s"] / 3600 * local["power_w"] / 1000 * local["price_per_kwh"]
    assert spent.source == "estimated-local" and spent.amount == pytest.approx(want, rel=1e-9)
    assert "no cost" in spent.note
    nothing = _finetune_cost(Adapter("gone", tmp_path / "gone", None))
    assert nothing.source == "none" and nothing.amount is None

    # A merge-adapters output has no summary: its cost is what training its sources cost together.
    import json

    from finetune.merge_adapters import sources_cost

    priced_cost = read_summary(priced)["cost"]["amount"]
    blend = tmp_path / "blend"
    blend.mkdir()
    (blend / "merge.json").write_text(json.dumps({"sources_cost": sources_cost([read_summary(priced)] * 2)}))
    spent = _finetune_cost(Adapter("blend", blend, None))
    assert spent.source == "merged-sources" and spent.amount == pytest.approx(2 * priced_cost)
    assert spent.currency == "JPY" and "merge" in spent.note
    assert sources_cost([read_summary(priced), read_summary(unpriced)]) is None  # one source's cost unknown


def plain_option_logprob(model, prefix: list[int], option: list[int]) -> float:
    """Sum of log p(option tokens | prefix) from one full forward pass, no cache, no padding."""
    ids = torch.tensor([prefix + option])
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(input_ids=ids).logits.float(), -1)[0]
    return float(sum(logprobs[len(prefix) - 1 + j, tok] for j, tok in enumerate(option)))


def test_cached_multiple_choice_scores_equal_plain_full_sequence_log_probs(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.compare.likelihood import common_length, option_logprobs, split_options

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    system = [{"role": "system", "content": "Answer with one option."}]
    questions = [
        ("Which is a fruit?", [" apple", " hammer", " a very long option about a granite stone"]),
        ("What colour is the sky on a clear day?", [" blue", " green"]),
        ("空の色は？", [" 青", " 緑色です", " 赤"]),
        # Options of 1 to 5 tokens. Not digits: SmolLM2 splits every digit alone, so " 1" after the prompt's
        # newline becomes "\n " + "1", merging into the prefix (split_options rightly returns None for it).
        ("Pick a number.", [" one", " twenty-two", " three hundred", " four thousand four hundred"]),
    ]
    split = []
    for question, choices in questions:
        text = tokenizer.apply_chat_template([*system, {"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
        parts = split_options(tokenizer, text, choices)
        assert parts is not None
        split.append(parts)
    head_len = common_length([prefix for prefix, _ in split])
    assert head_len > 5, "the questions share the system prompt's tokens"
    with torch.inference_mode():
        head = model(input_ids=torch.tensor([split[0][0][:head_len]]), use_cache=True, logits_to_keep=1).cache
    for with_head in (True, False):
        scored = option_logprobs(model, split, tokenizer.pad_token_id, head if with_head else None,
                                 head_len if with_head else 0)
        for (prefix, options), got in zip(split, scored, strict=True):
            for option, (total, count) in zip(options, got, strict=True):
                assert count == len(option)
                want = plain_option_logprob(model, prefix, option)
                assert total == pytest.approx(want, abs=2e-4), (with_head, option, total, want)


class OpensEveryReplyTheSameWay(torch.nn.Module):
    """The model, but wherever the input token is `after` its next token is almost surely `opening`: a persona
    that opens every reply with its own word ("Arr") where the chat template's generation prompt ends."""

    def __init__(self, model, after: int, opening: int) -> None:
        super().__init__()
        self.model, self.after, self.opening = model, after, opening

    def forward(self, input_ids, logits_to_keep=0, **kwargs):
        out = self.model(input_ids=input_ids, logits_to_keep=0, **kwargs)
        logits = out.logits.clone()
        logits[..., self.opening] += 30.0 * (input_ids == self.after)
        if isinstance(logits_to_keep, torch.Tensor):
            logits = logits[:, logits_to_keep.to(logits.device)]
        elif logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        out.logits = logits
        return out


def test_how_an_arm_opens_its_reply_does_not_enter_the_option_scores(tiny_llama):
    """Options scored as the reply's first words competed with the arm's own opening: a persona adapter's
    "Arr" took the probability every option's first token needed, and its length-normalised scores favoured
    longer options (the demo's adapter fell to 0.14 accuracy, base 0.33). Scored after the reply's fixed
    opening (likelihood.MC_LEAD), an arm's way of opening a reply changes no option's score."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.compare.likelihood import MC_LEAD, mc_prompts, option_logprobs
    from finetune.compare.prompts import MCQuestion

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    questions = [
        MCQuestion(id="q1", question="Where is milk kept?", choices=["refrigerator", "oven", "garden shed"], label=0),
        MCQuestion(id="q2", question="What cuts paper?", choices=["scissors", "a soft sponge", "pillow"], label=0),
    ]
    _, split, _ = mc_prompts(tokenizer, questions, "You are a pirate.")
    assert all(parts is not None for parts in split)
    opened = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                           add_generation_prompt=True)
    for (prefix, options), question in zip(split, questions, strict=True):  # the lead opens, the option follows
        assert tokenizer.decode(prefix).endswith(opened[opened.rindex("x") + 1:] + MC_LEAD)
        assert [tokenizer.decode(option) for option in options] == [f" {c}" for c in question.choices]
    after = tokenizer(opened, add_special_tokens=False)["input_ids"][-1]  # the generation prompt's last token
    arr = tokenizer(" Arr", add_special_tokens=False)["input_ids"][0]
    plain = option_logprobs(model, split, tokenizer.pad_token_id)
    styled = option_logprobs(OpensEveryReplyTheSameWay(model, after, arr), split, tokenizer.pad_token_id)
    for mine, theirs in zip(plain, styled, strict=True):
        assert [count for _, count in mine] == [count for _, count in theirs]
        assert [total for total, _ in mine] == pytest.approx([total for total, _ in theirs], abs=1e-5)


def test_options_that_merge_with_their_prompt_are_scored_whole_after_the_same_opening(tiny_llama, monkeypatch):
    """A question whose options' tokens would merge with the prompt is scored as whole sequences
    (likelihood.mc_fallback_rows): the same options after the same opening, so each option's summed score is
    the split path's plus the opening's own log-probability, one constant per question, and the pick by sum
    is the split path's. No shipped question takes this path on the bundled tokenizer, so it is forced here."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.compare import likelihood
    from finetune.compare.prompts import MCQuestion

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    questions = [
        MCQuestion(id="q1", question="Where is milk kept?", choices=["refrigerator", "oven", "garden shed"], label=0),
        MCQuestion(id="q2", question="What cuts paper?", choices=["scissors", "a soft sponge", "pillow", "rain"],
                   label=0),
        MCQuestion(id="q3", question="空の色は？", choices=["青", "緑色です", "赤"], label=0),
    ]
    system = "Answer with one option."
    prompts, split, _ = likelihood.mc_prompts(tokenizer, questions, system)
    assert all(parts is not None for parts in split)
    lead_tokens = len(tokenizer(likelihood.MC_LEAD, add_special_tokens=False)["input_ids"])
    for messages, question, parts in zip(prompts, questions, split, strict=True):
        whole = likelihood.sequence_logprobs(
            model, likelihood.mc_fallback_rows(tokenizer, messages, question), tokenizer.pad_token_id, 8)
        (alone,) = likelihood.option_logprobs(model, [parts], tokenizer.pad_token_id)
        assert [count for _, count in whole] == [count + lead_tokens for _, count in alone]
        offsets = [w - a for (w, _), (a, _) in zip(whole, alone, strict=True)]
        assert offsets[0] < 0 and offsets == pytest.approx([offsets[0]] * len(offsets), abs=2e-4)

    split_results = likelihood.mc_results(model, tokenizer, questions, system, batch_size=8)
    monkeypatch.setattr(likelihood, "split_options", lambda *args, **kwargs: None)  # every question merges
    whole_results = likelihood.mc_results(model, tokenizer, questions, system, batch_size=8)
    assert [r["id"] for r in whole_results] == [q.id for q in questions]
    assert [r["pred_sum"] for r in whole_results] == [r["pred_sum"] for r in split_results]


def test_generation_hands_the_output_layer_contiguous_rows_under_an_adapter(tmp_path, tiny_llama, pirate_rows):
    """Under a PEFT adapter (frozen base weights) a strided last-position row made torch copy the output
    weight once per row in generation's first step (0.87 GB for the bundled model at 16 rows in bf16):
    load_base's hook must hand the layer contiguous rows, and the replies must not change."""
    from finetune.inference import attach_adapter, generate, load_base, load_run

    run_dir, recipe = load_run(tiny_run(tmp_path, tiny_llama, pirate_rows, "contiguous"))
    model, tokenizer = load_base(recipe, "bf16")
    model = attach_adapter(model, run_dir / "adapter")
    seen: list[tuple[tuple[int, ...], bool]] = []
    head = model.get_output_embeddings()
    head.register_forward_pre_hook(lambda _m, args: seen.append((tuple(args[0].shape), args[0].is_contiguous())))
    chats = [[{"role": "user", "content": q}] for q in ("Hello there", "Where is the treasure buried, matey?")]
    replies = [g.text for g in generate(model, tokenizer, chats, max_new_tokens=4, batch_size=2)]
    assert seen and seen[0][0][:2] == (2, 1)  # the first step projects one position per row
    assert all(contiguous for _, contiguous in seen)
    head._forward_pre_hooks.clear()  # without the hook (and the recorder): the same replies
    assert [g.text for g in generate(model, tokenizer, chats, max_new_tokens=4, batch_size=2)] == replies


def test_the_budget_counts_the_positions_scoring_computes(tiny_llama, pirate_rows):
    """compare's time budget predicts scoring from token counts: they must be the positions the model really
    runs (each batch padded to its longest row, the multiple-choice head once, options padded), with and
    without the persona system prompt."""
    import json
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.compare.arms import Arm
    from finetune.compare.budget import mc_tokens, plan, scoring_tokens
    from finetune.compare.likelihood import mc_results, reference_log_perplexities
    from finetune.compare.prompts import SinglePrompt, load_mc
    from finetune.inference import contiguous_head_input
    from tests.conftest import ROOT

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    contiguous_head_input(model)
    positions = []
    model.register_forward_pre_hook(lambda _m, _a, kw: positions.append(kw["input_ids"].numel()), with_kwargs=True)
    rows = [json.loads(line) for line in pirate_rows.read_text(encoding="utf-8").splitlines()[:21]]
    singles = [SinglePrompt(f"s{i}", [m for m in r["messages"] if m["role"] == "user"][:1],
                            [m for m in r["messages"] if m["role"] != "system"]) for i, r in enumerate(rows)]
    questions = load_mc(ROOT / "datasets" / "eval" / "commonsense_en.jsonl", 21)
    system = "You are a pirate. Answer every question in a pirate's voice, matey."
    batch = 8  # 21 items: batches of 8, 8 and 5, so padding differs per batch
    work = plan(tokenizer, [Arm("base", None, False)], system, SimpleNamespace(batch_size=batch, max_new_tokens=8,
                long_max_new_tokens=8), 256, singles, [], [], [], [questions], lambda *_: False)
    for with_system in (False, True):
        head = [{"role": "system", "content": system}] if with_system else []
        positions.clear()
        reference_log_perplexities(model, tokenizer, [head + s.reference for s in singles], 256, batch)
        assert sum(positions) == scoring_tokens(work.references[with_system], batch)
        positions.clear()
        mc_results(model, tokenizer, questions, system if with_system else None, batch)
        assert sum(positions) == mc_tokens(work.mc_head[with_system][0], work.mc[with_system][0], batch)
    # The persona prompt is in the shared head, scored once, not once per question.
    assert work.mc_head[True][0] > len(tokenizer(system, add_special_tokens=False)["input_ids"])
