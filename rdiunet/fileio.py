"""Files: atomic output (a temporary file, then a rename), JSON and CSV reading with one-line
errors, and checksums.

A killed job never leaves a half-written output under the final name, so a rerun (or Snakemake's
own check) sees either the old file, no file, or the complete new one.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from rdiunet.errors import UserError

CHUNK = 1 << 20


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike):
    """Yield a temporary path beside `target`; rename it to `target` if the block succeeds."""
    with atomic_paths(target) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(*targets: str | os.PathLike):
    """Temporary paths beside several targets, renamed in the given order if the block succeeds.

    The renames are not one atomic step; files written together also record each other's
    checksums, so that a reader detects a pair that a kill split (rdiunet.data.dataset)."""
    with contextlib.ExitStack() as stack:
        temporaries = [stack.enter_context(_temporary(Path(t))) for t in targets]
        yield temporaries
        for tmp in temporaries:
            os.chmod(tmp, 0o666 & ~UMASK)
        for tmp, target in zip(temporaries, targets, strict=True):
            os.replace(tmp, target)


@contextlib.contextmanager
def _temporary(target: Path):
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
    except OSError as error:
        if error.filename is None:  # a failed write names no file: name the one being written
            error.filename = str(target)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def remove_leftovers(target: Path, staging: Path | None = None) -> list[Path]:
    """Remove what a killed writer of `target` left behind: its temporary files (atomic_path's
    `.NAME.*.tmp`) and its staging folder. Call it only while holding the target's lock."""
    removed = sorted(target.parent.glob(f".{target.name}.*.tmp")) if target.parent.exists() else []
    for path in removed:
        path.unlink(missing_ok=True)
    if staging is not None and staging.exists():
        shutil.rmtree(staging)
        removed.append(staging)
    return removed


def holder_line() -> str:
    """Who holds a lock: the process, its host and its rdiunet command (cut to a line)."""
    command = " ".join(["rdiunet", *sys.argv[1:]])
    return f"{os.getpid()} on {socket.gethostname()}: {command}"[:300]


@contextlib.contextmanager
def exclusive_lock(path: Path, busy: str):
    """Hold an exclusive lock on `path` for the block, or stop with `busy` if another process holds it.

    The lock file is opened without following a symbolic link; the kernel releases the lock when
    the process ends, however it ends. The file is removed when the block ends, and a process that
    locked a file someone removed meanwhile tries again, so two holders can never coexist.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise UserError(f"cannot open the lock file {path} ({error.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = " ".join(os.pread(fd, 400, 0).decode(errors="replace").split())
            os.close(fd)
            raise UserError(busy + (f" (held by process {holder})" if holder else "")) from None
        try:
            current = os.stat(path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)  # the holder before us removed this file: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder_line()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def write_json(target: str | os.PathLike, data) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, fix: str = "rerun the job that writes it"):
    """The JSON in `path`; a missing or damaged file is one error line that ends with `fix`."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing; {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error}); {fix}") from None


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()
