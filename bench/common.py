"""What every arm of `make bench` shares: rows, settings, the held-out loss, matmul peaks, the table."""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from finetune.errors import DataError

# finetune: padded, length-grouped batches; finetune-packed: the same rows packed without padding (packing: true).
# finetune-packed-compiled: packed as finetune-packed, with training.compile: true (each decoder layer
# torch.compiled): the fastest configuration, compared with the same packed batches run eagerly.
ARMS = ("finetune", "finetune-packed", "finetune-packed-compiled", "finetune-qlora", "trl-defaults", "trl-tuned")
IGNORE_INDEX = -100


@dataclass
class BenchSettings:
    """The rows, model, LoRA and optimisation that every arm trains with (one JSON file passed to each)."""

    base_model: str
    train_path: str
    heldout_path: str
    batch_size: int = 8
    max_length: int = 512
    lora: dict[str, Any] = field(default_factory=dict)  # finetune's lora section: r, alpha, dropout, targets
    training: dict[str, Any] = field(default_factory=dict)  # learning rate, schedule, seed, clipping

    @classmethod
    def with_finetune_defaults(
        cls, base_model: str, train_path: str, heldout_path: str, batch_size: int = 8, max_length: int = 512
    ) -> BenchSettings:
        """Settings whose LoRA and optimisation values are finetune's recipe defaults (r16, alpha 32)."""
        from finetune.estimate.shape import model_shape
        from finetune.recipe import LoraConfigSection, TrainingConfig
        from finetune.trainer import choose_learning_rate

        t = TrainingConfig()
        # `learning_rate: auto` resolved as train resolves it, so every arm gets the same number.
        learning_rate = choose_learning_rate(t.learning_rate, model_shape(base_model).params)
        training = {
            "learning_rate": learning_rate, "lr_scheduler": t.lr_scheduler, "warmup_ratio": t.warmup_ratio,
            "weight_decay": t.weight_decay, "max_grad_norm": t.max_grad_norm, "seed": t.seed,
        }
        return cls(base_model, train_path, heldout_path, batch_size, max_length,
                   LoraConfigSection().model_dump(), training)

    def save(self, path: Path) -> None:
        """Write the settings for an arm's process."""
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> BenchSettings:
        """Read settings written by `save`."""
        return cls(**json.loads(Path(path).read_text()))

    def recipe_data(
        self, name: str, bits: int | None, data_path: str | None = None, packing: bool | str = "auto",
        compile: bool = False,
    ) -> dict[str, Any]:
        """A finetune recipe (raw data) for these settings: one epoch, automatic precision, no saves."""
        return {
            "name": name,
            "base_model": self.base_model,
            "dataset": {
                "path": data_path or self.train_path, "eval_fraction": 0.0, "max_length": self.max_length,
            },
            "lora": dict(self.lora),
            "quantization": {"bits": bits},
            "training": {
                **self.training, "epochs": 1, "batch_size": self.batch_size, "packing": packing, "compile": compile,
                # One metrics line per step: the bench times every step from the outside.
                "logging_steps": 1, "save_steps": 10**9, "save_minutes": None,
            },
            "tracking": {"wandb": "disabled"},
        }


# --- rows ----------------------------------------------------------------------------------------


def split_rows(count: int, rows: int, heldout: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices of the training rows and the held-out rows: one seeded shuffle, held-out first, disjoint."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return sorted(order[heldout : heldout + rows]), sorted(order[:heldout])


def write_rows(source: str | Path, rows: int, heldout: int, seed: int, folder: Path) -> tuple[Path, Path]:
    """Write train.jsonl and heldout.jsonl (messages rows) into `folder` from a dataset file."""
    from finetune.data import load_conversations

    conversations = load_conversations(source)
    if rows + heldout > len(conversations):
        raise DataError(
            f"{source}: {len(conversations)} rows, but the bench needs {rows} training + {heldout} "
            "held-out rows (lower --rows or --heldout)"
        )
    train_idx, held_idx = split_rows(len(conversations), rows, heldout, seed)
    paths = folder / "train.jsonl", folder / "heldout.jsonl"
    for path, indices in zip(paths, (train_idx, held_idx), strict=True):
        lines = [json.dumps({"messages": conversations[i].messages}, ensure_ascii=False) for i in indices]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


def tokenized_rows(tokenizer: Any, path: str | Path, max_length: int) -> Any:
    """A file's rows tokenised exactly as finetune trains on them (chat template, assistant-only labels)."""
    from finetune.data import load_conversations, tokenize_conversations

    return tokenize_conversations(tokenizer, load_conversations(path), max_length)


# --- held-out loss -------------------------------------------------------------------------------


def masked_token_loss(logits: Any, labels: Any) -> tuple[float, int]:
    """Summed next-token cross-entropy (fp32) over the labelled positions, and how many there were."""
    import torch.nn.functional as F

    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    picked = logits[:, :-1][mask].float()
    total = F.cross_entropy(picked, targets[mask], reduction="sum")
    return float(total), int(mask.sum())


def heldout_loss(model: Any, dataset: Any, pad_id: int, batch_size: int) -> float:
    """Mean loss per labelled token over fixed batches of the held-out rows: eval mode, fp32, no autocast."""
    import torch

    from finetune.data import collate

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))], pad_id)
            out = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                use_cache=False,
            )
            part, n = masked_token_loss(out.logits, batch["labels"].to(device))
            total, count = total + part, count + n
    model.train(was_training)
    return total / max(count, 1)


