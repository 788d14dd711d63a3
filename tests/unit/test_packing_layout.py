"""Packing's arithmetic without a model: batches, lines, labels at row boundaries, the auto decision, the key."""

from __future__ import annotations

import pytest

from finetune.errors import RecipeError
from finetune.packing import PackedBatchSampler, choose_packing, collate_packed, epoch_batches, lines_of
from finetune.recipe import parse_recipe

LENGTHS = [5, 9, 3, 4, 7, 2, 8, 6, 6, 1, 9, 4]


def test_an_epoch_trains_every_row_once_in_balanced_batches_drawn_from_the_seed():
    batches = epoch_batches(LENGTHS, 3, seed=3)  # 12 rows: all in one group (MEGABATCH x 3 rows)
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
    assert len(batches) == 4  # as unpacked: 12 rows / 3 per batch
    tokens = [sum(LENGTHS[i] for i in b) for b in batches]
    assert max(tokens) - min(tokens) <= 2 * max(LENGTHS)
    assert epoch_batches(LENGTHS, 3, seed=3) == batches
    assert epoch_batches(LENGTHS, 3, seed=4) != batches


def test_a_packed_batch_holds_rows_of_neighbouring_lengths():
    # A batch mixing one long row with short ones makes every line as wide as the long one.
    lengths = [(i * 37) % 200 + 20 for i in range(64)]
    batches = epoch_batches(lengths, 8, seed=0)  # one group of 64 rows
    assert len(batches) == 8 and all(batches)
    longest = [max(lengths[i] for i in b) for b in batches]
    assert longest != sorted(longest, reverse=True), "batches come in a random order, not longest first"
    batches.sort(key=lambda b: -max(lengths[i] for i in b))
    for wider, narrower in zip(batches, batches[1:]):
        assert min(lengths[i] for i in wider) >= max(lengths[i] for i in narrower)
    assert len(batches[0]) < len(batches[-1])  # a few long rows, many short ones


def test_every_group_of_a_larger_set_is_cut_into_its_own_batches():
    lengths = [(i * 53) % 250 + 5 for i in range(306)]
    batches = epoch_batches(lengths, 8, seed=1)
    assert len(batches) == 39  # 306 / 8 rounded up, as unpacked
    assert sorted(i for b in batches for i in b) == list(range(306))
    assert all(batches)
    # No batch much larger than the mean in positions (rows x its longest row: what memory follows). Cut at
    # equal tokens, the batch where lengths fall fastest held 2,120 positions here (2.1x the mean).
    mean = sum(lengths) / 39
    assert max(positions(lengths, b) for b in batches) <= 1.5 * mean


def positions(lengths: list[int], batch: list[int]) -> int:
    return len(batch) * max(lengths[i] for i in batch)


def test_a_group_is_cut_so_that_its_largest_batch_is_as_small_as_any_cut_makes_it():
    from itertools import combinations

    rows = sorted(range(len(LENGTHS)), key=lambda i: -LENGTHS[i])
    best = min(max(positions(LENGTHS, rows[a:b]) for a, b in zip((0, *cuts), (*cuts, len(rows))))
               for cuts in combinations(range(1, len(rows)), 3))  # every way to cut 12 rows into 4 batches
    batches = epoch_batches(LENGTHS, 3, seed=3)
    assert max(positions(LENGTHS, b) for b in batches) == best


def test_the_sampler_keeps_the_unpacked_step_count_and_redraws_per_epoch():
    sampler = PackedBatchSampler(LENGTHS, batch_size=5, seed=42)
    assert len(sampler) == 3 == len(list(sampler))  # 12 rows / 5 per batch, rounded up: as unpacked
    first = list(sampler)
    assert list(PackedBatchSampler(LENGTHS, batch_size=5, seed=42)) == first  # a resumed run: the same batches
    sampler.set_epoch(1)
    assert list(sampler) != first and len(list(sampler)) == 3


