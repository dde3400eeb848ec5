"""Claims on a label output folder, so that two runs on one folder never write a row twice.

A process reads the rows already written when it starts and then labels the
rest of its share; two runs doing that at once on one folder would both label
(and write) the same rows. So each process of a run holds two ``flock(2)``
locks in ``OUT/.label-locks/`` for as long as it labels:

* ``process-<I>.lock``, exclusive: a second process with the same index on the
  same folder (the same command started twice) gets :class:`LabelBusyError`;
* ``processes-<N>.lock``, shared: the processes of one run (same process
  count ``N``, distinct indexes, on one host or many) work side by side, but a
  process whose run has another count gets :class:`LabelBusyError` while a run
  of ``N`` processes is live (shares of different counts overlap).

The kernel releases a lock when its holder exits, SIGKILL included, so a
killed run never blocks the next one. Locks hold across hosts where the file
system shares them (NFS); where locks stay local to each host (a FUSE mount such
as gcsfuse) each host's processes are still covered, and distinct process
indexes keep hosts' rows apart. A file system that refuses locks gets a
warning and no protection.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import glob
import logging
import os
import random
import socket
import time
from typing import List

try:
    import fcntl
except ImportError:  # not POSIX: no locks, a warning
    fcntl = None

logger = logging.getLogger("whisper_t5x.app.label")

LOCK_DIR = ".label-locks"
# errors meaning "this file system cannot lock", not "someone holds the lock"
PROBE_TRIES = 20
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class LabelBusyError(RuntimeError):
    """Another live label run writes to the same output folder."""


def _process_path(out_dir: str, index: int) -> str:
    return os.path.join(out_dir, LOCK_DIR, f"process-{index:05d}.lock")


def _count_path(out_dir: str, count: int) -> str:
    return os.path.join(out_dir, LOCK_DIR, f"processes-{count}.lock")


def _holder(fd: int) -> str:
    """What the holder of ``process-<I>.lock`` wrote about itself (best effort)."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return f" ({text})" if text else ""


@dataclasses.dataclass
class RunLock:
    """The locks of one process of one run; :meth:`release` (or leaving ``with``) drops them."""

    out_dir: str
    process_index: int
    process_count: int
    fds: List[int] = dataclasses.field(default_factory=list)
    locked: bool = False  # False: the file system cannot lock (warned)

    def release(self) -> None:
        for fd in self.fds:
            os.close(fd)  # closing the descriptor drops its lock
        self.fds = []

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _open(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)


def _try_lock(fd: int, op: int) -> bool:
    """``flock(fd, op | LOCK_NB)``: False if held by someone else; ``OSError`` if locks are unsupported."""
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def acquire(out_dir: str, process_index: int = 0, process_count: int = 1) -> RunLock:
    """Claims ``out_dir`` for process ``process_index`` of a run of ``process_count`` processes.

    Raises :class:`LabelBusyError` (holding nothing) if a live process has the
    same index there, or a live run there has another process count.
    """
    lock = RunLock(out_dir, int(process_index), int(process_count))
    if fcntl is None:
        logger.warning("no file locks on this system: concurrent label runs on %s are not detected", out_dir)
        return lock
    os.makedirs(os.path.join(out_dir, LOCK_DIR), exist_ok=True)
    try:
        _claim(lock)
    except LabelBusyError:
        lock.release()
        raise
    except OSError as e:
        lock.release()
        if e.errno not in _NO_LOCKS:
            raise
        logger.warning("the file system of %s cannot lock files (%s): concurrent label runs on it are not "
                       "detected", out_dir, e.strerror or e)
        return lock
    lock.locked = True
    return lock


def _claim(lock: RunLock) -> None:
    out_dir, index, count = lock.out_dir, lock.process_index, lock.process_count
    fd = _open(_process_path(out_dir, index))
    lock.fds.append(fd)
    if not _try_lock(fd, fcntl.LOCK_EX):
        raise LabelBusyError(
            f"{out_dir} is in use: another label process with index {index} is writing to it{_holder(fd)}; "
            "wait for it to finish, or use another --output_dir")
    since = datetime.datetime.now().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, process {index} of {count}, since {since}\n"
              .encode(), 0)
    # shared by the processes of this run (another run's probe holds it exclusively for an instant)
    own = _open(_count_path(out_dir, count))
    lock.fds.append(own)
    fcntl.flock(own, fcntl.LOCK_SH)
    for path in sorted(glob.glob(os.path.join(out_dir, LOCK_DIR, "processes-*.lock"))):
        if path == _count_path(out_dir, count):
            continue
        if _held(path):
            n = os.path.basename(path)[len("processes-"):-len(".lock")]
            raise LabelBusyError(
                f"{out_dir} is in use: a label run with {n} process(es) is writing to it, this one has "
                f"{count}; wait for it to finish, or run with the same process count")


def _held(path: str, tries: int = PROBE_TRIES) -> bool:
    """Whether a live process holds ``path`` (shared): it stays locked over ``tries`` probes.

    A probe holds the lock exclusively for an instant, so two processes
    probing one file at once can each see the other's probe: a lock that
    a run holds stays locked on every try, a probe's does not.
    """
    fd = _open(path)
    try:
        for _ in range(tries):
            if _try_lock(fd, fcntl.LOCK_EX):
                return False
            time.sleep(random.uniform(0.005, 0.05))
        return True
    finally:
        os.close(fd)

