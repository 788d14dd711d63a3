"""`finetune compare`: A/B test adapters against system prompts, with statistics and reports.

The path top to bottom is `finetune.compare.run.run_compare`; the other modules each do one job.
"""

from __future__ import annotations

from finetune.errors import FinetuneError


class CompareError(FinetuneError):
    """A compare option is wrong (unknown arm, bad price, an arm that needs something missing)."""