def test_lines_are_no_wider_than_asked_and_hold_every_row():
    lines = lines_of(LENGTHS, 9)
    assert sorted(i for line in lines for i in line) == list(range(len(LENGTHS)))
    assert all(sum(LENGTHS[i] for i in line) <= 9 for line in lines)
    assert len(lines) == -(-sum(LENGTHS) // 9)  # these lengths fill every line


def test_packed_batch_restarts_positions_and_never_trains_across_a_row_boundary():
    rows = [{"input_ids": [11, 12, 13, 14], "labels": [-100, 12, 13, 14]},
            {"input_ids": [21, 22, 23], "labels": [21, 22, 23]},
            {"input_ids": [31, 32, 33, 34, 35, 36, 37], "labels": [-100, -100, 33, 34, 35, 36, 37]},
            {"input_ids": [41, 42], "labels": [-100, 42]}]
    packed = collate_packed(rows, pad_id=0)
    # Lines as wide as the longest row (7): 7 | 4 + 3 | 2 and padding.
    assert packed["input_ids"].tolist() == [[31, 32, 33, 34, 35, 36, 37], [11, 12, 13, 14, 21, 22, 23],
                                            [41, 42, 0, 0, 0, 0, 0]]
    assert packed["position_ids"][1].tolist() == [0, 1, 2, 3, 0, 1, 2]
    # The second row's first label is dropped: row one's last token must not learn to predict it.
    assert packed["labels"][1].tolist() == [-100, 12, 13, 14, -100, 22, 23]
    # Padding: not counted as a token, no labels, a segment of its own (positions from 0 again).
    assert packed["attention_mask"][2].tolist() == [1, 1, 0, 0, 0, 0, 0]
    assert packed["labels"][2].tolist() == [-100, 42, -100, -100, -100, -100, -100]
    assert packed["position_ids"][2].tolist() == [0, 1, 0, 1, 2, 3, 4]
    one = collate_packed(rows, pad_id=0, one_line=True)
    assert one["input_ids"].shape == (1, 16) and one["attention_mask"].all()


def _choose(setting="auto", model_type="llama", attention="sdpa", device="cpu", lengths=(90, 100, 110),
            max_length=256, batch_size=8):
    return choose_packing(setting, model_type, attention, device, list(lengths), max_length, batch_size)


def test_auto_packs_short_rows_on_an_exact_model_and_otherwise_says_why_not():
    assert _choose().enabled and "short" in _choose().reason
    assert "long against max_length" in _choose(max_length=128).reason and not _choose(max_length=128).enabled
    assert "batch_size 1" in _choose(batch_size=1).reason
    off = _choose(model_type="opt")
    assert not off.enabled and "'opt'" in off.reason
    assert not _choose(attention="flex_attention").enabled
    assert not _choose(attention="flash_attention_2").enabled  # flash-attention is CUDA only
    flash = _choose(attention="flash_attention_2", device="cuda")
    assert flash.enabled and flash.one_line
    assert _choose(setting=True, max_length=128).enabled
    assert not _choose(setting=False).enabled


def test_packing_true_where_it_cannot_be_exact_is_a_one_line_error_naming_the_key():
    with pytest.raises(RecipeError, match=r"^training\.packing: true, but model type 'bloom'"):
        _choose(setting=True, model_type="bloom")


def test_the_recipe_key_takes_auto_true_false_and_names_itself_otherwise(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "q", "completion": "a"}\n', encoding="utf-8")

    def recipe(value):
        return parse_recipe({"name": "t", "dataset": {"path": str(data)}, "training": {"packing": value}})

    assert recipe("auto").training.packing == "auto"
    assert recipe("true").training.packing is True and recipe(False).training.packing is False
    with pytest.raises(RecipeError, match="training.packing"):
        recipe("sometimes")


@pytest.mark.parametrize("rows", [11, 12, 40])
def test_accelerate_shards_packed_batches_evenly_and_redraws_them_per_epoch(rows):
    """On 2 processes, accelerate's own shard of the sampler: as many steps on each rank, every row, new draws.

    With 11 rows (2 packed batches of 8-row budgets) the ranks disagreed on an epoch's steps and the run
    waited for ever: accelerate took the sampler's `batch_size` as every batch's row count. And a sharded
    sampler never heard of a new epoch.
    """
    from accelerate.data_loader import BatchSamplerShard, DataLoaderShard

    lengths = [(7 * i) % 50 + 5 for i in range(rows)]
    samplers = [PackedBatchSampler(lengths, batch_size=8, seed=0) for _ in range(2)]
    shards = [BatchSamplerShard(s, num_processes=2, process_index=rank) for rank, s in enumerate(samplers)]
    drawn = [list(shard) for shard in shards]
    assert len(drawn[0]) == len(drawn[1]) == len(shards[0]), [len(d) for d in drawn]
    assert {i for batches in drawn for batch in batches for i in batch} == set(range(rows))
    loader = DataLoaderShard(list(range(rows)), batch_sampler=shards[0])
    loader.set_epoch(1)
    assert samplers[0].epoch == 1 and [list(b) for b in shards[0]] != drawn[0]
