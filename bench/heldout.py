"""The held-out loss of every arm's saved adapter, in a fresh process, computed one way for all of them.

    python -m bench.heldout SETTINGS ARMS_JSON OUT_JSON

ARMS_JSON lists {"arm", "adapter", "bits"}; each adapter is loaded onto a fresh base (4-bit where the arm
trained on a 4-bit base, else fp32) and scored with `bench.common.heldout_loss` on the same fixed batches.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.common import BenchSettings, heldout_loss, tokenized_rows


def main(argv: list[str] | None = None) -> int:
    """Score each arm's adapter on the held-out rows and write {arm: loss}."""
    argv = sys.argv[1:] if argv is None else argv
    settings_path, arms_path, out_path = argv
    import torch
    from peft import PeftModel

    from finetune.models import load_model, load_tokenizer
    from finetune.recipe import parse_recipe

    settings = BenchSettings.load(settings_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    losses: dict[str, float | None] = {}
    for arm in json.loads(Path(arms_path).read_text()):
        adapter = Path(arm["adapter"])
        if not (adapter / "adapter_config.json").is_file():
            losses[arm["arm"]] = None
            continue
        recipe = parse_recipe(settings.recipe_data("bench-heldout", arm["bits"]))
        tokenizer = load_tokenizer(recipe)
        rows = tokenized_rows(tokenizer, settings.heldout_path, settings.max_length)
        base = load_model(recipe, "fp32", device)
        if device == "cuda" and arm["bits"] is None:
            base = base.to(device)
        model = PeftModel.from_pretrained(base, str(adapter))
        losses[arm["arm"]] = heldout_loss(model, rows, tokenizer.pad_token_id, settings.batch_size)
        print(f"{arm['arm']}: held-out loss {losses[arm['arm']]:.4f}", flush=True)
        del model, base
    Path(out_path).write_text(json.dumps(losses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