# --- timing --------------------------------------------------------------------------------------


def step_rates(points: list[tuple[float, int, int]]) -> dict[str, float | None]:
    """Steady-state rates from (seconds since start, step, cumulative non-padding tokens) at step ends.

    The first step carries one-time costs (allocator growth, first kernels), so the rates start after it;
    the time to the first step keeps them.
    """
    if not points:
        return {"time_to_first_step_s": None, "seconds_per_step": None, "tokens_per_s": None}
    points = sorted(points, key=lambda p: p[1])
    (t0, s0, k0), (t1, s1, k1) = points[0], points[-1]
    if s1 == s0 or t1 <= t0:
        return {"time_to_first_step_s": t0, "seconds_per_step": None, "tokens_per_s": None}
    return {
        "time_to_first_step_s": t0, "seconds_per_step": (t1 - t0) / (s1 - s0),
        "tokens_per_s": (k1 - k0) / (t1 - t0),
    }


# --- figures and table ---------------------------------------------------------------------------


def speedup(tokens_per_s: float | None, baseline: float | None) -> float | None:
    """How many times the baseline's tokens/s (None where either is unknown)."""
    if not tokens_per_s or not baseline:
        return None
    return tokens_per_s / baseline


def model_flops_per_s(parameters: int, tokens_per_s: float) -> float:
    """LoRA training FLOP/s: about 2N forward and 2N backward through frozen weights per token."""
    return 4.0 * parameters * tokens_per_s


def peak_share(parameters: int, tokens_per_s: float | None, peak_gflops: float | None) -> float | None:
    """The fraction of the measured matmul peak that the model FLOP/s reach."""
    if not tokens_per_s or not peak_gflops:
        return None
    return model_flops_per_s(parameters, tokens_per_s) / (peak_gflops * 1e9)


def _percent(share: float | None) -> str:
    """A share as a whole percentage, or '-' for a missing one."""
    return _fmt(None if share is None else share * 100, ".0f")


def _fmt(value: Any, spec: str) -> str:
    """Format a number, or '-' for a missing one."""
    return "-" if value is None else format(value, spec)


