"""A QLoRA load on a CPU: no weight left pointing into the memory-mapped checkpoint (finetune.models)."""

from __future__ import annotations

from pathlib import Path

from finetune.models import load_model
from finetune.recipe import parse_recipe
from tests.conftest import recipe_dict


def _mapped(folder: Path) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of the folder's safetensors files."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith(str(folder.resolve())) and fields[5].endswith(".safetensors"):
            low, high = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((low, high))
    return ranges


def test_unquantised_weights_are_copied_out_of_the_checkpoint(tiny_llama, pirate_rows):
    # fp32 weights from an fp32 file: loaded as views of its mapping, they would keep every page quantising
    # read resident for the whole run (on the bundled model, 519 MB and a peak of 1,443 MB instead of 900).
    recipe = parse_recipe({**recipe_dict(str(tiny_llama), pirate_rows), "quantization": {"bits": 4}})
    model = load_model(recipe, "fp32", "cpu")
    ranges = _mapped(Path(tiny_llama))
    views = [name for name, p in model.named_parameters()
             if any(low <= p.data_ptr() < high for low, high in ranges)]
    assert not views, f"still views of the mapped checkpoint: {views[:5]}"
    quantised = [p for p in model.parameters() if not p.dtype.is_floating_point]
    assert quantised, "nothing was quantised"
