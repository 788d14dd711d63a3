"""Every test runs with its own FINETUNE_HOME (tests/conftest.py): nothing cached by an earlier test decides it."""

from __future__ import annotations

import json
from pathlib import Path

from finetune.paths import finetune_home


def test_finetune_home_is_private_to_this_test(tmp_path):
    home = finetune_home()
    assert home.parent == tmp_path, home
    assert home != Path.home() / ".cache" / "finetune"
    assert not (home / "hardware.json").exists(), "no measurement left by another test"
    assert (home / "models").is_symlink(), "converted models are shared across the session, nothing else"


def test_a_cache_written_here_is_not_seen_by_the_next_test_a(tmp_path):
    (finetune_home() / "hardware.json").write_text(json.dumps({"key": "x", "gflops": {"fp32": 1, "bf16": 99}}))


def test_a_cache_written_here_is_not_seen_by_the_next_test_b(tmp_path):
    assert not (finetune_home() / "hardware.json").exists()
