"""User-facing errors and the wrapper every rule script runs through.

A user error must surface as one line that names the file, key or record and says what to do, with a
non-zero exit and no traceback. Every failure also lands in the rule's log file, because that is the
file Snakemake points to ("check log file(s) for error details"): user errors as that same line (their
traceback at DEBUG), anything else (a bug, or the machine) with its full traceback. The console gets
one line either way; a full disk is recognised and said as such, whatever library hit it.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("afinar")

#: how a full disk shows when the write did not go through Python's ``open`` (torch, safetensors)
_DISK_FULL_TEXT = ("no space left on device", "storagefull", "disk quota exceeded")
_TORCH_WRITE_FAILED = ("unexpected pos", "file write failed")
#: below this, a failed torch write is taken as a full disk (torch's message names no cause)
_LOW_SPACE_BYTES = 64 << 20


class AfinarError(Exception):
    """A problem the user can fix: the message is shown as is, in one line."""


def fail(message: str) -> None:
    """Print one clean error line to stderr and exit 1."""
    print(f"afinar: error: {message}", file=sys.stderr)
    sys.exit(1)


def log_level_from_config(config: dict) -> str:
    """``misc.log_level`` from a raw config dict (``--config 'misc={log_level: DEBUG}'`` overrides it)."""
    misc = config.get("misc") or {}
    return str(misc.get("log_level", "INFO")) if isinstance(misc, dict) else "INFO"


def _chain(exc: BaseException) -> Iterable[BaseException]:
    """The exception and those it was raised from or while handling (each once)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def newest_file(folders: Iterable[str | Path], since: float) -> Path | None:
    """The file most recently written under ``folders`` (recursively) after ``since``: the one being
    written when a library's error does not name it."""
    best: tuple[float, Path] | None = None
    for folder in folders:
        for root, _dirs, files in os.walk(folder):
            for name in files:
                path = Path(root) / name
                try:
                    mtime = path.stat().st_mtime
                except OSError:
                    continue
                if mtime >= since and (best is None or mtime > best[0]):
                    best = (mtime, path)
    return best[1] if best else None


def disk_full_message(
    exc: BaseException,
    folders: Iterable[str | Path],
    since: float = 0.0,
    advice: str = "free some space and run snakemake again",
) -> str | None:
    """ "no space left on <mount> (N MB free) while writing <file>" when ``exc`` is a full disk, else None.

    Python's own writes raise ``OSError(ENOSPC)`` with the file name; safetensors says "No space left
    on device"; torch's zip writer only says "unexpected pos …" or "file write failed", so there the
    disk must also be nearly full for the error to be taken as this. Without a file name in the error,
    the file is the newest one written under ``folders`` during this job.
    """
    paths = [Path(f) for f in folders]
    filename: str | None = None
    full = quota = False
    torch_write = False
    for item in _chain(exc):
        text = str(item).lower()
        if isinstance(item, OSError) and item.errno in (errno.ENOSPC, errno.EDQUOT):
            full, quota = True, quota or item.errno == errno.EDQUOT
            filename = filename or (str(item.filename) if item.filename else None)
        elif any(marker in text for marker in _DISK_FULL_TEXT):
            full, quota = True, quota or "quota" in text
        elif any(marker in text for marker in _TORCH_WRITE_FAILED):
            torch_write = True
    target = Path(filename) if filename else newest_file([f for f in paths if f.is_dir()], since)
    where = _existing(target.parent if target else (paths[0] if paths else Path.cwd()))
    free = shutil.disk_usage(where).free
    if not full and not (torch_write and free < _LOW_SPACE_BYTES):
        return None
    what = "disk quota exceeded" if quota else "no space left"
    writing = f" while writing {target}" if target else ""
    return f"{what} on {_mount_point(where)} ({free // (1 << 20)} MB free){writing} — {advice}"


def _output_folders(smk: Any) -> list[Path]:
    """Folders a rule writes into: those of its outputs (a training run's checkpoints sit beside them)."""
    folders = {Path(str(p)).parent for p in getattr(smk, "output", []) or []}
    return sorted(folders)


def run_rule(main: Callable[[Any], None], smk: Any) -> None:
    """Run a rule script's ``main(snakemake)`` with logging to its log file and one-line errors.

    ``smk`` is the ``snakemake`` object Snakemake injects into scripts. Its first log file receives the
    log. The level comes from the run's config (``misc.log_level``, also as ``--config misc.log_level=DEBUG``)
    rather than from ``params``, so changing the verbosity never makes Snakemake rerun a job. Before
    ``main`` runs, temporary files that a killed earlier attempt left next to the outputs are removed.
    """
    from afinar.io import clean_stale_temps
    from afinar.logs import setup_logging

    logfile = smk.log[0] if len(smk.log) else None
    setup_logging(log_level_from_config(getattr(smk, "config", {}) or {}), logfile)
    started = time.time() - 1  # mtimes may be truncated to the second
    file_only = {"console": False}  # the console gets one line, from fail()
    try:
        clean_stale_temps(getattr(smk, "output", []) or [])
        main(smk)
    except AfinarError as exc:
        log.debug("traceback of the error below", exc_info=True, extra=file_only)
        log.error("afinar: error: %s", exc, extra=file_only)
        fail(str(exc))
    except Exception as exc:
        message = disk_full_message(exc, _output_folders(smk), started)
        if message:
            log.debug("traceback of the error below", exc_info=True, extra=file_only)
            log.error("afinar: error: %s", message, extra=file_only)
            fail(message + (f" (log: {logfile})" if logfile else ""))
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        message = f"unexpected {type(exc).__name__}: {first}"
        log.error("afinar: error: %s", message, exc_info=True, extra=file_only)
        fail(message + (f" — the traceback is in {logfile}" if logfile else ""))
