"""merge-adapters against peft's own add_weighted_adapter; generate and chat really apply the adapter.

References are computed inside each test with plain peft/transformers calls, never from the product's report.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from finetune.errors import RunError
from finetune.recipe import parse_recipe
from finetune.train import train
from tests.conftest import recipe_dict

pytestmark = pytest.mark.slow
QUESTION = "Where is the treasure buried?"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_llama, pirate_rows) -> dict[str, Path]:
    """Three short runs on one tiny base: two of rank 8 (different seeds), one of rank 4.

    A high learning rate for a few steps moves the random tiny model far enough that greedy text changes.
    """
    root = tmp_path_factory.mktemp("adapters")
    runs = {}
    for name, seed, r in (("one", 1, 8), ("two", 2, 8), ("four", 3, 4)):
        spec = recipe_dict(str(tiny_llama), pirate_rows, max_steps=8, learning_rate=1e-2, seed=seed,
                           lr_scheduler="constant", warmup_ratio=0.0)
        spec["name"] = "pirate"  # one recipe trained three times into three folders, as with --output-dir
        spec["lora"]["r"] = r
        spec["dataset"]["eval_fraction"] = 0.0
        summary = train(parse_recipe(spec), output_dir=root / name, say=lambda *_: None)
        assert summary["status"] == "completed"
        runs[name] = root / name
    return runs


def plain_base(tiny_llama: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()


def peft_reference(tiny_llama: Path, sources: list[Path], weights: list[float], method: str,
                   density: float | None):
    """peft's add_weighted_adapter on the same adapters, done here by hand; returns (model, state dict)."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    model = PeftModel.from_pretrained(plain_base(tiny_llama), str(sources[0] / "adapter"), adapter_name="s0")
    for i, src in enumerate(sources[1:], start=1):
        model.load_adapter(str(src / "adapter"), adapter_name=f"s{i}")
    names = [f"s{i}" for i in range(len(sources))]
    torch.manual_seed(0)
    kwargs = {"density": density} if density is not None else {}
    model.add_weighted_adapter(names, weights, "ref", combination_type=method, **kwargs)
    model.set_adapter("ref")
    model.eval()
    return model, get_peft_model_state_dict(model, adapter_name="ref")


