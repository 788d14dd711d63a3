"""Side measurement: QLoRA's peak memory against 16-bit LoRA on a model whose weights dominate.

    python -m bench.qlora_memory [--hidden 3072 --layers 32 --intermediate 8192 --vocab 4096 --batch 1]

The bundled SmolLM2-135M is a poor test of QLoRA's memory: 28M of its 135M parameters are the tied
embedding, which stays unquantised, and at batch 8 its activations outweigh its weights. So this builds a
random llama of about 3.2B parameters (bf16, 6.4 GB) with a small vocabulary (a byte-level BPE trained on
the rows), saves it, and trains it for a few steps at batch 1 through the real `finetune train` CLI twice:
LoRA (quantization.bits: null) and QLoRA (bits: 4, nf4, double quantisation). It reads CUDA peaks from each
run's summary; on a CPU it reads each process's peak RSS from outside, over its whole life and over the
training steps after the first (bitsandbytes quantises on the CPU while the checkpoint is memory-mapped,
so the whole-process peak of QLoRA is its loading). Needs about 10 GB of free memory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from bench.common import write_rows
from finetune import atomic
from finetune.paths import outputs_dir


def build_tokenizer(rows_path: Path, vocab: int, folder: Path) -> None:
    """A byte-level BPE with `vocab` entries trained on the rows, with ChatML's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from finetune.models import named_chat_template

    texts = []
    for line in rows_path.read_text(encoding="utf-8").splitlines():
        texts += [m["content"] for m in json.loads(line)["messages"]]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts + ["system user assistant\n"], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        bos_token="<|im_start|>")
    tokenizer.chat_template = named_chat_template("chatml")
    tokenizer.save_pretrained(folder)


def build_model(folder: Path, hidden: int, layers: int, intermediate: int, vocab: int) -> int:
    """A random llama saved in bf16 (the 16-bit checkpoint a user would download); returns its size."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=hidden // 128, num_key_value_heads=max(1, hidden // 512), head_dim=128,
        max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    torch.manual_seed(0)
    with torch.device("meta"):
        meta = LlamaForCausalLM(config)
    parameters = sum(p.numel() for p in meta.parameters())
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16: an fp32 copy of 3B weights would need 13 GB
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(torch.float32)
    model.save_pretrained(folder)
    del model
    return parameters


def main(argv: list[str] | None = None) -> int:
    """Build the model, train it with LoRA and with QLoRA, print both peaks and their ratio."""
    from bench.run import ROOT, _read_json, run_process

    parser = argparse.ArgumentParser(prog="python -m bench.qlora_memory")
    parser.add_argument("--data", default=str(ROOT / "datasets" / "pirate.jsonl"))
    parser.add_argument("--hidden", type=int, default=3072)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--intermediate", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)

    import os

    import torch

    cuda = torch.cuda.is_available()
    work = Path(tempfile.mkdtemp(prefix="finetune-qlora-mem-"))
    try:
        rows_path, _ = write_rows(args.data, args.rows, 0, 0, work)
        model_dir = work / "random-llama"
        build_tokenizer(rows_path, args.vocab, model_dir)
        parameters = build_model(model_dir, args.hidden, args.layers, args.intermediate, args.vocab)
        embedding = args.vocab * args.hidden
        print(f"model: random llama, {parameters / 1e9:.2f}B parameters ({args.layers} layers, hidden "
              f"{args.hidden}, vocab {args.vocab}: embedding {embedding / parameters:.1%} of the weights), "
              f"batch {args.batch}, {args.steps} steps", flush=True)
        env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "FINETUNE_OUTPUTS": str(work / "runs"),
               "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        results: dict[str, dict[str, Any]] = {}
        for name, bits in (("lora", None), ("qlora", 4)):
            recipe = {
                "name": f"mem-{name}", "base_model": str(model_dir),
                "dataset": {"path": str(rows_path), "eval_fraction": 0.0, "max_length": 256},
                "quantization": {"bits": bits},
                "training": {"batch_size": args.batch, "epochs": 1, "logging_steps": 1, "save_steps": 10**9,
                             "save_minutes": None},
                "tracking": {"wandb": "disabled"},
            }
            recipe_path = work / f"{name}.yaml"
            recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
            run_dir = work / "runs" / name
            cmd = [sys.executable, "-m", "finetune", "train", str(recipe_path), "--output-dir", str(run_dir),
                   "--max-steps", str(args.steps), "--force"]
            result = run_process(cmd, env, run_dir / "metrics.jsonl", work / f"{name}.log")
            summary = _read_json(run_dir / "summary.json")
            result["precision"] = summary.get("precision")
            if cuda:
                result["peak_mb"] = summary.get("peak_memory_mb")
            else:
                result["peak_mb"] = result["peak_rss_mb"]
            results[name] = result
            if result["returncode"] != 0:
                print((work / f"{name}.log").read_text()[-3000:], flush=True)
            # On a CPU the process peaks while bitsandbytes quantises the checkpoint it has memory-mapped;
            # the peak over the training steps (after the first) is what a longer run needs.
            what = "peak allocated" if cuda else "peak RSS"
            extra = "" if cuda else f", over the steps {result.get('peak_rss_steps_mb') or 0:.0f} MB"
            print(f"  {name}: {what} {result['peak_mb']:.0f} MB{extra}, precision {result['precision']}, "
                  f"{result.get('seconds_per_step') or 0:.1f} s/step", flush=True)
        ratio = results["qlora"]["peak_mb"] / results["lora"]["peak_mb"]
        steps = [results[k].get("peak_rss_steps_mb") for k in ("qlora", "lora")]
        if cuda or not all(steps):
            print(f"QLoRA peak / LoRA peak: {ratio:.2f}", flush=True)
        else:
            print(f"QLoRA peak / LoRA peak over the training steps: {steps[0] / steps[1]:.2f} "
                  f"(whole process, loading included: {ratio:.2f})", flush=True)
        atomic.write_json(outputs_dir() / "bench" / "qlora-memory.json", {
            "model": {"parameters": parameters, "hidden": args.hidden, "layers": args.layers,
                      "intermediate": args.intermediate, "vocab": args.vocab},
            "batch": args.batch, "steps": args.steps, "device": "cuda" if cuda else "cpu",
            "results": results, "ratio": ratio,
        })
        return 0 if all(r["returncode"] == 0 for r in results.values()) else 1
    finally:
        if args.keep:
            print(f"(work folder kept: {work})", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
