"""`python -m finetune.arena ...`: the arena commands without the main `finetune` CLI (same error funnel)."""

from finetune.arena.cli import app
from finetune.cli import main

if __name__ == "__main__":
    main(app, prog_name="finetune arena")
