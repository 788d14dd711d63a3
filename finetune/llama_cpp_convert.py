"""Run one of llama.cpp's converters with the config keys transformers 5 moved put back where it reads them.

    python -m finetune.llama_cpp_convert convert_hf_to_gguf.py ARGS...   (PYTHONPATH: llama.cpp's tree, gguf-py)

llama.cpp's converters (llama-cpp-python 0.3.36) load a model's config with transformers' `AutoConfig`, and
transformers 5 moves some legacy keys into `rope_parameters` when it does: GPT-NeoX's `rotary_pct` becomes
`rope_parameters["partial_rotary_factor"]`, so the converter's GPT-NeoX class stopped with KeyError 'rotary_pct'
whatever config.json held. This wrapper (finetune.llama_cpp runs every converter through it) wraps the
converter's `ModelBase.load_hparams` to copy each moved value back to its old key, only for the model types
and keys in MOVED_KEYS and only where the key is missing, then runs the converter script unchanged.
"""

from __future__ import annotations

import runpy
import sys
from typing import Any

# {model_type: {key llama.cpp reads: the rope_parameters key transformers 5 moved it to}} (transformers 5.x
# models/gpt_neox/configuration_gpt_neox.py, convert_rope_params_to_dict; llama.cpp conversion/gptneox.py).
MOVED_KEYS = {"gpt_neox": {"rotary_pct": "partial_rotary_factor", "rotary_emb_base": "rope_theta"}}


def restore_moved_keys(config: dict[str, Any]) -> dict[str, Any]:
    """The config with every key of MOVED_KEYS for its model type put back from rope_parameters (if missing)."""
    moved = MOVED_KEYS.get(config.get("model_type", ""), {})
    rope = config.get("rope_parameters") or {}
    restored = {old: rope[new] for old, new in moved.items() if old not in config and new in rope}
    return {**config, **restored}


def main(argv: list[str]) -> None:
    """Patch the converter's config loader, then run the converter script as its own __main__."""
    from conversion.base import ModelBase  # llama.cpp's tree, on PYTHONPATH

    load = ModelBase.load_hparams
    ModelBase.load_hparams = staticmethod(lambda *args, **kwargs: restore_moved_keys(load(*args, **kwargs)))
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
