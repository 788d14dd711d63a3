"""The estimator's assumptions: every figure not read from the model, recipe or GPU catalogue."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from finetune import catalog as cat


@lru_cache(maxsize=1)
def _assumptions_cached() -> str:
    """The assumptions file, read once (as JSON text so callers get fresh copies)."""
    return json.dumps(cat.load_assumptions())


def assumptions() -> dict[str, Any]:
    """A fresh copy of the estimator's assumptions (catalog/estimate_assumptions.yaml)."""
    data = json.loads(_assumptions_cached())
    for key in ("quantised_slowdown", "cpu_quantised_slowdown"):
        data[key] = {int(k): v for k, v in data[key].items()}
    return data
