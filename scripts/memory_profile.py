"""What holds the CPU peak of one training step of the demo recipe's shape, and what the logits cut saves.

    python scripts/memory_profile.py [--recipe recipes/pirate-smollm2.yaml] [--precision auto] [--bits 4]

Loads the recipe's base and LoRA through finetune's own path (finetune.train.build_peft_model), takes the
first batch the length-grouped sampler would train on (the longest rows: the widest batch of the run), and
trains it by hand, reading the process's RSS and its peak (VmHWM, restarted per stage) after each stage:
load, forward, loss, backward, optimizer step. During the forward a saved-tensors hook adds up, per decoder
layer, the bytes autograd keeps for backward. Then three arms of the same step back to back, in this
process: `all` computes the logits at every position (what a plain causal-LM loss does), `labelled` only
where some row has a label (transformers' logits_to_keep), `labelled-reuse` also writes the loss's gradient
into the logits' memory (finetune/loss.py; this is compute_loss now). The losses must agree.
Prints one table; --json writes the figures. Run it on a quiet machine: RSS is not timing, but a busy
machine's other processes do not change it either.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MB = 2**20


def status_mb() -> dict[str, float]:
    """The process's resident memory now and its peak since the last reset, in MB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return {"rss": out["VmRSS"], "peak": out["VmHWM"]}


def reset_peak() -> None:
    """Restart VmHWM at the current RSS (finetune.telemetry.reset_peak_memory)."""
    from finetune.telemetry import reset_peak_memory

    reset_peak_memory("cpu")


def demo_batch(recipe: Any, tokenizer: Any) -> dict[str, Any]:
    """The first batch of the run's length-grouped order: the batch_size longest training rows."""
    from finetune.data import collate, load_conversations, split_train_eval, tokenize_conversations

    rows = load_conversations(recipe.dataset.path, recipe.dataset.format)
    train_rows, _ = split_train_eval(rows, recipe.dataset.eval_fraction, recipe.training.seed)
    dataset = tokenize_conversations(tokenizer, train_rows, recipe.dataset.max_length)
    order = sorted(range(len(dataset)), key=lambda i: -len(dataset[i]["input_ids"]))
    return collate([dataset[i] for i in order[: recipe.training.batch_size]], pad_id=tokenizer.pad_token_id)


class SavedBytes:
    """Bytes autograd saves for backward during a forward, per decoder layer (each storage counted once)."""

    def __init__(self, model: Any) -> None:
        self.current = "embedding/other"
        self.by_layer: dict[str, int] = {}
        self.seen: set[int] = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.handles = []
        for name, module in model.named_modules():
            if name.endswith(tuple(f"layers.{i}" for i in range(1000))):
                self.handles.append(module.register_forward_pre_hook(self._enter(name.rsplit(".", 1)[-1])))
            if name.endswith("lm_head"):
                self.handles.append(module.register_forward_pre_hook(self._enter("lm_head")))

    def _enter(self, label: str) -> Any:
        def hook(module: Any, args: Any) -> None:
            self.current = label
        return hook

    def pack(self, tensor: Any) -> Any:
        """saved_tensors_hooks' pack: count the tensor's storage once, keep the tensor as it is."""
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.seen:  # the weights' storages are in `seen` from the start
            self.seen.add(storage.data_ptr())
            self.by_layer[self.current] = self.by_layer.get(self.current, 0) + storage.nbytes()
        return tensor

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self.handles:
            handle.remove()


def step(model: Any, batch: dict[str, Any], arm: str, trainer_like: Any, optimizer: Any,
         profile: bool = False) -> dict[str, Any]:
    """One training step by hand; RSS and peak per stage; the loss as finetune's compute_loss computes it.

    arm: `all` (logits everywhere, torch's cross-entropy), `labelled` (logits where some row has a label,
    torch's cross-entropy: compute_loss before finetune/loss.py), `labelled-reuse` (compute_loss now).
    """
    import torch
    import torch.nn.functional as F

    stages: dict[str, Any] = {}
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    targets = batch["labels"][:, 1:]
    if arm.startswith("labelled"):
        keep = (targets != -100).any(dim=0).nonzero().squeeze(-1)
        picked = targets[:, keep]
    else:
        keep = 0  # transformers: 0 keeps every position
        picked = torch.cat([targets, torch.full_like(targets[:, :1], -100)], dim=1)
    reset_peak()
    saved = SavedBytes(model) if profile else None
    with trainer_like():
        if saved is not None:
            with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
                outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
            saved.close()
        else:
            outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
    stages["forward"] = status_mb()
    logits_shape = tuple(outputs.logits.shape)
    if arm == "labelled-reuse":
        from finetune.loss import summed_cross_entropy

        logits = outputs.logits  # as finetune.trainer: in the head's dtype, upcast a chunk at a time
        total = summed_cross_entropy(logits.reshape(-1, logits.size(-1)), picked.reshape(-1))
    else:
        logits = outputs.logits.float()
        total = F.cross_entropy(logits.reshape(-1, logits.size(-1)), picked.reshape(-1), reduction="sum")
    loss = total / (picked != -100).sum()
    stages["loss"] = status_mb()
    del outputs, logits
    reset_peak()
    loss.backward()
    stages["backward"] = status_mb()
    reset_peak()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    stages["optimizer"] = status_mb()
    out = {"stages": stages, "loss": loss.item(), "logits_shape": logits_shape,
           "labelled_tokens": int((picked != -100).sum())}
    if saved is not None:
        out["saved_mb_by_layer"] = {k: v / MB for k, v in saved.by_layer.items()}
    return out


