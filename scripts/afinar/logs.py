"""Logging set-up shared by rule scripts and the CLI.

Keys and decrypted text are only ever logged at DEBUG; this module makes the level explicit so the
default (INFO) never shows them.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str = "INFO", logfile: str | Path | None = None) -> logging.Logger:
    """Configure the ``afinar`` logger to stderr and, optionally, a log file (created with its folder)."""
    level = str(level or "INFO").upper()
    if level not in LEVELS:
        level = "INFO"
    logger = logging.getLogger("afinar")
    logger.handlers.clear()
    logger.setLevel(level)
    logger.propagate = False
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile:
        Path(logfile).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(logfile, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
        logger.addHandler(handler)
    return logger
