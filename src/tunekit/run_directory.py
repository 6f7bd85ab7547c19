"""Directories tunekit owns: claiming, locking, staging and publishing them.

tunekit writes three kinds of directory: a ``fit`` run, a ``save`` (a model folder) and a
``compare`` report. Each gets a marker file, :data:`MARKER`, that carries a run id and lists
every entry tunekit wrote there (files with their sha256). Rules that follow from it:

- A directory is tunekit's only if it holds the marker. ``overwrite``, ``resume`` and
  ``save(overwrite=True)`` act only on such directories, and only when every entry in them
  is one tunekit wrote (a recorded file still holding the bytes tunekit wrote, a recorded
  directory, or one of the names the Trainer and tunekit write, such as ``checkpoint-N``);
  anything else makes them refuse, naming what is in the way.
- The working directory, the home directory, a filesystem root and their ancestors are
  never used as an output directory.
- Overwriting is a transaction: the new content is written to a staging directory beside
  the old one (``.tunekit-new-NAME``) and swapped in with one atomic ``renameat2`` exchange
  once it is complete; killed at any point, the path holds either the old or the new
  content. Where the exchange is not available, two renames are used and
  :func:`recover` puts a half-done swap right the next time the path is claimed or loaded.
- A lock file (:data:`LOCK`, ``flock``-ed for as long as it is held, holding the owner's PID)
  stops two processes from writing one directory; the kernel drops the lock of a process that
  dies, and a lock file whose process is gone is taken over, with a warning.

This module only uses the standard library, so every layer can use it.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tunekit.errors import TunekitError

log = logging.getLogger(__name__)

MARKER = ".tunekit-run.json"
"""The file that makes a directory tunekit's: run id, kind, state and the entries written."""
LOCK = ".tunekit-lock"
"""Held (``flock``-ed, holding the PID) while a process writes the directory."""
TEMP_PREFIX = ".tunekit-"
"""Every temporary name tunekit makes (staging, old copies, locks) starts with this."""
Kind = Literal["fit", "save", "compare"]
PYTHON_FLAGS = ("overwrite=True", "resume=True")
"""How errors name the overwrite/resume switches for Python callers; the CLI passes :data:`CLI_FLAGS`."""
CLI_FLAGS = ("--overwrite", "--resume")
# Names the Trainer (checkpoints) and tunekit itself (staging, temporary copies) write inside an
# owned directory without recording them one by one.
_PATTERN_OWNED = re.compile(r"^(checkpoint-\d+|\.staging|\.tunekit-.*)$")
_MAX_LISTED = 8
_HASHED_UP_TO = 64 * 2**20


class OutputDirError(TunekitError, OSError):
    """An output directory cannot be used: it is not tunekit's, holds other files, or is unsafe."""


class RunLockedError(OutputDirError):
    """Another live process is writing this directory."""


class DiskFullError(TunekitError, OSError):
    """The disk (or the quota) ran out while tunekit was writing."""


