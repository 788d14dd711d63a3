"""`python -m finetune` runs the CLI (accelerate launch -m finetune train ... uses this)."""

from finetune.cli import main

if __name__ == "__main__":
    main()
