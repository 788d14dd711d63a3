"""staged_dir: the target folder is always whole, old or new, whatever happens to the writer."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from finetune import atomic

# A writer process: replaces `target` through staged_dir with a folder of `files` safetensors files of
# value `value`. `HOOK` decides where it dies: "write" (SIGKILL after the first file, mid-save),
# "between" (rename fallback forced, SIGKILL between its two renames), "exchanged" (SIGKILL right after
# the swap, before the old contents are deleted), "" (finishes).
WRITER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import numpy as np
    from safetensors.numpy import save_file
    from finetune import atomic

    target, value, files, hook = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    if hook == "between":
        atomic._renameat2 = None
        real_rename = os.rename
        def rename(src, dst):
            real_rename(src, dst)
            if Path(src) == target:
                die()
        os.rename = rename
    if hook == "exchanged":
        real_exchange = atomic._exchange
        def exchange(a, b):
            real_exchange(a, b)
            die()
        atomic._exchange = exchange
    with atomic.staged_dir(target) as staging:
        for i in range(files):
            save_file({"w": np.full((256, 256), value, dtype=np.float32)}, str(staging / f"part{i}.safetensors"))
            if i == 0 and hook == "write":
                (target.parent / "started").write_text("1")
                die()
""")


def _write(target: Path, value: float, files: int = 3, hook: str = "") -> int:
    """Run the writer in a fresh process; its return code (-9 when it was killed)."""
    proc = subprocess.run([sys.executable, "-c", WRITER, str(target), str(value), str(files), hook],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr
    return proc.returncode


def _load(target: Path) -> set[float]:
    """The distinct values in a written folder, loading every file (fails on a torn one)."""
    parts = sorted(target.glob("part*.safetensors"))
    assert parts, f"{target} holds no parts"
    return {float(v) for p in parts for v in np.unique(load_file(str(p))["w"])}


def _siblings(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name != "started")


def test_replaces_the_target_and_leaves_nothing_beside(tmp_path):
    target = tmp_path / "adapter"
    with atomic.staged_dir(target) as staging:
        assert staging.parent == tmp_path and not any(staging.iterdir())
        (staging / "a.txt").write_text("old")
        (staging / "extra.txt").write_text("only in the old one")
    with atomic.staged_dir(target) as staging:
        (staging / "a.txt").write_text("new")
    assert (target / "a.txt").read_text() == "new"
    assert not (target / "extra.txt").exists()
    assert _siblings(target) == ["adapter"]


def test_an_exception_leaves_the_target_untouched(tmp_path):
    target = tmp_path / "adapter"
    with atomic.staged_dir(target) as staging:
        (staging / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic.staged_dir(target) as staging:
        (staging / "a.txt").write_text("half")
        raise RuntimeError("writer failed")
    assert (target / "a.txt").read_text() == "old"
    assert _siblings(target) == ["adapter"]


def test_target_never_missing_while_it_is_replaced(tmp_path):
    """A reader polling the target during 40 replacements always finds it (the exchange is one step)."""
    target = tmp_path / "adapter"
    with atomic.staged_dir(target) as staging:
        (staging / "a.txt").write_text("0")
    missing, stop = [], threading.Event()

    def poll() -> None:
        while not stop.is_set():
            if not target.is_dir():
                missing.append(time.monotonic())

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for i in range(40):
            with atomic.staged_dir(target) as staging:
                (staging / "a.txt").write_text(str(i))
    finally:
        stop.set()
        reader.join()
    assert not missing, f"target missing {len(missing)} times"
    assert (target / "a.txt").read_text() == "39"


def test_killed_while_writing_keeps_the_previous_folder(tmp_path):
    target = tmp_path / "adapter"
    assert _write(target, 1.0) == 0
    assert _write(target, 2.0, files=50, hook="write") == -signal.SIGKILL
    assert (tmp_path / "started").exists()  # it died inside the body, with files half written
    assert _load(target) == {1.0}
    assert any(".staging-" in name for name in _siblings(target))  # what the dead writer left
    atomic.recover_dir(target)
    assert _siblings(target) == ["adapter"]
    assert _write(target, 3.0) == 0
    assert _load(target) == {3.0}


def test_killed_between_the_fallback_renames_is_recovered(tmp_path):
    target = tmp_path / "adapter"
    assert _write(target, 1.0) == 0
    assert _write(target, 2.0, hook="between") == -signal.SIGKILL
    assert not target.exists()  # the window the fallback has: the old folder waits aside
    atomic.recover_dir(target)
    assert _load(target) == {1.0}
    assert _siblings(target) == ["adapter"]


def test_killed_right_after_the_exchange_keeps_the_new_folder(tmp_path):
    target = tmp_path / "adapter"
    assert _write(target, 1.0) == 0
    assert _write(target, 2.0, hook="exchanged") == -signal.SIGKILL
    assert _load(target) == {2.0}
    assert any(".staging-" in name for name in _siblings(target))  # the old contents, not yet deleted
    atomic.recover_dir(target)
    assert _siblings(target) == ["adapter"]


def test_write_bytes_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "blob.bin"
    atomic.write_bytes(path, b"\x00" * 10)
    atomic.write_bytes(path, b"\x01\x02")
    assert path.read_bytes() == b"\x01\x02"
    assert sorted(p.name for p in path.parent.iterdir()) == ["blob.bin"]


def test_safetensors_helper_roundtrip(tmp_path):
    """The loader the tests use sees a torn file as an error (so 'loadable' means something)."""
    path = tmp_path / "part0.safetensors"
    save_file({"w": np.ones((4, 4), dtype=np.float32)}, str(path))
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(Exception):  # noqa: B017 - safetensors raises its own error types
        load_file(str(path))


def test_resume_puts_back_a_checkpoint_a_killed_swap_left_aside(tmp_path):
    """What `--resume` tidies first: a checkpoint killed between the fallback's renames, a dead writer's staging."""
    from finetune.runs import latest_checkpoint, remove_incomplete_checkpoints

    checkpoints = tmp_path / "checkpoints"
    for step, value in ((5, 5.0), (10, 10.0)):
        assert _write(checkpoints / f"checkpoint-{step}", value) == 0
    assert _write(checkpoints / "checkpoint-10", 11.0, hook="between") == -signal.SIGKILL
    assert _write(checkpoints / "checkpoint-5", 6.0, files=50, hook="write") == -signal.SIGKILL
    assert latest_checkpoint(checkpoints).name == "checkpoint-5"  # checkpoint-10 waits aside
    remove_incomplete_checkpoints(checkpoints)
    assert latest_checkpoint(checkpoints).name == "checkpoint-10"
    assert _load(checkpoints / "checkpoint-10") == {10.0} and _load(checkpoints / "checkpoint-5") == {5.0}
    assert sorted(p.name for p in checkpoints.iterdir() if p.name != "started") == ["checkpoint-10", "checkpoint-5"]


def test_files_and_folders_get_the_umask_modes_and_keep_a_users_chmod(tmp_path):
    # mkstemp/mkdtemp make 0600/0700 entries: a run's summary and adapter were unreadable to anyone else.
    mask = atomic._UMASK  # the process's umask, read once at import
    atomic.write_text(tmp_path / "summary.json", "{}")
    with atomic.staged_dir(tmp_path / "adapter") as staging:
        (staging / "a.txt").write_text("x")
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "adapter").stat().st_mode & 0o777 == 0o777 & ~mask
    (tmp_path / "summary.json").chmod(0o600)  # the user's choice survives a rewrite
    atomic.write_text(tmp_path / "summary.json", "{ }")
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o600
