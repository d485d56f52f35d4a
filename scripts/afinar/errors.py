"""User-facing errors and the wrapper every rule script runs through.

A user error must surface as one line that names the file, key or record and says what to do, with a
non-zero exit and no traceback. Everything else (a bug) keeps its traceback, because that is what a
developer needs to fix it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger("afinar")


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


def run_rule(main: Callable[[Any], None], smk: Any) -> None:
    """Run a rule script's ``main(snakemake)`` with logging to its log file and clean user errors.

    ``smk`` is the ``snakemake`` object Snakemake injects into scripts. Its first log file receives the
    log. The level comes from the run's config (``misc.log_level``, also as ``--config misc.log_level=DEBUG``)
    rather than from ``params``, so changing the verbosity never makes Snakemake rerun a job.
    """
    from afinar.logs import setup_logging

    logfile = smk.log[0] if len(smk.log) else None
    setup_logging(log_level_from_config(getattr(smk, "config", {}) or {}), logfile)
    try:
        main(smk)
    except AfinarError as exc:
        log.error("afinar: error: %s", exc)
        fail(str(exc))
