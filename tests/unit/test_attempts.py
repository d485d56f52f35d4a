"""afinar.train.attempts: every attempt of a job stays in its rule log, under its own header."""

from __future__ import annotations

import logging

import pytest

from afinar.logs import setup_logging
from afinar.train.attempts import HEADER, history_path, keep_attempts


def attempt(rule_log, line, fail=False):
    """What a job does: Snakemake deletes the log, the script logs to it, keep_attempts wraps the work."""
    rule_log.unlink(missing_ok=True)
    setup_logging("INFO", rule_log)
    log = logging.getLogger("afinar.test")
    with keep_attempts(rule_log) as number:
        log.info("%s (attempt %d)", line, number)
        if fail:
            raise KeyboardInterrupt("time limit")
    return number


def test_failed_attempts_are_kept_until_one_succeeds(tmp_path):
    rule_log = tmp_path / "logs" / "train" / "demo.log"
    for line in ("first", "second"):
        with pytest.raises(KeyboardInterrupt):
            attempt(rule_log, line, fail=True)
        assert history_path(rule_log).is_file()
    assert attempt(rule_log, "third") == 3
    text = rule_log.read_text()
    assert text.count(HEADER) == 3
    assert (
        text.index("first (attempt 1)") < text.index("second (attempt 2)") < text.index("third (attempt 3)")
    )
    assert "attempt 1 stopped: time limit" in text
    assert not history_path(rule_log).exists()  # success: the rule log holds everything

    assert attempt(rule_log, "fresh") == 1  # the next run starts a new history
    assert rule_log.read_text().count(HEADER) == 1
    logging.getLogger("afinar").handlers.clear()
