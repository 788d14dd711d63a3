"""Model families for the zoo: real tokenizers (llama.cpp's vocab GGUFs) and real chat templates.

Both come from llama.cpp's `models/` folder inside the llama-cpp-python source archive (finetune.llama_cpp
unpacks it; nothing from it is committed). A tokenizer is rebuilt with
`AutoTokenizer.from_pretrained(dir, gguf_file=...)` (GPT-NeoX's, which transformers cannot load, with
`tokenizers`: `neox_tokenizer`) once and cached beside llama.cpp's unpacked sources
(finetune.llama_cpp.cache_dir()/zoo), since the
conversion of a 150k vocabulary takes a minute; each model is a 2-layer (Gemma 3: 6), hidden-64 random network.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from finetune import llama_cpp
from finetune.gguf_export import read_gguf

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Family:
    """One model family of the zoo."""

    name: str
    vocab: str  # llama.cpp models/ggml-vocab-<vocab>.gguf
    template: str  # models/templates/<file>.jinja, catalog:<name> (finetune's named), trl:<file> (trl's copies)
    model_type: str
    end_of_turn: str
    note: str = ""  # where the tokenizer or template is not the family's own, why and what stands in
    extra_tokens: tuple[str, ...] = ()  # special tokens the stand-in vocabulary lacks
    dummy_prefix: bool | None = None  # sentencepiece "▁" before text: None keeps the vocab GGUF's own setting


FAMILIES = {
    f.name: f
    for f in (
        Family("llama3", "llama-bpe", "meta-llama-Llama-3.1-8B-Instruct.jinja", "llama", "<|eot_id|>"),
        Family("qwen2.5", "qwen2", "Qwen-Qwen2.5-7B-Instruct.jinja", "qwen2", "<|im_end|>"),
        Family("qwen3", "qwen2", "Qwen-Qwen3-0.6B.jinja", "qwen3", "<|im_end|>",
               note="Qwen3 shares Qwen2.5's tokenizer (the same 151k vocabulary and pre-tokenizer)"),
        Family("llama2", "llama-spm", "catalog:llama2", "llama", "</s>",
               note="Llama 2's (and Mistral v0.1's) 32k sentencepiece vocabulary with Llama 2's chat template "
                    "(finetune's catalog copy of Llama-2-chat's)"),
        Family("mistral", "llama-spm", "catalog:mistral-instruct", "mistral", "</s>",
               note="Mistral v0.1's own 32k sentencepiece vocabulary (llama.cpp's ggml-vocab-llama-spm.gguf) and "
                    "Mistral 7B Instruct v0.1's chat template (finetune's catalog copy), which has no system role: "
                    "the system text is folded into the first user turn. llama.cpp's models/templates holds only "
                    "later Mistral templates: Nemo's (and v0.3's) renders the system message only before the last "
                    "user turn, so a training row ending in a reply would lose it (finetune refuses such rows), "
                    "and Small 3.2's needs the Tekken vocabulary's [SYSTEM_PROMPT] tokens"),
        Family("phi3.5", "phi-3", "microsoft-Phi-3.5-mini-instruct.jinja", "phi3", "<|end|>"),
        Family("gemma2", "llama-spm", "google-gemma-2-2b-it.jinja", "gemma2", "<end_of_turn>",
               extra_tokens=("<start_of_turn>", "<end_of_turn>"), dummy_prefix=False,
               note="Gemma 2's 256k sentencepiece vocabulary is not in llama.cpp's models/ (ggml-vocab-gemma-4.gguf "
                    "is Gemma 4's BPE vocabulary with merges, llama.cpp's `gemma4` tokenizer type, not Gemma 2's): "
                    "Llama 2's sentencepiece vocabulary stands in, with Gemma's turn tokens added and no dummy "
                    "prefix, as Gemma's tokenizer has; the template has no system role, so the system text is "
                    "folded into the first user turn"),
        Family("gemma3", "llama-spm", "trl:gemma3.jinja", "gemma3_text", "<end_of_turn>",
               extra_tokens=("<start_of_turn>", "<end_of_turn>"), dummy_prefix=False,
               note="Gemma 3 (text, Gemma3ForCausalLM) with the stand-in tokenizer of the gemma2 row (Llama 2's "
                    "sentencepiece vocabulary, Gemma's turn tokens added, no dummy prefix): Gemma 3's 262k "
                    "vocabulary is not in llama.cpp's models/ either. llama.cpp's models/templates has no Gemma 3 "
                    "template; the real one (as google/gemma-3-* ship it) comes from trl's chat_templates "
                    "(installed with trl). Its turn format is Gemma 2's; it takes a system message itself, "
                    "folding it into the first user turn with a blank line, as finetune folds it for Gemma 2"),
        Family("gpt-neox-rinna", "gpt-neox", "catalog:rinna", "gpt_neox", "<|endoftext|>",
               note="rinna's japanese-gpt-neox sentencepiece vocabulary is not in llama.cpp's models/: GPT-NeoX-20B's "
                    "byte-level BPE vocabulary (ggml-vocab-gpt-neox.gguf, rebuilt with `tokenizers`: transformers has "
                    "no GGUF loader for it) is the closest real one; rinna's `ユーザー:` / `システム:` prompt format "
                    "is finetune's catalog template `rinna`"),
        Family("gpt2", "gpt-2", "catalog:plain", "gpt2", "<|endoftext|>",
               note="GPT-2's own tokenizer; rinna japanese-gpt-1b's sentencepiece vocabulary is not in llama.cpp's "
                    "models/, so this row tests the gpt2 architecture with finetune's plain template"),
    )
}


def source() -> Path:
    """llama.cpp's source tree (its models/ folder), from the cached llama-cpp-python sdist."""
    tree = llama_cpp.source_dir()
    if tree is None:
        raise RuntimeError("llama.cpp sources unavailable: run `make llama-cpp` with the package index reachable")
    return tree


