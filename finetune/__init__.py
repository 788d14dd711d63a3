"""finetune: LoRA/QLoRA fine-tuning on one consumer GPU (or a CPU), measured end to end."""

__version__ = "0.1.0"
