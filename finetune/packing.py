"""Padding-free packing: a batch's rows laid end to end, positions restarting at 0 for every row.

transformers finds the row boundaries from the position ids when no attention mask is passed
(masking_utils: a block-diagonal causal mask on sdpa and eager; flash-attention's variable-length path on
CUDA), so attention never crosses rows. transformers' DataCollatorWithFlattening gives each row's first
label -100, so after the shift no row's last token is trained to predict the next row's first: the loss is
the same per-token mean over the same label tokens as the padded batch's, with no padding computed.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from finetune.errors import RecipeError

_CATALOG = Path(__file__).parent / "catalog" / "packing.yaml"
IGNORE_INDEX = -100
# auto packs when the median row is at most this share of max_length: several rows then share a line.
SHORT_ROWS = 0.5


@dataclass(frozen=True)
class PackingChoice:
    """Whether this run packs, why, and the layout: lines no wider than the longest row, or one line (flash)."""

    enabled: bool
    reason: str
    one_line: bool = False  # flash-attention's varlen path takes the whole batch as one sequence
    memory_kept: bool = False  # on a CPU, glibc keeps what a packed step frees for the next (allocator.py)

    def describe(self) -> str:
        """'on (why)' / 'off (why)', for the run's log; whether freed memory is kept for the next step."""
        kept = "; freed memory kept for the next step" if self.memory_kept else ""
        return f"{'on' if self.enabled else 'off'} ({self.reason}){kept}"

    def summary(self) -> dict[str, Any]:
        """summary.json's `packing` object."""
        return {"enabled": self.enabled, "reason": self.reason, "memory_kept": self.memory_kept}


@lru_cache(maxsize=1)
def _catalog() -> dict[str, list[str]]:
    """The model types and attention implementations verified to pack exactly (catalog/packing.yaml)."""
    return yaml.safe_load(_CATALOG.read_text(encoding="utf-8"))


def packable_model_types() -> list[str]:
    """Model types whose packed logits equal each row's alone (tests/integration/test_packing.py checks each)."""
    return list(_catalog()["model_types"])


def not_exact_reason(model_type: str, attention: str | None = None, device: str = "cpu") -> str | None:
    """Why packing would not be exact for this model and attention implementation; None when it is."""
    if model_type not in _catalog()["model_types"]:
        return f"model type {model_type!r} is not verified to keep packed rows apart (finetune/catalog/packing.yaml)"
    if attention is not None and attention not in _catalog()["attention"]:
        return f"attention implementation {attention!r} does not read packed position ids"
    if attention is not None and attention.startswith("flash") and device != "cuda":
        return f"{attention} runs on CUDA only"
    return None


def check_recipe(recipe: Any, model_type: str) -> None:
    """Refuse `training.packing: true` for a model it cannot be exact for (before anything is written)."""
    if recipe.training.packing is True:
        reason = not_exact_reason(model_type)
        if reason:
            raise RecipeError(f"training.packing: true, but {reason}; use auto or false")


def choose_packing(
    setting: Any, model_type: str, attention: str, device: str, lengths: list[int], max_length: int,
    batch_size: int,
) -> PackingChoice:
    """The run's packing decision from the recipe's setting (auto/true/false), the model and the rows."""
    reason = not_exact_reason(model_type, attention, device)
    if reason is not None:
        if setting is True:
            raise RecipeError(f"training.packing: true, but {reason}; use auto or false")
        return PackingChoice(False, reason)
    one_line = attention.startswith("flash")
    if setting is False:
        return PackingChoice(False, "the recipe says packing: false")
    if setting is True:
        return PackingChoice(True, "the recipe says packing: true", one_line)
    if batch_size == 1:
        return PackingChoice(False, "batch_size 1: a batch of one row has no padding to remove")
    median = statistics.median(lengths) if lengths else 0
    where = f"median row {median:g} of max_length {max_length} tokens"
    if median > SHORT_ROWS * max_length:
        return PackingChoice(False, f"rows are long against max_length ({where})")
    return PackingChoice(True, f"rows are short against max_length ({where})", one_line)


# Rows are drawn into groups of this many batches' worth; each group is cut by length (see epoch_batches).
MEGABATCH = 8


def _runs_within(lengths: list[int], rows: list[int], cap: int) -> list[list[int]]:
    """`rows` (longest first) cut greedily into the fewest consecutive runs of at most `cap` padded positions."""
    runs: list[list[int]] = []
    for row in rows:
        if runs and (len(runs[-1]) + 1) * lengths[runs[-1][0]] <= cap:
            runs[-1].append(row)
        else:
            runs.append([row])
    return runs


