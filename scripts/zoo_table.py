"""Turn the zoo test's figures (outputs/zoo-results/*.json) into the family table of docs/export.md.

    .venv/bin/pytest -q tests/integration/test_zoo.py && python scripts/zoo_table.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "outputs" / "zoo-results"
COLUMNS = ("family", "train", "mask", "merged GGUF", "LoRA GGUF", "llama.cpp tokens", "llama.cpp logits",
           "stops at end of turn", "Ollama template")


LORA_FIGURES = ("adapter_moves_logits_by", "max_abs_logit_diff", "tokens_matched")


def row(f: dict) -> list[str]:
    """One table row from one family's figures (a result file missing a figure is stale: an error, never nan)."""
    merged, lora, mask = f["merged_gguf"], f["lora_gguf"], f["mask"]
    loss = f["train"].get("final_loss")
    refused = lora.get("refused")
    missing = [k for k in LORA_FIGURES if k not in lora] if not refused else []
    if missing:
        raise ValueError(f"{f['family']}: no {', '.join(missing)} in its results (written by an older test run); "
                         f"rerun: pytest tests/integration/test_zoo.py -k {f['family']}")
    return [
        f"{f['family']} (`{f['vocab']}` vocab)",
        f"3 steps, loss {loss:.2f}" if isinstance(loss, float) else "3 steps",
        f"{mask['trained_tokens']}/{mask['row_tokens']} tokens, ends `{mask['end_of_turn']}`",
        f"f32, pre `{merged['pre_tokenizer'] or merged['tokenizer_model']}`",
        f"refused: {refused}" if refused else
        f"f32 over converted base (adapter moves logits {lora['adapter_moves_logits_by']:.2f})",
        f"{merged['tokens_matched']}" + ("" if refused else f" (LoRA base {lora['tokens_matched']})"),
        f"merged {merged['max_abs_logit_diff']:.1e}, " + ("LoRA refused" if refused else
                                                           f"LoRA {lora['max_abs_logit_diff']:.1e}")
        + f" (tol {merged['tolerance']:g})",
        f"{f['stops_at_end_of_turn']['finish_reason']} after {f['stops_at_end_of_turn']['completion_tokens']} token(s)",
        f"{f['ollama']['chat_format']}, 3-turn prompt equal",
    ]


def main() -> int:
    """Print the markdown table (families in file-name order)."""
    files = sorted(RESULTS.glob("*.json"))
    if not files:
        print(f"no results in {RESULTS}: run tests/integration/test_zoo.py first", file=sys.stderr)
        return 1
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for path in files:
        try:
            cells = [cell.replace("|", "\\|") for cell in row(json.loads(path.read_text(encoding="utf-8")))]
        except ValueError as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            return 1
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
