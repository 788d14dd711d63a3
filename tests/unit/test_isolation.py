"""Every test runs with its own FINETUNE_HOME (tests/conftest.py): nothing cached by an earlier test decides it."""

from __future__ import annotations

import json
from pathlib import Path

from finetune.paths import finetune_home

HOMES: list[Path] = []


def test_finetune_home_is_private_to_this_test(tmp_path):
    home = finetune_home()
    assert home.name.startswith("finetune-home") and home.parent.parent == tmp_path.parent.parent, home
    assert home != Path.home() / ".cache" / "finetune" and not home.is_relative_to(tmp_path)
    HOMES.append(home)
    assert not (home / "hardware.json").exists(), "no measurement left by another test"
    assert (home / "models").is_symlink(), "converted models are shared across the session, nothing else"


def test_a_cache_written_here_is_not_seen_by_the_next_test_a(tmp_path):
    (finetune_home() / "hardware.json").write_text(json.dumps({"key": "x", "gflops": {"fp32": 1, "bf16": 99}}))


def test_a_cache_written_here_is_not_seen_by_the_next_test_b(tmp_path):
    assert not (finetune_home() / "hardware.json").exists()
    assert finetune_home() not in HOMES
