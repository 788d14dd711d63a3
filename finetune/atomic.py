"""Atomic writes: a killed process leaves either the old file or folder or the new one, never half of one."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h: swap two existing paths in one step
_STAGING = ".staging-"  # a staging folder is named ".<target>.staging-<pid>-<random>"
_ASIDE = ".aside"  # fallback only: ".<target>.aside" holds the old folder between the two renames


def _read_umask() -> int:
    """The process's umask (only settable to read it: set and put back at once, at import)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp and mkdtemp create owner-only entries (0600, 0700): ours get the modes a plain open() or mkdir()
# would give, so a run folder reads like any other (a second account serving the arena, a shared machine).
_UMASK = _read_umask()


def _mode(path: Path, default: int) -> int:
    """The mode to give a new version of `path`: the present one's (a user's chmod is kept), else the umask's."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return default & ~_UMASK


def _fsync(path: Path) -> None:
    """Flush a file or a folder's entries to disk (a folder's fsync makes renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes to a temporary file beside `path`, fsync it, rename it into place, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _mode(path, 0o666))
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent)


def write_text(path: str | Path, text: str) -> None:
    """Atomically write UTF-8 text (temporary file beside `path`, fsync, rename)."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any) -> None:
    """Atomically write JSON (UTF-8, indented, non-ASCII kept readable)."""
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


# --- folders ------------------------------------------------------------------------------------------------


def _libc_renameat2() -> Any:
    """libc's renameat2 (glibc >= 2.28), or None where there is none (macOS, musl without it)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        func = libc.renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_renameat2 = _libc_renameat2()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically; False where the system or file system cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    # This kernel or file system (NFS, some FUSE) has no exchange: use the fallback.
    if err in (errno.EINVAL, errno.ENOTSUP, errno.ENOSYS):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _aside(target: Path) -> Path:
    return target.with_name(f".{target.name}{_ASIDE}")


def recover_dir(target: str | Path) -> None:
    """Finish what a writer killed inside staged_dir left: restore the old folder, drop stale staging.

    Only the rename fallback can leave `target` missing (killed between its two renames); the old
    folder then waits at ".<name>.aside" and is put back. Staging folders of dead processes are removed.
    """
    target = Path(target)
    aside = _aside(target)
    if aside.exists():
        if target.exists():
            shutil.rmtree(aside, ignore_errors=True)  # the swap finished; only the clean-up was lost
        else:
            os.rename(aside, target)
            _fsync(target.parent)
    if not target.parent.is_dir():
        return
    for stale in target.parent.glob(f".{target.name}{_STAGING}*"):
        pid = stale.name.rsplit(_STAGING, 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root` (bottom-up), so the rename publishes data on disk."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            _fsync(Path(folder) / name)
        _fsync(Path(folder))


def _publish(staging: Path, target: Path) -> None:
    """Put `staging` in place of `target`; `target` is never missing where the kernel can exchange."""
    parent = target.parent
    if not target.exists() and not target.is_symlink():
        os.rename(staging, target)
    elif not _exchange(staging, target):
        # Fallback (no renameat2 exchange): two renames with the old folder kept aside in between;
        # recover_dir puts it back if the process dies between them.
        aside = _aside(target)
        os.rename(target, aside)
        _fsync(parent)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(aside, target)
            raise
        _fsync(parent)
        shutil.rmtree(aside, ignore_errors=True)
        return
    _fsync(parent)


@contextmanager
def staged_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder beside `target`; on normal exit it replaces `target` atomically.

    The body writes into the yielded folder. On success its files are fsynced and it is swapped
    with `target` (Linux renameat2 RENAME_EXCHANGE: the target exists at every instant), then the
    old contents are deleted. On an exception the staging folder is removed and `target` is untouched.
    Without the exchange (not Linux, or NFS) the old folder is renamed aside and the new one in; a
    process killed between the two renames leaves the old one aside, and recover_dir (called by the
    next staged_dir on the same target, and by readers that care) puts it back.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{_STAGING}{os.getpid()}-", dir=target.parent))
    try:
        staging.chmod(_mode(target, 0o777))
        yield staging
        _fsync_tree(staging)
        _publish(staging, target)
    finally:
        # After a failure this is the unfinished folder; after an exchange, the old contents.
        shutil.rmtree(staging, ignore_errors=True)


def publish_dir(folder: str | Path, target: str | Path) -> None:
    """Put a finished folder written beside `target` (e.g. by several ranks) in its place, as staged_dir does."""
    with staged_dir(target) as staging:
        os.replace(folder, staging)  # a folder may replace an empty one in one rename (same file system)


# --- JSON lines -----------------------------------------------------------------------------------------------


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it (a torn last line is skipped by readers)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        handle.flush()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read JSON lines, skipping a torn last line left by a killed writer."""
    records = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
