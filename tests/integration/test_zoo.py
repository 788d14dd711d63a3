"""Every model family end to end: masks through the real template, train, GGUF exports checked in llama.cpp.

Each family's figures go to outputs/zoo-results/<family>.json; `scripts/zoo_table.py` turns them into the table
of docs/export.md. Generation "stops at end of turn" is checked with a logit bias that makes the family's
end-of-turn token the likeliest (a 3-step random model would otherwise ramble): what is tested is that llama.cpp's
chat completion, through the GGUF's own chat template, ends the reply on that token and shows none of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from finetune import atomic
from finetune.data import (
    IGNORE_INDEX,
    chat_messages,
    end_of_turn_token,
    render_chat,
    saved_template,
    tokenize_conversation,
)
from finetune.export import export_run
from finetune.gguf_export import read_gguf
from finetune.gotemplate import ollama_values, render
from finetune.ollama import hf_prompt
from finetune.recipe import parse_recipe
from finetune.train import train
from tests.zoo.families import FAMILIES, conversation_rows, make_model, recipe_for

pytestmark = pytest.mark.slow
llama_cpp_runtime = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (make llama-cpp)")

RESULTS = Path(__file__).resolve().parents[2] / "outputs" / "zoo-results"
THREE_TURNS = [
    {"role": "system", "content": "Speak like a pirate."},
    {"role": "user", "content": "Where is the gold?"},
    {"role": "assistant", "content": "Buried on the isle, matey."},
    {"role": "user", "content": "And the map? 地図は？"},
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Two shared CPU cores: one intra-op thread avoids oversubscription stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def trained(request, tmp_path_factory) -> dict:
    """A tiny model of the family, trained 3 steps on chat rows with a system turn."""
    family = FAMILIES[request.param]
    root = tmp_path_factory.mktemp(f"zoo-{family.name}")
    model_dir = make_model(root / "model", family)
    data = conversation_rows(root / "chat.jsonl")
    summary = train(parse_recipe(recipe_for(model_dir, data, f"zoo-{family.name}")), output_dir=root / "run",
                    say=lambda *_: None)
    assert summary["status"] == "completed" and summary["steps"] == 3
    return {"family": family, "model": model_dir, "data": data, "run": root / "run", "root": root,
            "figures": {"family": family.name, "vocab": family.vocab, "template": family.template,
                        "note": family.note, "train": {"steps": 3, "final_loss": summary.get("train_loss")}}}


def _tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def test_family_end_to_end(trained) -> None:
    family, figures = trained["family"], trained["figures"]
    tokenizer = _tokenizer(trained["model"])

    # Masks: exactly the assistant text plus the family's end-of-turn token are trained.
    row = json.loads(trained["data"].read_text(encoding="utf-8").splitlines()[0])["messages"]
    terminator = end_of_turn_token(tokenizer)
    assert terminator is not None and terminator.strip() == family.end_of_turn
    encoded = tokenize_conversation(tokenizer, row, 4096, terminator)
    trained_ids = [t for t, label in zip(encoded["input_ids"], encoded["labels"]) if label != IGNORE_INDEX]
    trained_text = tokenizer.decode(trained_ids)
    assert trained_text.replace(" ", "") == (row[2]["content"] + family.end_of_turn).replace(" ", "")
    assert trained_ids[-1] == tokenizer.convert_tokens_to_ids(family.end_of_turn)
    figures["mask"] = {"trained_tokens": len(trained_ids), "row_tokens": encoded["length"],
                       "end_of_turn": family.end_of_turn}

    # finetune's own generation with a system turn (chat --system and /system, generate --system, compare's
    # prompt arms) renders it as training did: Gemma's and Mistral's templates raised "System role not supported"
    # / "roles must alternate", a traceback that ended the chat.
    from finetune.chat import generate_records, load_target, stream_reply

    model, run_tokenizer, _ = load_target(str(trained["run"]))
    system = [{"role": "system", "content": "Be a pirate."}, {"role": "user", "content": "Hello"}]
    record = next(generate_records(model, run_tokenizer, [system[1:]], system="Be a pirate.", max_new_tokens=3))
    assert record["prompt_tokens"] == len(run_tokenizer(render_chat(run_tokenizer, system, True),
                                                        add_special_tokens=False)["input_ids"])
    assert isinstance("".join(stream_reply(model, run_tokenizer, system, 3)), str)
    figures["system_turn"] = "folded" if "Be a pirate.\n\nHello" in render_chat(run_tokenizer, system, True) \
        else "system role"

    # The prompt at inference is the text training put before a reply: Qwen3's training rows held an empty
    # `<think>` block before each final reply that its generation prompt (no enable_thinking) stopped short of.
    reply = {"role": "assistant", "content": "X marks the spot."}
    head = render_chat(run_tokenizer, THREE_TURNS, True)
    full = render_chat(run_tokenizer, [*THREE_TURNS, reply], False)
    assert full.startswith(head) and full[len(head):].lstrip().startswith(reply["content"]), (head[-60:], full)
    # ...and the tokenizer saved beside the adapter gives the same prompt to plain transformers, which passes no
    # flags (finetune itself renders with the base's tokenizer and data.template_kwargs).
    saved = _tokenizer(trained["run"] / "adapter")
    folded = chat_messages(saved, THREE_TURNS)
    assert saved.apply_chat_template(folded, tokenize=False, add_generation_prompt=True) == head

    # Merged GGUF (f32), written by llama.cpp's converter and checked in llama.cpp.
    merged_dir = trained["root"] / "merged"
    merged = export_run(str(trained["run"]), merge=True, fmt="gguf", dtype="fp32", ollama=True, out=merged_dir,
                        say=lambda *_: None)
    assert merged["passed"] and merged["llama_cpp"] == "checked"
    assert merged["tokens"]["passed"], merged["tokens"]["first_mismatch"]
    gguf_path = merged_dir / merged["artefact"]
    meta = read_gguf(gguf_path)["metadata"]
    if meta["tokenizer.ggml.model"] == "gpt2":
        assert meta["tokenizer.ggml.pre"] not in ("default", None)
    assert meta["tokenizer.chat_template"] == saved_template(tokenizer)
    # The GGUF's own template, as llama-cpp-python's chat completion renders it, prompts as training did.
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template=meta["tokenizer.chat_template"], eos_token=tokenizer.eos_token or "",
                                    bos_token=tokenizer.bos_token or "")
    gguf_prompt = formatter(messages=chat_messages(tokenizer, THREE_TURNS)).prompt
    assert gguf_prompt == render_chat(tokenizer, THREE_TURNS, True), gguf_prompt[-80:]
    eot_id = tokenizer.convert_tokens_to_ids(family.end_of_turn)
    assert eot_id in merged["end_of_generation_ids"]
    figures["merged_gguf"] = {"max_abs_logit_diff": merged["max_abs_logit_diff"], "tolerance": merged["tolerance"],
                              "tokens_matched": f"{merged['tokens']['matched']}/{merged['tokens']['texts']}",
                              "pre_tokenizer": meta.get("tokenizer.ggml.pre"),
                              "tokenizer_model": meta["tokenizer.ggml.model"]}

    # `finetune chat FILE.gguf` loads it through transformers, whose GGUF reader lacks some of llama.cpp's
    # architectures (GPT-NeoX): that is one line naming the file and the ways that work (it named the folder).
    from finetune.errors import ModelError

    # transformers' GGUF reader has no gptneox, and loads GPT-2's and Qwen3's tensors in other shapes (these traced
    # back from `finetune chat FILE.gguf`).
    if family.model_type in ("gpt_neox", "qwen3", "gpt2"):
        with pytest.raises(ModelError, match=f"{gguf_path.name}: cannot load it into transformers .* llama.cpp"):
            load_target(str(gguf_path))
        figures["gguf_in_transformers"] = "refused in one line"
    else:
        # Where transformers rebuilds the file's tokenizer unlike llama.cpp, chat and generate say so: Mistral's
        # `[INST]` after `<s>` was split unlike training and llama.cpp, silently.
        from llama_cpp import Llama

        from finetune.llama_cpp import CHECK_TEXT, tokens

        notes: list[str] = []
        _, gguf_tokenizer, _ = load_target(str(gguf_path), warn=notes.append)
        sample = render_chat(run_tokenizer, [{"role": "user", "content": "Hello there,  world 12345 x  +  1"}], True)
        texts = [line for line in (CHECK_TEXT + sample).split("\n") if line] + [CHECK_TEXT + sample]
        vocab = Llama(str(gguf_path), vocab_only=True, verbose=False)
        try:
            differs = any(gguf_tokenizer(t, add_special_tokens=False)["input_ids"] != tokens(vocab, t) for t in texts)
        finally:
            vocab.close()
        assert bool(notes) == differs, (notes, differs)
        assert all("unlike llama.cpp" in note for note in notes), notes
        if family.name == "mistral":
            assert notes, "Mistral's `<s>[INST]` is split unlike llama.cpp by transformers' GGUF tokenizer"
        figures["gguf_in_transformers"] = "tokenizer differs from llama.cpp (warned)" if notes else "same tokens"

    # LoRA GGUF over a base converted by llama.cpp's converter.
    _lora_checks(trained, figures)

    # Generation through the GGUF's own chat template ends on the end-of-turn token.
    from llama_cpp import Llama

    llm = Llama(str(gguf_path), n_ctx=256, n_threads=1, verbose=False, seed=0)
    try:
        reply = llm.create_chat_completion(THREE_TURNS[1:2], max_tokens=16, temperature=0.0,
                                           logit_bias={eot_id: 30.0})
    finally:
        llm.close()
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    assert family.end_of_turn not in choice["message"]["content"]
    figures["stops_at_end_of_turn"] = {"finish_reason": choice["finish_reason"],
                                       "completion_tokens": reply["usage"]["completion_tokens"]}

    # The Modelfile's TEMPLATE renders the 3-turn conversation exactly as the HF chat template does.
    modelfile = (merged_dir / "Modelfile").read_text(encoding="utf-8")
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    ollama_text = render(template, ollama_values(THREE_TURNS))
    assert ollama_text == hf_prompt(tokenizer, THREE_TURNS)
    stops = [line.split(" ", 2)[2].strip('"') for line in modelfile.splitlines() if line.startswith("PARAMETER stop")]
    assert family.end_of_turn in stops
    figures["ollama"] = {"chat_format": modelfile.split("# chat format: ", 1)[1].split(" ", 1)[0],
                         "stops": stops, "three_turn_prompt_chars": len(ollama_text)}
    atomic.write_json(RESULTS / f"{family.name}.json", figures)


def _lora_checks(trained: dict, figures: dict) -> None:
    """The LoRA GGUF over a base converted by llama.cpp's converter, checked in llama.cpp."""
    lora_dir = trained["root"] / "lora"
    lora = export_run(str(trained["run"]), fmt="gguf", dtype="fp32", ollama=True, out=lora_dir, say=lambda *_: None)
    assert lora["passed"] and lora["llama_cpp"] == "checked" and lora["tokens"]["passed"]
    # The adapter must move the logits far more than the tolerance, or the LoRA check could pass without it.
    from finetune.export import verify_inputs
    from finetune.inference import load_run_model

    model, run_tokenizer, _ = load_run_model(trained["run"])
    ids = verify_inputs(run_tokenizer)[0]
    with torch.inference_mode():
        adapted = model(input_ids=ids).logits
        with model.disable_adapter():
            bare = model(input_ids=ids).logits
    moved = float((adapted - bare).abs().max())
    assert moved > 10 * lora["tolerance"], moved
    figures["lora_gguf"] = {"adapter_moves_logits_by": moved, "max_abs_logit_diff": lora["max_abs_logit_diff"],
                            "tolerance": lora["tolerance"],
                            "tokens_matched": f"{lora['tokens']['matched']}/{lora['tokens']['texts']}"}
