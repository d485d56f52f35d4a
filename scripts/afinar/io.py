"""Atomic writes: a file or folder either has its complete content or does not exist.

Rules write to a temporary name in the target folder and rename at the end, so an interrupted job
never leaves a half-written file that a later run (or a person) could take as complete. Folders (an
adapter, a merged model, an ONNX export) go through :func:`atomic_dir`, the one place that publishes a
folder and gives it its mode.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger("afinar.io")


@contextmanager
def atomic_path(path: str | Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    The file is private (0600, ``mkstemp``'s mode) unless ``mode`` is given; ``mode`` is masked by the
    umask like any created file's, so a run made private by its umask (an encrypted source: see
    rules/common.smk) keeps even "shareable" files such as charts to their owner."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if mode is not None:
            os.chmod(tmp_path, mode & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def current_umask() -> int:
    """The process umask, read without changing it (Linux's /proc; elsewhere set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


@contextmanager
def atomic_dir(path: str | Path, mode: int | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; on success it replaces ``path`` by two renames.

    The folder gets ``mode``, or what a plain ``mkdir`` would give it under the current umask
    (``mkdtemp`` alone leaves it 0700, which hid adapters from a shared group). On failure the
    temporary folder is removed and an existing ``path`` stays as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, mode if mode is not None else 0o777 & ~current_umask())
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str, mode: int | None = None) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path, mode) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, data: Any, mode: int | None = None) -> None:
    """Write ``data`` as indented UTF-8 JSON atomically (non-JSON values become strings)."""
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n", mode)


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict], mode: int | None = None) -> None:
    """Write one JSON object per line atomically."""
    with atomic_path(path, mode) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def atomic_write_parquet(path: str | Path, frame: Any, mode: int | None = None) -> None:
    """Write a pandas DataFrame as parquet atomically (``index=False``)."""
    with atomic_path(path, mode) as tmp:
        frame.to_parquet(tmp, index=False)


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSON-lines file; blank lines are skipped."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _temp_name(name: str) -> re.Pattern[str]:
    """Names ``tempfile`` gives our temporaries of ``name``: ``.NAME.XXXXXXXX`` (folders) or ``….tmp``."""
    return re.compile(rf"^\.{re.escape(name)}\.[a-z0-9_]{{8}}(\.tmp)?$")


def clean_stale_temps(outputs: Iterable[str | Path]) -> list[Path]:
    """Remove the temporary files and folders a killed earlier attempt left next to ``outputs``.

    Called when a rule starts (Snakemake runs one job per output at a time), so only leftovers of an
    interrupted write of these same outputs match: ``.pairs.parquet.k2j4x9_a.tmp`` next to
    ``pairs.parquet``, ``.adapter.q8w1e3r4`` next to ``adapter/``. Nothing else is touched.
    """
    removed = []
    for output in outputs:
        out = Path(str(output))
        if not out.parent.is_dir():
            continue
        pattern = _temp_name(out.name)
        for entry in out.parent.iterdir():
            if pattern.match(entry.name):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
                log.info("removed %s, left by an interrupted earlier run", entry)
    return removed
