"""`finetune distill`: a persona prompt turned into training data (context distillation)."""

from finetune.errors import FinetuneError


class DistillError(FinetuneError):
    """A distillation input (persona prompt, prompts file, teacher, output file) is unusable."""