def main(argv: list[str] | None = None) -> None:
    """Profile one demo step; print the table (and write --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "pirate-smollm2.yaml"))
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--bits", type=int, choices=[4, 8], default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from contextlib import nullcontext

    import torch

    from finetune import hardware
    from finetune.models import load_tokenizer
    from finetune.recipe import load_recipe
    from finetune.train import build_peft_model

    report: dict[str, Any] = {"imports": status_mb()}
    recipe = load_recipe(args.recipe)
    if args.bits:
        recipe.quantization.bits = args.bits
    hw = hardware.detect()
    precision = hardware.choose_precision(args.precision, hw)
    tokenizer = load_tokenizer(recipe)
    batch = demo_batch(recipe, tokenizer)
    report["batch"] = list(batch["input_ids"].shape)
    reset_peak()
    torch.manual_seed(recipe.training.seed)
    model = build_peft_model(recipe, precision, "cpu", checkpointing=False)
    model.train()
    report["load"] = status_mb()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=0.0)  # lr 0: both arms see the same weights
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
    from peft.helpers import disable_input_dtype_casting

    def trainer_like() -> Any:
        """The Trainer's context for a CPU bf16 step: autocast, peft's input upcast off (finetune.trainer)."""
        from contextlib import ExitStack

        stack = ExitStack()
        stack.enter_context(autocast())
        stack.enter_context(disable_input_dtype_casting(model, active=precision == "bf16"))
        return stack

    report["precision"] = precision
    report["warmup"] = step(model, batch, "labelled", trainer_like, optimizer)  # first step: one-off caches
    arms = ("all", "labelled", "labelled-reuse")
    for arm in arms:
        report[arm] = step(model, batch, arm, trainer_like, optimizer, profile=arm == "all")
    rows, width = report["batch"]
    vocab = model.get_output_embeddings().weight.shape[0]
    print(f"recipe {recipe.name}  precision {precision}  bits {recipe.quantization.bits}  batch {rows} x {width}")
    print(f"RSS after imports {report['imports']['rss']:.0f} MB; after loading {report['load']['rss']:.0f} MB "
          f"(loading peak {report['load']['peak']:.0f} MB)")
    saved = report["all"]["saved_mb_by_layer"]
    layers = [v for k, v in saved.items() if k.isdigit()]
    per_layer = sum(layers) / max(1, len(layers))
    print(f"saved for backward: {sum(saved.values()):.0f} MB ({len(layers)} layers x {per_layer:.1f} MB, lm_head and "
          f"loss inputs {saved.get('lm_head', 0):.0f} MB, other {saved.get('embedding/other', 0):.0f} MB)")
    for arm in arms:
        r = report[arm]
        elements = 1
        for n in r["logits_shape"]:
            elements *= n
        s = r["stages"]
        print(f"{arm:15s} logits {r['logits_shape']} = {elements * 4 / MB:.0f} MB per fp32 copy; "
              f"peak RSS forward {s['forward']['peak']:.0f}, loss {s['loss']['peak']:.0f}, backward "
              f"{s['backward']['peak']:.0f}, optimizer {s['optimizer']['peak']:.0f} MB; RSS after step "
              f"{s['optimizer']['rss']:.0f} MB; loss {r['loss']:.7f}")
    differences = ", ".join(f"{arm} {abs(report[arm]['loss'] - report['all']['loss']):.1e}" for arm in arms[1:])
    print(f"vocab {vocab}; labelled tokens {report['labelled']['labelled_tokens']}; loss against all: {differences}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