# -- looking ------------------------------------------------------------------------------------------
def read_marker(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The marker of a directory tunekit wrote, or None when it has none (or an unreadable one)."""
    file = Path(path) / MARKER
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("run_id"), str) or not isinstance(data.get("entries"), dict):
        return None
    return data


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def foreign_entries(path: str | os.PathLike[str]) -> list[str]:
    """Entries of an owned directory that tunekit did not write (or that changed since), sorted.

    In a directory without a marker every entry is foreign.
    """
    root = Path(path)
    marker = read_marker(root)
    names = sorted(p.name for p in root.iterdir())
    if marker is None:
        return names
    recorded: dict[str, Any] = marker["entries"]
    foreign = []
    for name in names:
        if name == MARKER or _PATTERN_OWNED.match(name):
            continue
        if name not in recorded:
            foreign.append(name)
            continue
        digest, entry = recorded[name], root / name
        if entry.is_symlink():
            foreign.append(name)  # tunekit never writes links
        elif digest == "dir":
            if not entry.is_dir():
                foreign.append(name)
        elif digest is not None and (not entry.is_file() or _entry_digest(entry, digest) != digest):
            foreign.append(f"{name} (changed since tunekit wrote it)")
    return foreign


def _entry_digest(entry: Path, recorded: str) -> str:
    return f"size:{entry.stat().st_size}" if recorded.startswith("size:") else file_digest(entry)


def _listing(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def check_safe_location(path: Path, *, what: str = "output_dir") -> None:
    """Refuse the working directory, the home directory, filesystem roots and their ancestors."""
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as exc:
        raise OutputDirError(f"{what} {str(path)!r} cannot be resolved ({exc}); give a plain directory path.") from exc
    protected = {Path.cwd().resolve(): "the current directory", Path.home().resolve(): "your home directory"}
    if real == Path(real.anchor):
        raise OutputDirError(f"{what} {str(path)!r} is a filesystem root; give a directory of its own, e.g. runs/my-run.")
    for place, name in protected.items():
        if real == place or real in place.parents:
            raise OutputDirError(
                f"{what} {str(path)!r} is {name}" + ("" if real == place else f" or holds it ({place})")
                + "; tunekit writes into a directory of its own: give e.g. runs/my-run."
            )


# -- claiming -----------------------------------------------------------------------------------------
@dataclass
class Claim:
    """A directory claimed for writing: write into :attr:`work`, then :meth:`publish` (or :meth:`abort`).

    ``work`` is ``path`` itself for a new directory or a resumed run, and a staging directory
    beside it (``.tunekit-new-NAME``) when an existing one is being replaced or the claim asked
    for staging.
    """

    path: Path
    work: Path
    kind: Kind
    run_id: str
    staged: bool = False
    created: bool = False
    created_root: Path | None = None
    """The outermost directory this claim created (removed again by :meth:`abort` when nothing is kept)."""
    replacing: bool = False
    """An in-place overwrite: the previous content is still there until :meth:`clear`."""
    cleared: bool = False
    keep: bool = False
    """Set once the content is worth keeping after a failure (a partial report): abort marks it failed."""
    previous: dict[str, Any] | None = None
    """The marker the directory had when it was claimed (None for a new one)."""
    main: bool = True
    _locks: list[Path] = field(default_factory=list, repr=False)
    _done: bool = field(default=False, repr=False)
    _wrote: bool = field(default=False, repr=False)

    # the marker ------------------------------------------------------------------------------------------
    def _marker(self) -> dict[str, Any]:
        return read_marker(self.work) or {"entries": {}}

    def _write_marker(self, data: dict[str, Any]) -> None:
        self._wrote = True
        write_text_atomically(self.work / MARKER, json.dumps(data, indent=2, sort_keys=True))

    def set_state(self, state: str, **extra: Any) -> None:
        """Record the state (``writing``, ``complete``, ``failed``) and extra facts in the marker."""
        if not self.main:
            return
        data = self._marker()
        data.update(state=state, updated=time.strftime("%Y-%m-%dT%H:%M:%S"), **extra)
        self._write_marker(data)

    def record(self, *names: str) -> None:
        """Record entries of :attr:`work` as tunekit's (call after writing them)."""
        if self.main:
            self._wrote = True
            record_entries(self.work, *names)

    @contextmanager
    def writing(self, name: str) -> Iterator[Path]:
        """Record ``name`` as tunekit's before it is written, so a crash mid-write still leaves it ours."""
        if self.main:
            data = self._marker()
            data["entries"].setdefault(name, None)
            self._write_marker(data)
        yield self.work / name
        self.record(name)

    def clear(self, *, keep: tuple[str, ...] = ()) -> None:
        """Remove the previous content of an in-place overwrite: only the entries tunekit wrote."""
        if not self.main or not self.replacing or self.cleared:
            return
        # Checked again: anything put here since the claim is the user's and stays.
        foreign = {name.split(" (")[0] for name in foreign_entries(self.work)}
        if foreign:
            log.warning("tunekit: leaving %s in %s: tunekit did not write them", _listing(sorted(foreign)), self.work)
        for entry in sorted(self.work.iterdir()):
            if entry.name in (MARKER, LOCK) or entry.name in keep or entry.name in foreign:
                continue
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        self.run_id = uuid.uuid4().hex
        data = self._marker()
        data.update(entries={}, run_id=self.run_id)
        self._write_marker(data)
        self.cleared = True

    # finishing -----------------------------------------------------------------------------------------
    def publish(self) -> Path:
        """Mark the content complete and make it the directory at :attr:`path` (an atomic swap when staged)."""
        if self._done or not self.main:
            self._done = True
            return self.path
        self.set_state("complete")
        if self.staged:
            # Checked again now: files may have been put into the old directory while this one was written.
            late = foreign_entries(self.path) if self.path.is_dir() and self.previous is not None else []
            displaced = swap_in(self.work, self.path)
            self._locks = [self.path if p == self.work else p for p in self._locks if p != self.path]
            self.work = self.path
            if displaced is not None and late:
                kept = self.path.parent / f"{self.path.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}"
                os.rename(displaced, kept)
                release_lock(kept)
                log.warning("tunekit: the previous %s was kept at %s: it holds files tunekit did not write (%s)",
                            self.path, kept, _listing(late))
            elif displaced is not None:
                shutil.rmtree(displaced)  # the previous content: only tunekit's entries (checked above)
        self._done = True
        self.release()
        return self.path

    def abort(self) -> None:
        """Give up: remove the staging directory, or a new directory holding nothing worth keeping.

        A new run directory that already holds a checkpoint is kept (marked ``failed``) so that
        it can be resumed.
        """
        if self._done or not self.main:
            self._done = True
            return
        self._done = True
        try:
            if self.staged:
                shutil.rmtree(self.work, ignore_errors=True)
            elif self.replacing and not self.cleared:  # nothing of the previous content was touched
                for entry in self.work.glob(f"{TEMP_PREFIX}new-*"):
                    shutil.rmtree(entry, ignore_errors=True)
            elif self.created and not self.keep and not any(p.name.startswith("checkpoint-") for p in self.work.iterdir()):
                shutil.rmtree(self.created_root or self.work, ignore_errors=True)
            elif self.work.is_dir() and self._wrote:  # a resume refused before writing leaves the run as it was
                self.set_state("failed")
        finally:
            self.release()

    def release(self) -> None:
        """Let go of the locks this claim holds."""
        for directory in self._locks:
            release_lock(directory)
        self._locks = []

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.release()


def staging_path(path: Path) -> Path:
    """Where the new content of ``path`` is written before it replaces ``path``."""
    return path.parent / f"{TEMP_PREFIX}new-{path.name}"


def _old_path(path: Path) -> Path:
    return path.parent / f"{TEMP_PREFIX}old-{path.name}"


def claim(
    path: str | os.PathLike[str],
    kind: Kind,
    *,
    overwrite: bool = False,
    resume: bool = False,
    stage: bool = False,
    in_place: bool = False,
    main: bool = True,
    what: str = "output_dir",
    flags: tuple[str, str] = PYTHON_FLAGS,
) -> Claim:
    """Claim ``path`` for writing a ``kind`` directory; refuses anything that is not tunekit's to touch.

    - absent or empty: created (or staged, with ``stage``), marked and locked.
    - ``resume``: must be an owned ``kind`` directory (or absent/empty); written in place.
    - ``overwrite``: must be an owned ``kind`` directory holding only tunekit's entries; the new
      content goes to a staging directory beside it and replaces it on :meth:`Claim.publish`.

    With ``in_place``, an ``overwrite`` keeps writing into ``path`` itself: nothing is removed
    until the caller calls :meth:`Claim.clear` (after checking its inputs).

    ``main`` is False on the non-main processes of a distributed launch: they touch nothing and
    get the same paths (call it after the main process claimed, behind a barrier). ``flags``
    name the overwrite/resume switches in the caller's language (``--overwrite`` for the CLI).
    """
    over_flag, resume_flag = flags
    target = Path(path).expanduser()
    if overwrite and resume:
        raise OutputDirError(f"{resume_flag} continues the run in {what}; it cannot also replace it ({over_flag}).")
    check_safe_location(target, what=what)
    if not main:
        # The main process has claimed already (behind a barrier): a replacement left its staging directory.
        staged = stage or (overwrite and not in_place and staging_path(target).is_dir())
        return Claim(target, staging_path(target) if staged else target, kind, "", staged=staged, main=False)
    recover(target)
    if target.is_symlink():
        raise OutputDirError(f"{what} {str(target)!r} is a symbolic link; give the real directory it points to.")
    if target.exists() and not target.is_dir():
        raise OutputDirError(f"{what} {str(target)!r} is a file, not a directory; choose another {what}.")
    parent = _existing_ancestor(target)
    where = target if target.is_dir() else parent
    if not os.access(where, os.W_OK | os.X_OK):
        raise OutputDirError(f"{what} {str(target)!r} is not writable ({str(where)!r} is read-only for this user); choose another {what}.")
    empty = not target.exists() or not any(target.iterdir())
    marker = None if empty else read_marker(target)
    if not empty and marker is None:
        names = sorted(p.name for p in target.iterdir())
        raise OutputDirError(
            f"{what} {str(target)!r} holds files tunekit did not write ({_listing(names)}); tunekit never "
            f"deletes or rewrites files it did not write: choose another (or an empty) {what}."
        )
    if marker is not None and marker.get("kind") != kind:
        raise OutputDirError(
            f"{what} {str(target)!r} holds a tunekit {marker.get('kind')!r} directory, not a {kind!r} one; choose another {what}."
        )
    if marker is not None and not overwrite and not resume:
        hint = f"pass {resume_flag} to continue it, or {over_flag} to replace it" if kind == "fit" else f"pass {over_flag} to replace it"
        raise OutputDirError(f"{what} {str(target)!r} already holds a tunekit {kind} directory; choose another {what}, or {hint}.")
    if marker is not None and overwrite:
        foreign = foreign_entries(target)
        if foreign:
            raise OutputDirError(
                f"{what} {str(target)!r} holds entries tunekit did not write ({_listing(foreign)}); {over_flag} "
                f"replaces only tunekit's own files: move those away first, or choose another {what}."
            )
    if (marker is not None and overwrite and not in_place) or stage:
        return _claim_staged(target, kind, marker)
    stale = staging_path(target)
    if stale.is_dir() and not in_place:  # a killed replacement's leftovers: tunekit's own temporary name
        acquire_lock(stale)  # refuses if that process is alive
        shutil.rmtree(stale)
    created = not target.exists()
    created_root = _first_missing(target) if created else None
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise disk_error(exc, target) from exc
    # Refused here, nothing is removed: a process that beat this one to the lock now owns what it found.
    acquire_lock(target)
    try:
        again = read_marker(target)  # under the lock: another process may have claimed it meanwhile
        others = [p.name for p in target.iterdir() if p.name != LOCK]
        if (again is None and others) or (marker is None and again is not None):
            raise RunLockedError(f"{what} {str(target)!r} was claimed by another process just now; choose another {what}.")
        run_id = str(again["run_id"]) if again else uuid.uuid4().hex
        result = Claim(target, target, kind, run_id, created=created, created_root=created_root, previous=again, _locks=[target],
                       replacing=bool(overwrite and again is not None))
        if again is None:
            result.set_state("writing", kind=kind, run_id=run_id, created=time.strftime("%Y-%m-%dT%H:%M:%S"))
        return result
    except BaseException:
        release_lock(target)
        if created_root is not None:
            shutil.rmtree(created_root, ignore_errors=True)
        raise


def _claim_staged(target: Path, kind: Kind, marker: dict[str, Any] | None) -> Claim:
    """Lock ``target`` (when it exists) and a fresh staging directory beside it."""
    staging = staging_path(target)
    locks: list[Path] = []
    try:
        if target.is_dir():
            acquire_lock(target)  # nobody may write what is being replaced
            locks.append(target)
        if staging.exists():  # left by a process that was killed: tunekit's own temporary name
            acquire_lock(staging)  # refuses if that process is in fact alive
            shutil.rmtree(staging)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            staging.mkdir()
        except OSError as exc:
            raise disk_error(exc, staging) from exc
        acquire_lock(staging)
        locks.append(staging)
    except BaseException:
        for directory in locks:
            release_lock(directory)
        raise
    result = Claim(target, staging, kind, uuid.uuid4().hex, staged=True, previous=marker, _locks=locks)
    result.set_state("writing", kind=kind, run_id=result.run_id, created=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return result


def _first_missing(path: Path) -> Path:
    """The outermost directory of ``path`` that does not exist yet (what a ``mkdir -p`` creates)."""
    current = path.absolute()
    while not current.parent.exists():
        current = current.parent
    return current


def _existing_ancestor(path: Path) -> Path:
    current = path.absolute()
    while not current.exists():
        current = current.parent
    return current


# -- locks ----------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(directory: Path) -> None:
    """Take ``directory/LOCK`` for this process; refuse while another process holds it.

    The lock is an ``flock`` on the file, held open until :func:`release_lock`, so it is
    taken atomically and the kernel lets go of it when its process dies however it dies; the
    file itself holds the owner's PID and host, for the error message and for locks held by a
    process on another host (or without ``flock``). A lock file whose process is gone is
    stale and is taken over, with a warning.
    """
    lock = directory / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if _held_fd(lock) is not None:
        return  # this process holds it already
    for _ in range(20):
        try:
            # never through a symbolic link: the lock is truncated and rewritten, and only tunekit's own file may be
            fd = os.open(lock, os.O_CREAT | os.O_RDWR | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            if lock.is_symlink():
                raise OutputDirError(f"{str(lock)!r} is a symbolic link, not tunekit's lock file; remove it and run again.") from None
            raise disk_error(exc, lock) from exc
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:  # a FIFO, a device, or a hard link to another file
            os.close(fd)
            raise OutputDirError(f"{str(lock)!r} is not tunekit's lock file (not a plain file of its own); remove it and run again.")
        flocked = _try_flock(fd)
        if flocked is False:
            os.close(fd)
            raise _locked_error(directory, _read_holder(lock))
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if not same:  # released (and removed) by its holder between our open and our flock: open it again
            os.close(fd)
            continue
        holder = _read_holder(lock)
        pid, host = holder.get("pid"), holder.get("host")
        if isinstance(pid, int) and pid != os.getpid() and (host != me["host"] or _pid_alive(pid)):
            os.close(fd)  # held the old way (a PID file without flock), by a live process
            raise _locked_error(directory, holder)
        if flocked is None and not holder and time.time() - os.fstat(fd).st_mtime < FRESH_LOCK_S:
            os.close(fd)  # without flock, an empty lock this new may be one another process is still writing
            raise _locked_error(directory, holder)
        if isinstance(pid, int) and pid != os.getpid():
            log.warning("tunekit: taking over the stale lock %s (process %s is gone)", lock, pid)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise disk_error(exc, lock) from exc
        _HELD[_file_id(os.fstat(fd))] = fd
        return
    raise RunLockedError(f"could not take the lock {str(lock)!r}; other processes keep taking and releasing it.")


def release_lock(directory: Path) -> None:
    """Remove and let go of ``directory/LOCK`` if this process holds it (wherever the directory was moved)."""
    lock = directory / LOCK
    try:
        key = _file_id(os.stat(lock))
    except OSError:
        key = None
    if key in _HELD:
        lock.unlink(missing_ok=True)  # removed while still held: a process waiting on it opens it again
        os.close(_HELD.pop(key))
    for key, other in list(_HELD.items()):  # locks whose directory was removed with them inside
        if os.fstat(other).st_nlink == 0:
            os.close(other)
            del _HELD[key]


FRESH_LOCK_S = 10.0
"""Without flock, an empty lock file younger than this is taken to be one another process is still writing."""
_HELD: dict[tuple[int, int], int] = {}
"""The lock files this process holds, by (device, inode), with their open descriptors (the flock lives on them)."""


def _file_id(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _held_fd(lock: Path) -> int | None:
    try:
        return _HELD.get(_file_id(os.stat(lock)))
    except OSError:
        return None


def _try_flock(fd: int) -> bool | None:
    """True when this process now holds the flock, False when another does, None without flock
    (on this platform or this filesystem: then the PID in the file is the lock)."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def _read_holder(lock: Path) -> dict[str, Any]:
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _locked_error(directory: Path, holder: dict[str, Any]) -> RunLockedError:
    who = f"PID {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}" if holder.get("pid") else "it is starting"
    return RunLockedError(
        f"{str(directory)!r} is being written by another process ({who}); wait for it to finish, or choose "
        f"another directory. If that process is gone and this persists, delete {str(directory / LOCK)!r}."
    )


# -- writing ----------------------------------------------------------------------------------------------
def disk_error(exc: BaseException, path: Path) -> BaseException:
    """A clear error for a failed write: DiskFullError for ENOSPC/EDQUOT, the original otherwise."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code in (errno.ENOSPC, errno.EDQUOT) or any(s in text for s in ("unexpected pos", "No space left", "os error 28")):
        return DiskFullError(
            f"the disk is full while writing {str(path)!r} ({type(exc).__name__}: {exc}); free some space "
            "(or choose an output directory on another disk) and run again. Nothing half-written was kept."
        )
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputDirError(f"cannot write {str(path)!r} ({exc}); choose a directory you can write to.")
    return exc


def write_text_atomically(path: Path, text: str) -> None:
    """Write a small file through a temporary name and a rename (readers never see half of it)."""
    tmp = path.parent / f"{TEMP_PREFIX}tmp-{path.name}-{os.getpid()}"
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise disk_error(exc, path) from exc


def record_entries(directory: Path, *names: str) -> None:
    """Add entries of ``directory`` to its marker (files with their sha256, directories as ``dir``)."""
    data = read_marker(directory)
    if data is None:
        raise OutputDirError(f"{str(directory)!r} is not a directory tunekit owns (no {MARKER}).")
    for name in names:
        entry = directory / name
        if entry.is_dir() and not entry.is_symlink():
            data["entries"][name] = "dir"
        elif entry.is_file():
            size = entry.stat().st_size
            # Weights can be gigabytes: a big file is known by its size, a small one by its bytes.
            data["entries"][name] = file_digest(entry) if size <= _HASHED_UP_TO else f"size:{size}"
    write_text_atomically(directory / MARKER, json.dumps(data, indent=2, sort_keys=True))


_libc: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    global _libc
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return False
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        fn = _libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def swap_in(new: Path, path: Path) -> Path | None:
    """Put the directory ``new`` at ``path``; returns where the previous content now is (or None)."""
    old = _old_path(path)
    if old.exists():
        shutil.rmtree(old)  # tunekit's own temporary name, left by a killed swap
    if not path.exists():
        os.rename(new, path)
        return None
    if _exchange(new, path):
        return new  # ``new`` now names the previous content
    # No atomic exchange here: two renames, with recover() completing a swap cut between them.
    os.rename(path, old)
    os.rename(new, path)
    return old


def recover(path: Path) -> None:
    """Finish or undo a swap that was cut between its two renames (see :func:`swap_in`).

    ``path`` missing with a complete ``.tunekit-new-NAME`` beside it: the new content goes in;
    otherwise the old content (``.tunekit-old-NAME``) goes back.
    """
    if path.exists() or path.is_symlink():
        return
    new, old = staging_path(path), _old_path(path)
    new_marker = read_marker(new) if new.is_dir() else None
    if new_marker is not None and new_marker.get("state") == "complete":
        log.warning("tunekit: completing an interrupted replacement of %s", path)
        os.rename(new, path)
        if old.is_dir():
            shutil.rmtree(old)
    elif old.is_dir() and read_marker(old) is not None:
        log.warning("tunekit: restoring %s, whose replacement was interrupted", path)
        os.rename(old, path)
