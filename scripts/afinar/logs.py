"""Logging set-up shared by rule scripts and the CLI.

Keys and decrypted text are only ever logged at DEBUG; this module makes the level explicit so the
default (INFO) never shows them. The console shows one line per record and never a traceback (a record
can also be marked ``extra={"console": False}`` to go to the log file only); the log file keeps
tracebacks, since it is where a developer looks.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _ConsoleFormatter(logging.Formatter):
    """The record's message line only: tracebacks belong in the log file."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


class _LogFileHandler(logging.FileHandler):
    """A log file that cannot be written (a full disk) is said once, in one line, not as a traceback."""

    _warned = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self._warned:
            self._warned = True
            print(f"afinar: warning: cannot write the log file {self.baseFilename}", file=sys.stderr)


def _for_console(record: logging.LogRecord) -> bool:
    return bool(getattr(record, "console", True))


def setup_logging(level: str = "INFO", logfile: str | Path | None = None) -> logging.Logger:
    """Configure the ``afinar`` logger to stderr and, optionally, a log file (created with its folder)."""
    level = str(level or "INFO").upper()
    if level not in LEVELS:
        level = "INFO"
    logger = logging.getLogger("afinar")
    logger.handlers.clear()
    logger.setLevel(level)
    logger.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(_ConsoleFormatter(FORMAT, "%H:%M:%S"))
    console.addFilter(_for_console)
    logger.addHandler(console)
    if logfile:
        Path(logfile).parent.mkdir(parents=True, exist_ok=True)
        handler = _LogFileHandler(logfile, encoding="utf-8")
        handler.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
        logger.addHandler(handler)
    return logger
