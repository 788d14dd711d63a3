"""One `finetune train` per run folder: an advisory lock on the folder itself, released when the process ends."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from finetune.errors import RunError

PID_FILE = ".train.pid"


class RunLock:
    """An exclusive flock on the run folder (not a file in it: `--force` may empty the folder meanwhile).

    The kernel drops the lock when the process dies, even by SIGKILL, so a crash never leaves it stale.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._fd: int | None = None
        self._marked = False

    def acquire(self, create: bool) -> None:
        """Lock the folder (creating it when `create`); a one-line error when another train holds it.

        Already held: nothing to do (a second flock on a new descriptor would be refused by our own lock).
        """
        if self._fd is not None:
            return
        if not self.run_dir.is_dir():
            if not create:
                return  # --resume of a folder that is not there: prepare_run_dir says so
            self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                owner = (self.run_dir / PID_FILE).read_text().strip() or "unknown"
            except OSError:
                owner = "unknown"
            raise RunError(f"{self.run_dir}: in use by another `finetune train` (pid {owner}); wait for it "
                           "to finish or stop it first (one train per run folder)") from None
        self._fd = fd

    def mark(self) -> None:
        """Write our pid into the folder, so a refused second train can name the holder."""
        if self._fd is not None:
            (self.run_dir / PID_FILE).write_text(f"{os.getpid()}\n")
            self._marked = True

    def release(self) -> None:
        """Remove the pid file and drop the lock."""
        if self._fd is None:
            return
        try:
            if self._marked:  # a refused or no-op run leaves the folder exactly as it found it
                (self.run_dir / PID_FILE).unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd, self._marked = None, False
