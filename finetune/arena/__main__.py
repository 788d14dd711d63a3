"""`python -m finetune.arena ...`: the arena commands without the main `finetune` CLI."""

import sys

from finetune.arena.cli import app
from finetune.errors import FinetuneError

try:
    app(prog_name="finetune arena")
except FinetuneError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
