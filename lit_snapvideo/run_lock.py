"""One writer per run folder: an exclusive OS lock (``fcntl.flock``) on a file holding the owner's pid.

    with FolderLock(run_dir / LOCK_NAME, what=run_dir):   # RunInUseError naming the folder and the pid
        ...                                               # train; nobody else writes run_dir

The OS drops the lock when its process ends, however it ends (``kill -9`` included), so a lock file left behind
by a dead process is stale: the next start takes it over with a log line naming the old pid. The lock file is
removed on release; a start that opened it just before the removal sees another file at the path and retries,
so two processes never hold locks on two files of the same name.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path
from typing import Optional

from .errors import UserError

log = logging.getLogger("lit_snapvideo")

LOCK_NAME = "fit.lock"  # in the run folder, while a fit writes it
NEW_VERSION_LOCK = ".new-version.lock"  # in the experiment folder, while --new-version picks a number


class RunInUseError(UserError):
    """Another live process holds the run folder's lock."""


class FolderLock:
    """An exclusive, non-blocking ``flock`` on ``path`` (created with its parents), which holds the owner's pid.

    ``what``: the folder named in the refusal; ``hint``: what the user can do about it; ``wait``: block until the
    holder lets go instead of refusing (for locks held for a moment only)."""

    def __init__(
        self, path: str | os.PathLike, what: str | os.PathLike | None = None, hint: str = "", wait: bool = False
    ) -> None:
        self.path = Path(path)
        self.what = Path(what) if what is not None else self.path.parent
        self.hint = hint
        self.wait = wait
        self.fd: Optional[int] = None

    def acquire(self) -> "FolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise RunInUseError(
                    f"{self.what}: in use by another lit-snapvideo process (pid {holder or 'unknown'}, lock "
                    f"{self.path}){'; ' + self.hint if self.hint else ''}"
                ) from None
            except OSError as err:  # a file system without locks (some network mounts): say so, go on unlocked
                os.close(fd)
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                log.warning(
                    "%s: this file system takes no file locks (%s); a second writer would not be refused",
                    self.path,
                    err.strerror,
                )
                return self
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the previous holder removed the file between our open and our lock: lock the new one
        stale = _read_pid(fd)
        if stale:
            log.info("%s: taking over a stale lock of pid %s (that process is gone)", self.what, stale)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:  # remove it while still holding it, so no one can lock the file we are about to remove
            if _same_file(self.fd, self.path):
                self.path.unlink()
        except FileNotFoundError:  # the folder was removed with it (a failed start's stray run folder)
            pass
        finally:
            os.close(self.fd)  # closing drops the lock
            self.fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> Optional[int]:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