def _cut_balanced(lengths: list[int], rows: list[int], parts: int) -> list[list[int]]:
    """`rows` (longest first) cut into `parts` non-empty consecutive runs, the largest padded run as small as can be.

    A batch's memory and time follow its positions (rows x its longest row, as its lines are laid out), not its
    real tokens: cut at equal tokens, the batch where lengths fall fastest (154 down to 90 tokens in the demo's
    data) held 1,232 positions against ~900 elsewhere and set the run's peak, 0.7 GB higher in fp32.
    """
    low = max(max(lengths[i] for i in rows), -(-sum(lengths[i] for i in rows) // parts))
    high = len(rows) * lengths[rows[0]]  # one run: every row padded to the longest
    while low < high:  # the smallest cap that needs no more than `parts` runs (greedy is optimal here)
        cap = (low + high) // 2
        if len(_runs_within(lengths, rows, cap)) <= parts:
            high = cap
        else:
            low = cap + 1
    runs = _runs_within(lengths, rows, low)
    while len(runs) < parts:  # fewer runs than batches: split the one with most rows (halves never cost more)
        k = max(range(len(runs)), key=lambda r: len(runs[r]))
        half = len(runs[k]) // 2
        runs[k : k + 1] = [runs[k][:half], runs[k][half:]]
    return runs


def epoch_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """One epoch's packed batches of row indices: every row once, as many batches as unpacked, drawn from `seed`.

    Rows are shuffled into groups of MEGABATCH batches' worth; each group is sorted longest first and cut
    into its batches so that the largest batch (in positions: rows x its longest row) is as small as it can
    be; a batch thus holds rows of neighbouring lengths (many short ones or a few long ones) and about as many
    positions as the group's other batches. Neighbouring
    lengths keep a batch's lines narrow: attention's cost per token follows the line's width, and on a CPU
    the narrow lines stay on the matmul attention kernel (a batch mixing one long row with short ones would
    make every line as wide as the long one; docs/bench.md, Packing).
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    group = MEGABATCH * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(order), group):
        rows = sorted(order[start : start + group], key=lambda i: -lengths[i])  # stable: ties keep the draw
        batches.extend(_cut_balanced(lengths, rows, -(-len(rows) // batch_size)))
    # Batches in a random order, not longest first: the first steps are then a fair sample of the epoch's, and
    # fit_to_budget times exactly those (longest first, the demo's fit took 5.3 s a step where the run averaged 3.7).
    return [batches[b] for b in torch.randperm(len(batches), generator=generator).tolist()]


class PackedBatchSampler:
    """Packed batches drawn from seed + epoch, so a resumed run sees exactly the same batches.

    An epoch has as many batches as unpacked training would (rows / batch_size, rounded up), so epochs,
    steps and the learning-rate schedule stay those of the recipe; each batch holds about batch_size rows'
    worth of tokens (more short rows, fewer long ones) and no padding.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int) -> None:
        # Not `batch_size`: accelerate's BatchSamplerShard reads that attribute as every batch's row count and,
        # on several processes, handed out a round only when its last batch had exactly that many rows; the
        # ranks then disagreed on the steps of an epoch and waited for each other for ever (11 rows, 2 ranks).
        # Without it, accelerate shards the batches as the variable-size ones they are.
        self.lengths, self.rows_per_batch, self.seed, self.epoch = list(lengths), batch_size, seed, 0
        self.n_batches = max(1, -(-len(self.lengths) // batch_size))
        # accelerate's DataLoaderShard.set_epoch reaches a batch sampler it has sharded only through its
        # `.sampler`: without this every epoch of a multi-process run drew epoch 0's batches.
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order to draw next (the Trainer calls this at each epoch's start)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self):  # noqa: ANN204
        return iter(epoch_batches(self.lengths, self.rows_per_batch, self.seed + self.epoch))


def lines_of(lengths: list[int], width: int) -> list[list[int]]:
    """Rows (by index) into lines of at most `width` tokens: first fit, longest first."""
    lines: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = next((k for k, free in enumerate(room) if free >= lengths[index]), None)
        if slot is None:
            lines.append([index])
            room.append(width - lengths[index])
        else:
            lines[slot].append(index)
            room[slot] -= lengths[index]
    return lines


def collate_packed(batch: list[dict[str, Any]], pad_id: int, one_line: bool = False) -> dict[str, Any]:
    """Pack a batch: rows end to end in lines no wider than its longest row (or one line), position ids per row.

    Lines shorter than the widest are padded with a segment of their own (positions from 0, no labels), so
    padding attends only to itself. `attention_mask` marks real tokens for the Trainer's count of
    non-padding tokens only; compute_loss drops it before the forward, where it would hide the packing.
    """
    import torch
    from transformers.data.data_collator import DataCollatorWithFlattening

    flatten = DataCollatorWithFlattening(return_tensors="pt")
    lengths = [len(row["input_ids"]) for row in batch]
    groups = [list(range(len(batch)))] if one_line else lines_of(lengths, max(lengths))
    packed = [flatten([{"input_ids": batch[i]["input_ids"], "labels": batch[i]["labels"]} for i in g])
              for g in groups]
    width = max(p["input_ids"].shape[1] for p in packed)
    ids = torch.full((len(packed), width), pad_id, dtype=torch.long)
    labels = torch.full((len(packed), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(packed), width), dtype=torch.long)
    real = torch.zeros((len(packed), width), dtype=torch.long)
    for k, p in enumerate(packed):
        n = p["input_ids"].shape[1]
        ids[k, :n], labels[k, :n], positions[k, :n], real[k, :n] = p["input_ids"][0], p["labels"][0], \
            p["position_ids"][0], 1
        positions[k, n:] = torch.arange(width - n)
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "attention_mask": real}