@pytest.mark.parametrize(
    ("method", "sources", "weights", "density"),
    [("linear", ("one", "two"), [0.7, 0.3], None),
     ("ties", ("one", "two"), [1.0, 0.5], 0.5),
     ("dare_ties", ("one", "two"), [0.6, 0.6], 0.7),
     ("cat", ("one", "four"), [0.5, 1.5], None)],
)
def test_merge_equals_peft_add_weighted_adapter(method, sources, weights, density, adapters, tiny_llama,
                                                 tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    from finetune.merge_adapters import merge_adapters

    out = tmp_path / "merged"
    merge_adapters([str(adapters[s]) for s in sources], weights, method, out, density=density,
                   say=lambda *_: None)
    ref_model, ref_state = peft_reference(tiny_llama, [adapters[s] for s in sources], weights, method, density)
    saved = load_file(out / "adapter" / "adapter_model.safetensors")
    assert saved.keys() == ref_state.keys()
    for key, value in ref_state.items():
        assert torch.allclose(saved[key], value, atol=1e-6), (key, (saved[key] - value).abs().max())
    expected_rank = {"cat": 8 + 4}.get(method, 8)
    assert next(v for k, v in saved.items() if "lora_A" in k).shape[0] == expected_rank
    # And loaded with plain peft, the folder gives the reference's logits.
    ids = torch.tensor([[1, 400, 2000, 30, 77, 5]])
    merged = PeftModel.from_pretrained(plain_base(tiny_llama), str(out / "adapter")).eval()
    with torch.no_grad():
        got, want = merged(input_ids=ids).logits, ref_model(input_ids=ids).logits
        with ref_model.disable_adapter():
            bare = ref_model(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert (got - bare).abs().max() > 1e-3, "the merged adapter changes the model"


def test_merge_argument_checks_and_overwrite(adapters, tmp_path):
    from finetune.merge_adapters import check_merge_args, merge_adapters

    one, two, four = (str(adapters[n]) for n in ("one", "two", "four"))
    refusals = [
        (([one], [1.0], "linear", None), "at least two runs"),
        (([one, one], [0.5, 0.5], "linear", None), "listed twice"),
        (([one, two], [0.5, 0.5], "svd", None), "--method svd"),
        (([one, two], [1.0], "linear", None), "1 weights for 2 runs"),
        (([one, two], [0.5, 0.5], "ties", 1.5), "--density 1.5"),
        (([one, two], [0.5, 0.5], "ties", 0.0), "--density 0.0"),
        (([one, two], [0.5, 0.5], "linear", 0.5), "only ties and dare_ties"),
    ]
    for args, expected in refusals:
        with pytest.raises(RunError, match=expected):
            check_merge_args(*args)
    assert check_merge_args([one, two], [0.5, 0.5], "ties", None) == 0.5  # the default density
    for method in ("linear", "ties", "dare_ties"):
        with pytest.raises(RunError, match="equal rank.*--method cat"):
            merge_adapters([one, four], [0.5, 0.5], method, tmp_path / f"m-{method}", say=lambda *_: None)
        assert not (tmp_path / f"m-{method}").exists(), "a refused merge writes nothing"
    out = tmp_path / "m"
    merge_adapters([one, two], [0.5, 0.5], "linear", out, say=lambda *_: None)
    before = (out / "adapter" / "adapter_model.safetensors").read_bytes()
    with pytest.raises(RunError, match="--force"):
        merge_adapters([one, two], [0.9, 0.1], "linear", out, say=lambda *_: None)
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == before, "refused: the earlier merge stays"
    merge_adapters([one, two], [0.9, 0.1], "linear", out, force=True, say=lambda *_: None)
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() != before
    # The same run named two ways is still one run
    with pytest.raises(RunError, match="listed twice"):
        merge_adapters([one, f"{one}/../{Path(one).name}"], [0.5, 0.5], "linear", tmp_path / "m2",
                       say=lambda *_: None)
    # Each source is recorded by its run folder, with a figure of its own (the recipes here share one name)
    report = json.loads((out / "merge.json").read_text())
    assert [s["run"] for s in report["sources"]] == ["one", "two"]
    assert sorted(report["max_abs_logit_diff_vs_sources"]) == ["one", "two"]


def test_a_merge_is_taken_as_a_run_by_export_generate_show_and_runs(adapters, tiny_llama, tmp_path):
    """A merge-adapters output is shaped like a run: export and compare refused it ("an adapter folder, not a run")."""
    from finetune.chat import generate_records, load_target
    from finetune.export import export_run
    from finetune.merge_adapters import merge_adapters
    from finetune.recipe import load_recipe
    from finetune.runs import list_runs, resolve_run

    out = tmp_path / "pirate blend"  # a folder name that is no recipe name: the recipe's is made one
    merge_adapters([str(adapters["one"]), str(adapters["two"])], [0.7, 0.3], "linear", out, say=lambda *_: None)
    assert resolve_run(str(out)) == out  # what export, compare, chat and show look runs up with
    recipe = load_recipe(out / "recipe.yaml")
    assert recipe.name == "pirate-blend" and recipe.base_model == str(tiny_llama)
    assert [r["status"] for r in list_runs(tmp_path)] == ["merged (merge-adapters)"]
    messages = [{"role": "user", "content": QUESTION}]
    model, tokenizer, _ = load_target(str(out))
    (record,) = generate_records(model, tokenizer, [messages], max_new_tokens=12)
    assert record["text"] == peft_greedy(tiny_llama, out / "adapter", messages, 12)
    report = export_run(str(out), say=lambda *_: None)
    assert report["passed"] and (out / "export" / "adapter_model.safetensors").is_file(), report
    # merge-adapters --force replaces its own earlier output, never a run
    merge_adapters([str(adapters["one"]), str(adapters["two"])], [0.5, 0.5], "linear", out, force=True,
                   say=lambda *_: None)
    with pytest.raises(RunError, match="is a run folder"):
        merge_adapters([str(adapters["one"]), str(adapters["two"])], [0.5, 0.5], "linear", adapters["one"],
                       force=True, say=lambda *_: None)


def peft_greedy(tiny_llama: Path, adapter: Path | None, messages: list[dict], max_new_tokens: int) -> str:
    """Greedy text from plain transformers (+ peft), cut at the first end-of-turn token."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter or tiny_llama)
    model = plain_base(tiny_llama)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
    stops = {tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    cut = next((i for i, t in enumerate(out) if t in stops), len(out))
    return tokenizer.decode(out[:cut], skip_special_tokens=True).strip()


def test_generate_applies_the_adapter_and_no_adapter_removes_it(adapters, tiny_llama):
    from finetune.chat import generate_records, load_target

    messages = [{"role": "user", "content": QUESTION}]
    texts = {}
    for adapter in (True, False):
        model, tokenizer, _ = load_target(str(adapters["one"]), adapter=adapter)
        (record,) = generate_records(model, tokenizer, [messages], max_new_tokens=12)
        texts[adapter] = record["text"]
    assert texts[True] != texts[False], "the adapter must change greedy output"
    assert texts[True] == peft_greedy(tiny_llama, adapters["one"] / "adapter", messages, 12)
    assert texts[False] == peft_greedy(tiny_llama, None, messages, 12)


def chat_replies(model, tokenizer, lines: str, max_new_tokens: int) -> list[str]:
    from finetune.chat import chat_loop

    out = io.StringIO()
    chat_loop(model, tokenizer, max_new_tokens=max_new_tokens, stdin=io.StringIO(lines), stdout=out)
    return [line[len("assistant> "):].strip() for line in out.getvalue().splitlines()
            if line.startswith("assistant> ")]


def test_chat_applies_the_adapter(adapters, tiny_llama):
    from finetune.chat import load_target

    model, tokenizer, _ = load_target(str(adapters["one"]))
    replies = chat_replies(model, tokenizer, f"{QUESTION}\n/quit\n", 10)
    question = [{"role": "user", "content": QUESTION}]
    assert replies == [peft_greedy(tiny_llama, adapters["one"] / "adapter", question, 10)]
    assert replies[0] != peft_greedy(tiny_llama, None, question, 10)


def test_chat_keeps_history_and_reset_clears_it(bundled_dir):
    from finetune.chat import load_target

    # The real bundled model: a tiny random one answers the same whatever the context, which proves nothing.
    model, tokenizer, _ = load_target(str(bundled_dir))
    intro, ask = "My name is Zorblat and I keep three green parrots.", "What is my name?"
    replies = chat_replies(model, tokenizer, f"{intro}\n{ask}\n/reset\n{ask}\n/quit\n", 12)
    first = peft_greedy(bundled_dir, None, [{"role": "user", "content": intro}], 12)
    with_history = peft_greedy(bundled_dir, None, [{"role": "user", "content": intro},
                                                   {"role": "assistant", "content": first},
                                                   {"role": "user", "content": ask}], 12)
    fresh = peft_greedy(bundled_dir, None, [{"role": "user", "content": ask}], 12)
    assert with_history != fresh, "the check needs a question whose answer depends on the history"
    assert replies == [first, with_history, fresh], "turn 2 sees turn 1; after /reset the history is gone"


def test_export_refuses_to_overwrite_without_force_and_never_replaces_a_run(adapters, tmp_path):
    from finetune.export import export_run

    out = tmp_path / "export"
    export_run(str(adapters["one"]), out=out, say=lambda *_: None)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert "adapter_model.safetensors" in before
    with pytest.raises(RunError, match="--force"):
        export_run(str(adapters["two"]), out=out, say=lambda *_: None)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before, "refused: nothing changed"
    export_run(str(adapters["two"]), out=out, force=True, say=lambda *_: None)
    after = (out / "adapter_model.safetensors").read_bytes()
    assert after != before["adapter_model.safetensors"], "--force replaced it with the other run's adapter"
    # --force never deletes a run folder, whatever --out says.
    run_before = sorted(p.name for p in adapters["four"].iterdir())
    with pytest.raises(RunError, match="run folder"):
        export_run(str(adapters["two"]), out=adapters["four"], force=True, say=lambda *_: None)
    assert sorted(p.name for p in adapters["four"].iterdir()) == run_before
