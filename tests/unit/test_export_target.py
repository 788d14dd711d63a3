"""Where an export may write: a new or empty folder, or (with --force) an earlier export; never anything else."""

from __future__ import annotations

import pytest

from finetune.errors import RunError
from finetune.export import check_target, default_out_dir


def test_force_replaces_an_earlier_export_only(tmp_path):
    check_target(tmp_path / "new", force=False)  # absent: fine
    (tmp_path / "empty").mkdir()
    check_target(tmp_path / "empty", force=False)

    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "verification.json").write_text("{}")
    with pytest.raises(RunError, match="holds an earlier export; use --force"):
        check_target(earlier, force=False)
    check_target(earlier, force=True)

    # `--out outputs --force`: a folder of runs is not an export, and --force must not empty it
    runs = tmp_path / "outputs"
    (runs / "other-run" / "adapter").mkdir(parents=True)
    (runs / "other-run" / "recipe.yaml").write_text("name: x\n")
    for force in (False, True):
        with pytest.raises(RunError, match="not empty and not an earlier export"):
            check_target(runs, force=force)
    with pytest.raises(RunError, match="is a run folder"):
        check_target(runs / "other-run", force=True)


def test_each_kind_of_export_has_a_default_folder_of_its_own(tmp_path):
    folders = {default_out_dir(tmp_path, merge, fmt) for merge in (False, True) for fmt in ("safetensors", "gguf")}
    assert {f.name for f in folders} == {"export", "export-merged", "export-gguf", "export-merged-gguf"}
