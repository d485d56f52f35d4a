"""Keep every attempt of a training job in its rule log.

Snakemake deletes a job's log before each attempt (``--retries``, a requeued or resubmitted SLURM job,
the next ``snakemake`` call), so the lines of an interrupted attempt, the ones that say why it stopped,
survived only in ``.snakemake/slurm_logs/``. Here each attempt also appends to a history file next to
the rule log (``<log>.attempts``, not a Snakemake output, so never deleted by it). When an attempt starts,
the history so far is copied into the fresh rule log and a header names the attempt; when training
succeeds the history is removed, since the rule log now holds all of it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from afinar.logs import FORMAT

HEADER = "===== afinar: attempt"


def history_path(rule_log: str | Path) -> Path:
    """Where the attempts of ``rule_log`` accumulate until one succeeds."""
    rule_log = Path(rule_log)
    return rule_log.with_name(rule_log.name + ".attempts")


def attempt_header(number: int) -> str:
    """One line naming the attempt, when and where it ran (SLURM job and restart count when present)."""
    where = [socket.gethostname()]
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        where.append(f"SLURM job {job}")
        restarts = os.environ.get("SLURM_RESTART_COUNT")
        if restarts:
            where.append(f"requeued {restarts}x")
    stamp = datetime.now().astimezone().isoformat(timespec="seconds")
    return f"{HEADER} {number} — {stamp} — {', '.join(where)} =====\n"


@contextmanager
def keep_attempts(rule_log: str | Path | None, logger_name: str = "afinar") -> Iterator[int]:
    """Copy earlier attempts into ``rule_log``, log this one to both files, forget them on success.

    Yields this attempt's number (1 for the first)."""
    if not rule_log:
        yield 1
        return
    rule_log, history = Path(rule_log), history_path(rule_log)
    previous = history.read_text(encoding="utf-8", errors="replace") if history.is_file() else ""
    number = previous.count(HEADER) + 1
    header = attempt_header(number)
    history.parent.mkdir(parents=True, exist_ok=True)
    with open(history, "a", encoding="utf-8") as fh:
        fh.write(header)
    with open(rule_log, "a", encoding="utf-8") as fh:  # O_APPEND: lands before anything logged after it
        fh.write(previous + header)
    handler = logging.FileHandler(history, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield number
    except BaseException as exc:  # why this attempt stopped, in the history the next attempt copies
        logger.error("attempt %d stopped: %s", number, str(exc) or type(exc).__name__)
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()
    history.unlink(missing_ok=True)  # reached only when the attempt succeeded
