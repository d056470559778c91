"""Atomic writes: a reader (or a crash) never sees a half-written file."""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import yaml

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: mkstemp makes 0600 files, but outputs should get the usual permissions


def write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def replace_folder(path: str | Path):
    """Yields an empty temp dir beside `path` to write a whole folder into (a saved model); on success it is
    renamed to `path`, so a reader sees the old folder or the new one, never half of one. An old folder is
    first moved aside and deleted only after the swap (restored if the swap fails); on an error the temp
    dir is removed and the old folder kept. A file at `path` is never replaced: the swap raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700 dirs; a saved folder gets the usual permissions
        yield tmp
        if not path.is_dir() or path.is_symlink():
            os.replace(tmp, path)  # nothing to keep; a file or a link here makes this raise
            return
        trash = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
        os.replace(path, trash / path.name)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(trash / path.name, path)
            trash.rmdir()
            raise
        shutil.rmtree(trash, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_yaml(path: str | Path, obj) -> None:
    write_text(path, yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))


def write_jsonl(path: str | Path, rows) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def append_jsonl(path: str | Path, row) -> None:
    """One line per call, flushed: a killed run loses at most the line being written."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSONL log. A torn last line (a kill mid-append) is skipped with a warning;
    a bad line anywhere else is a one-line error naming it."""
    import logging

    from .errors import UserError

    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            if n == len(lines):
                logging.getLogger(__name__).warning("%s: line %d is torn (a run killed mid-write?); skipped", path, n)
                continue
            raise UserError(f"{path}: line {n}: not a JSON object")
        rows.append(row)
    return rows


def read_json_object(path: str | Path) -> dict:
    """A side file safebasin wrote (a pointer such as adlm.json or surge.json): a JSON object, or one line naming the
    file when it is unreadable, cut (a kill mid-write of an older version, a hand edit) or not an object."""
    from .errors import UserError

    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: bad JSON: {e.msg} (line {e.lineno}); the file is cut or hand-edited") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj
