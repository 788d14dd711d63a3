"""Where things live on disk: the finetune cache and the outputs folder."""

from __future__ import annotations

import os
from pathlib import Path


def finetune_home() -> Path:
    """Return the cache root (`$FINETUNE_HOME`, default `~/.cache/finetune`)."""
    return Path(os.environ.get("FINETUNE_HOME", Path.home() / ".cache" / "finetune")).expanduser()


def outputs_dir() -> Path:
    """Return the folder that holds run folders (`$FINETUNE_OUTPUTS`, default `./outputs`)."""
    return Path(os.environ.get("FINETUNE_OUTPUTS", "outputs"))