def chat_template(family: Family) -> str:
    """The family's real chat template text."""
    if family.template.startswith("catalog:"):
        from finetune.models import named_chat_template

        return named_chat_template(family.template.split(":", 1)[1])
    if family.template.startswith("trl:"):  # real templates trl keeps to recognise models (its README says whose)
        import trl

        return (Path(trl.__file__).parent / "chat_templates" / family.template.split(":", 1)[1]).read_text(
            encoding="utf-8")
    return (source() / "models" / "templates" / family.template).read_text(encoding="utf-8")


def tokenizer_dir(family: Family) -> Path:
    """The family's tokenizer rebuilt from llama.cpp's vocab GGUF (cached), with the real chat template."""
    from transformers import AutoTokenizer

    name = family.vocab + {None: "", True: "-prefix", False: "-noprefix"}[family.dummy_prefix]
    target = llama_cpp.cache_dir() / "zoo" / name  # beside the sources it is built from
    if not (target / "tokenizer_config.json").is_file():
        gguf_file = source() / "models" / f"ggml-vocab-{family.vocab}.gguf"
        meta = read_gguf(gguf_file, arrays=True)["metadata"]
        staging = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if meta["general.architecture"] == "gptneox":  # transformers has no GGUF loader for this vocabulary
            tokenizer = neox_tokenizer(meta)
        else:
            tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        if meta["tokenizer.ggml.model"] == "llama":  # sentencepiece
            prefix = meta.get("tokenizer.ggml.add_space_prefix", True) if family.dummy_prefix is None \
                else family.dummy_prefix
            sentencepiece_like(tokenizer, prefix)
            write_sentencepiece_model(meta, prefix, staging / "tokenizer.model")
        tokenizer.save_pretrained(staging)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    return target