def format_table(results: list[dict[str, Any]], cuda: bool) -> str:
    """The results as an aligned text table, one row per arm."""
    memory = ["peak alloc MB", "peak reserved MB"] if cuda else ["peak RSS MB", "steps RSS MB"]
    header = [
        "arm", "precision", "ckpt", "tokens/s", "s/step", "first step s", "wall s", *memory, "held-out loss",
    ]
    rows = [header]
    for r in results:
        keys = ("peak_allocated_mb", "peak_reserved_mb") if cuda else ("peak_rss_mb", "peak_rss_steps_mb")
        mem = [_fmt(r.get(k), ".0f") for k in keys]
        rows.append([
            r["arm"], r.get("precision") or "-", {True: "on", False: "off"}.get(r.get("checkpointing"), "-"),
            _fmt(r.get("tokens_per_s"), ".0f"), _fmt(r.get("seconds_per_step"), ".2f"),
            _fmt(r.get("time_to_first_step_s"), ".1f"), _fmt(r.get("wall_s"), ".1f"), *mem,
            _fmt(r.get("heldout_loss"), ".4f"),
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def final_lines(results: list[dict[str, Any]], parameters: int, peak_gflops: float | None) -> list[str]:
    """The bench's last three lines: speedups of arm 1 over both TRL arms and its share of the matmul peak."""
    by_arm = {r["arm"]: r for r in results}
    ours = by_arm.get("finetune", {}).get("tokens_per_s")
    vs_defaults = speedup(ours, by_arm.get("trl-defaults", {}).get("tokens_per_s"))
    vs_tuned = speedup(ours, by_arm.get("trl-tuned", {}).get("tokens_per_s"))
    share = peak_share(parameters, ours, peak_gflops)
    return [
        f"speedup vs trl-defaults: {_fmt(vs_defaults, '.2f')}x",
        f"speedup vs trl-tuned: {_fmt(vs_tuned, '.2f')}x",
        f"share of matmul peak: {_percent(share)}%",
    ]


def compile_line(results: list[dict[str, Any]], parameters: int, peak_gflops: float | None) -> str:
    """finetune-packed-compiled against finetune-packed (the same batches, eager): tokens/s after the first
    step, peak memory, the first step's seconds, and the compiled arm's share of the matmul peak."""
    by_arm = {r["arm"]: r for r in results}
    compiled, eager = by_arm.get("finetune-packed-compiled", {}), by_arm.get("finetune-packed", {})
    share = peak_share(parameters, compiled.get("tokens_per_s"), peak_gflops)
    ratio = speedup(compiled.get("tokens_per_s"), eager.get("tokens_per_s"))
    return (f"packed: compiled vs eager (tokens/s): {_fmt(ratio, '.2f')}x"
            f"; peak RSS {_fmt(compiled.get('peak_rss_mb'), '.0f')} vs {_fmt(eager.get('peak_rss_mb'), '.0f')} MB"
            f"; first step {_fmt(compiled.get('time_to_first_step_s'), '.1f')} vs "
            f"{_fmt(eager.get('time_to_first_step_s'), '.1f')} s"
            f"; compiled share of matmul peak: {_percent(share)}%")


def packing_line(results: list[dict[str, Any]]) -> str:
    """'packed vs padded: 1.23x': non-padding tokens/s of finetune-packed over finetune's padded batches."""
    by_arm = {r["arm"]: r for r in results}
    packed, padded = (by_arm.get(arm, {}).get("tokens_per_s") for arm in ("finetune-packed", "finetune"))
    ratio = speedup(packed, padded)
    return f"packed vs padded (non-padding tokens/s): {_fmt(ratio, '.2f')}x"


# --- the machine ---------------------------------------------------------------------------------


def device_summary() -> dict[str, Any]:
    """The accelerator or CPU that the arms train on, and the features that decide precision."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {"device": "cuda", "name": props.name, "features": [f"sm_{props.major}{props.minor}"],
                "bf16": torch.cuda.is_bf16_supported(), "threads": None}
    from finetune.hardware import cpu_features, cpu_model

    return {"device": "cpu", "name": cpu_model(), "features": list(cpu_features()),
            "threads": torch.get_num_threads()}


def feature_line(summary: dict[str, Any]) -> str:
    """'AMX: no  avx512_bf16: yes  AVX2: yes' for a CPU; the compute capability for a GPU."""
    features = set(summary["features"])
    if summary["device"] == "cuda":
        bf16 = "yes" if summary.get("bf16") else "no"
        return f"compute capability {', '.join(sorted(features))}  bf16: {bf16}"
    yes = {True: "yes", False: "no"}
    return (f"AMX: {yes['amx_bf16' in features]}  avx512_bf16: {yes['avx512_bf16' in features]}  "
            f"AVX2: {yes['avx2' in features]}  threads: {summary.get('threads')}")


def matmul_peak_gflops(precision: str, device: str, sizes: tuple[int, ...] = (1024, 2048)) -> float:
    """The best measured square-matmul GFLOP/s in one precision, on the CPU or the first GPU."""
    import torch

    if device != "cuda":
        from finetune.hardware import measure_matmul_gflops

        return max(measure_matmul_gflops(precision, size, seconds=0.4) for size in sizes for _ in range(2))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    best = 0.0
    for size in (4096, 8192):
        a = torch.randn(size, size, device="cuda", dtype=dtype)
        b = torch.randn(size, size, device="cuda", dtype=dtype)
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < 0.5:
            a @ b
            count += 1
        torch.cuda.synchronize()
        best = max(best, 2 * size**3 * count / (time.perf_counter() - start) / 1e9)
    return best


def parameter_count(model_path: str) -> int:
    """Parameters of a model from its config alone (meta device; tied embeddings counted once)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())
