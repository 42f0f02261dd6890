"""Atomic writes: a file or a directory appears complete at its final path, or not at all.

Everything is written to a temporary sibling (same filesystem, so the final rename is atomic),
fsynced, and renamed into place; a failure removes the temporary and leaves any previous
version untouched. Files get the permission bits a plain ``open()`` would give them: an existing
file keeps its mode, a new one follows the umask; a file with no write bit is not replaced.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Sequence

from mdlm_fast.util.json_output import dumps


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries durable (not supported everywhere, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ReadOnlyFileError(PermissionError):
    """An existing file without any write permission bit: the user protected it, so it is not replaced."""


def current_umask() -> int:
    """The process umask, read without changing it where /proc says it (Linux), else by setting
    and restoring it."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode_for(path: Path) -> int:
    """The permission bits a (re)written ``path`` gets: an existing file keeps its own, a new one
    gets what ``open()`` would give it (0666 less the umask). A file with no write bit at all is
    refused, even for root, whom the permission bits do not stop."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()
    if not mode & 0o222:
        raise ReadOnlyFileError(
            f"{path} is read-only (mode {mode:04o}); not replacing it: make it writable (chmod u+w) or write elsewhere"
        )
    return mode


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", *, make_parents: bool = True) -> Iterator[IO]:
    """``with atomic_file(p) as f: f.write(...)`` -- ``p`` is replaced only when the block succeeds.

    An existing ``p`` keeps its permission bits, a new one follows the umask, and a read-only one
    (no write bit) is refused (:class:`ReadOnlyFileError`). ``make_parents=False``: a missing parent
    directory is an error naming it (FileNotFoundError), as for ``open()``."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: no directory {path.parent}")
    file_mode = file_mode_for(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        os.chmod(tmp, file_mode)  # mkstemp makes it private (0600)
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_file(path) as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    """``obj`` as standard JSON (NaN and inf become null, see json_output)."""
    return write_text(path, dumps(obj, indent=indent) + "\n")


def csv_cell(value: Any) -> Any:
    """One CSV cell: a list becomes its values joined with ';'."""
    return ";".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def write_csv(path: str | os.PathLike, rows: Sequence[dict], *, cell: Callable[[Any], Any] = csv_cell) -> Path:
    """The scalar and list columns of ``rows`` (nested dicts left out), each value through ``cell``."""
    columns: list[str] = []
    for row in rows:
        for k, v in row.items():
            if k not in columns and not isinstance(v, dict):
                columns.append(k)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: cell(v) for k, v in row.items() if k in columns})
    return write_text(path, buf.getvalue())


def swap_into_place(tmp: Path, path: Path) -> None:
    """Rename directory ``tmp`` to ``path``; an existing ``path`` is kept as a backup until that worked."""
    if not path.exists():
        os.rename(tmp, path)
        fsync_dir(path.parent)
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    backup.rmdir()  # only the unique name is wanted: rename needs a free target
    os.rename(path, backup)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(backup, path)  # put the old version back
        raise
    fsync_dir(path.parent)
    shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, tag: str = "tmp") -> Iterator[Path]:
    """``with atomic_directory(p) as tmp: <write files into tmp>`` -- then ``tmp`` becomes ``p``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{tag}-", dir=path.parent))
    try:
        yield tmp
        umask = current_umask()
        for item in tmp.rglob("*"):
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~umask)  # as mkdir() and open() would
            if item.is_file():
                with open(item, "rb") as f:
                    os.fsync(f.fileno())
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private
        fsync_dir(tmp)
        swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