def neox_tokenizer(meta: dict):
    """GPT-NeoX-20B's tokenizer rebuilt from its vocab GGUF, as its own tokenizer.json has it.

    NFC, byte-level BPE over the file's tokens and merges, the two control tokens as special added tokens and
    the space-run tokens (user-defined in the GGUF, 2 to 24 spaces) as normal added tokens, so a run of spaces
    is one token as llama.cpp makes it; the "[PAD...]" rows after them only pad the embedding.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces, kinds = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    end = next(i for i, piece in enumerate(pieces) if kinds[i] == 4 and piece.startswith("[PAD"))
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    backend = Tokenizer(models.BPE({p: i for i, p in enumerate(pieces[:end])}, merges, fuse_unk=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(pieces[i], normalized=False, special=True)
                                for i in range(end) if kinds[i] == 3])
    backend.add_tokens([AddedToken(pieces[i], normalized=True) for i in range(end) if kinds[i] == 4])
    eos = pieces[meta["tokenizer.ggml.eos_token_id"]]
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=eos, eos_token=eos, unk_token=eos,
                                   pad_token="<|padding|>")


def sentencepiece_like(tokenizer, dummy_prefix: bool) -> None:
    """Give a tokenizer rebuilt from an spm vocab GGUF the pipeline of the real models' tokenizer.json.

    transformers' GGUF loader gives it a Metaspace pre-tokenizer, which adds no "▁" to text that already starts
    with a space: " Hello" became [▁Hello] where sentencepiece and llama.cpp give [▁, ▁Hello] (15 of llama-spm's
    47 reference strings differed). Llama 2's and Mistral's own tokenizer.json instead prepend "▁" in the
    normalizer (Gemma's only replaces spaces), which also matches llama.cpp's prefix after each special token.
    """
    from tokenizers import normalizers

    steps = [normalizers.Prepend("\u2581")] if dummy_prefix else []
    tokenizer.backend_tokenizer.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "\u2581")])
    tokenizer.backend_tokenizer.pre_tokenizer = None


def write_sentencepiece_model(meta: dict, dummy_prefix: bool, path: Path) -> None:
    """tokenizer.model from the vocab GGUF's pieces, scores and types (llama.cpp's converter reads the scores).

    Without it convert_hf_to_gguf falls back to tokenizer.json and gives every piece the score -1000, so
    llama.cpp's sentencepiece merges would no longer follow the vocabulary's priorities.
    """
    from sentencepiece import sentencepiece_model_pb2 as spm

    model = spm.ModelProto()
    model.trainer_spec.model_type = spm.TrainerSpec.BPE
    model.trainer_spec.byte_fallback = True
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = dummy_prefix
    model.normalizer_spec.remove_extra_whitespaces = False
    model.normalizer_spec.escape_whitespaces = True
    pieces, scores, kinds = (meta[f"tokenizer.ggml.{k}"] for k in ("tokens", "scores", "token_type"))
    # The sentencepiece model proper ends where the added tokens begin (Phi-3's <|endoftext|>... at 32000: they
    # travel in tokenizer_config.json); one UNKNOWN piece, the first three's others CONTROL, as sentencepiece has it.
    end = next((i for i, kind in enumerate(kinds) if i > 2 and kind not in (1, 6)), len(kinds))
    unk = meta.get("tokenizer.ggml.unknown_token_id", 0)
    for i in range(end):
        kind = 2 if i == unk else 3 if i < 3 or kinds[i] in (2, 3, 4) else kinds[i]
        model.pieces.add(piece=pieces[i], score=scores[i], type=kind)  # GGUF token types use sentencepiece's numbers
    path.write_bytes(model.SerializeToString())


def make_model(folder: Path, family: Family) -> Path:
    """A tiny random model of the family: 2 layers, hidden 64, the real tokenizer and chat template."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(family))
    if family.extra_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(family.extra_tokens)})
    tokenizer.chat_template = chat_template(family)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    vocab = len(tokenizer)
    torch.manual_seed(0)
    if family.model_type == "gpt2":
        kwargs = dict(n_embd=64, n_layer=2, n_head=4, n_positions=256, n_ctx=256)  # real GPT-2 configs carry n_ctx
    else:
        kwargs = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                      max_position_embeddings=256)
        if family.model_type != "gpt_neox":  # GPT-NeoX has no grouped-query attention
            kwargs["num_key_value_heads"] = 2
    if family.model_type in ("gemma2", "gemma3_text", "qwen3"):
        kwargs["head_dim"] = 16
    if family.model_type in ("gemma2", "gemma3_text"):  # queries scaled by head_dim, as llama.cpp assumes
        kwargs["query_pre_attn_scalar"] = 16
    if family.model_type == "gemma3_text":
        # Gemma 3 alternates 5 sliding-window layers (rope base 10k) with 1 global one (1M): 6 layers reach the
        # global one, and a window of 8 tokens is shorter than the 16-18 token check prompts, so llama.cpp's
        # sliding-window mask is compared too (it moves transformers' logits by 0.8 against a 4096 window).
        kwargs.update(num_hidden_layers=6, sliding_window=8)
    eos_ids = sorted({tokenizer.convert_tokens_to_ids(t) for t in (family.end_of_turn, tokenizer.eos_token)})
    config = AutoConfig.for_model(
        family.model_type, vocab_size=vocab, bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_ids[0]
        if len(eos_ids) == 1 else eos_ids, pad_token_id=tokenizer.pad_token_id, **kwargs)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = eos_ids
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if (tokenizer_dir(family) / "tokenizer.model").is_file():  # as real Llama 2 / Mistral / Phi-3 folders ship it
        shutil.copy(tokenizer_dir(family) / "tokenizer.model", folder)
    return folder


def conversation_rows(path: Path, n: int = 8) -> Path:
    """A small chat dataset with a system turn, Japanese, emoji and code, as JSONL."""
    rows = []
    for i in range(n):
        rows.append({"messages": [
            {"role": "system", "content": "You are a terse pirate. 簡潔に。"},
            {"role": "user", "content": f"How many coins in chest {i}? 宝箱{i}"},
            {"role": "assistant", "content": f"Arr, {7 * i} doubloons 🪙 ですわ. `x = {i}`"},
        ]})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def recipe_for(model_dir: Path, data: Path, name: str) -> dict:
    """A 3-step fp32 recipe on the tiny model."""
    return {
        "name": name,
        "base_model": str(model_dir),
        "dataset": {"path": str(data), "max_length": 96, "eval_fraction": 0.0},
        "quantization": {"bits": None},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
        "training": {"max_steps": 3, "batch_size": 4, "learning_rate": 1e-2, "warmup_ratio": 0.0,
                     "lr_scheduler": "constant", "precision": "fp32", "logging_steps": 1, "save_steps": 1000,
                     "save_minutes": None},
        "tracking": "none",
    }


def catalog_names() -> list[str]:
    """Named templates of finetune's catalog (for tests that look them up)."""
    return list(yaml.safe_load((ROOT / "finetune" / "catalog" / "chat_templates.yaml").read_text()))
