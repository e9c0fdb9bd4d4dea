"""Writing files safely: atomically (a crash never leaves half a file), into folders probed before any work, under
names that text from a model file cannot turn into a path."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fast_style.errors import UserError

# atomic_path's temporaries: .<name>.<8 random characters from mkstemp>.tmp
TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def remove_stale_temporaries(folder: str | Path, older_than: float = 3600.0) -> list[Path]:
    """Delete atomic_path temporaries left in ``folder`` by a write that was killed (they are checkpoint-sized),
    if untouched for ``older_than`` seconds: a write in progress, by another run, keeps its file. Returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        with contextlib.suppress(OSError):  # gone already, or not ours to delete
            if TEMPORARY.match(path.name) and path.is_file() and time.time() - path.stat().st_mtime > older_than:
                path.unlink()
                removed.append(path)
    return removed


def current_umask() -> int:
    """The process's umask (read by setting and restoring it: there is no other portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    A crash mid-write leaves the old file intact (and no half-written one under the real name).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it 0600; the file gets the mode open() would give
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_writable(folder: str | Path, what: str) -> None:
    """Create ``folder`` if needed and write a file in it, so that a location that cannot be written is one line
    before any work (and never a traceback after a long run). Probing beats ``os.access``, which says yes to root
    even on a read-only file system."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write the {what} to {folder} ({e.strerror or e}); choose another location") from e


def safe_name(name: object) -> str:
    """``name`` as one piece of a file name: letters, digits, ``_ - .`` only, no leading dot, never a path.

    Style names come from model metadata, which anyone can write: ``../../x`` must not leave the output folder."""
    cleaned = re.sub(r"[^\w.-]+", "_", str(name)).strip("._")
    return cleaned or "style"
