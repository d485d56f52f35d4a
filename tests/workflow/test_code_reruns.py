"""Reruns that notice library code, and settings that must never rerun anything, from snakemake's plan.

One real, small run of the demo (two training steps, short predictions) is the baseline; each test then
edits one thing in that copy of the workflow and asks a real `snakemake --dry-run` what it would redo.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_workflow, run_snakemake
from tests.workflow.smk import planned_jobs, reasons

pytestmark = pytest.mark.workflow

DATA_STAGES = {"pair", "decrypt", "split", "demo_model", "filter_tokens"}


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo, run to the end with a tiny training: every output and its metadata exist."""
    wf = copy_workflow(tmp_path_factory.mktemp("reruns") / "wf")
    cfg = yaml.safe_load((wf / "config" / "config.yaml").read_text())
    cfg["treinamento"].update(max_steps=2, epochs=1)
    cfg["predicao"].update(max_new_tokens=4, comparar_base=False)
    (wf / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False))
    proc = run_snakemake(wf)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert planned_jobs(_dry_run(wf)) == {}, "a finished run must plan nothing"
    return wf


def _dry_run(wf: Path, *args: str) -> str:
    proc = run_snakemake(wf, "-n", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@contextmanager
def appended(path: Path, text: str) -> Iterator[None]:
    """``path`` with ``text`` appended, restored byte for byte afterwards."""
    original = path.read_bytes()
    try:
        path.write_bytes(original + text.encode())
        yield
    finally:
        path.write_bytes(original)


LIBRARY = Path("scripts") / "afinar"


def test_evaluation_module_change_reruns_evaluate_and_after_only(done: Path) -> None:
    with appended(done / LIBRARY / "evaluate" / "evaluation.py", "\n# fixed a bug\n"):
        out = _dry_run(done)
    assert set(planned_jobs(out)) - {"all"} == {"evaluate", "charts", "report"}, out[-3000:]
    assert "params have changed" in reasons(out)


def test_training_module_change_reruns_train_and_after_not_the_data(done: Path) -> None:
    with appended(done / LIBRARY / "train" / "training.py", "\n# fixed a bug\n"):
        out = _dry_run(done)
    jobs = planned_jobs(out)
    assert {"train", "predict", "evaluate", "charts", "report"} <= set(jobs), out[-3000:]
    assert not DATA_STAGES & set(jobs), out[-3000:]


def test_report_module_change_reruns_only_the_report(done: Path) -> None:
    with appended(done / LIBRARY / "report" / "markdown.py", "\n# fixed a bug\n"):
        out = _dry_run(done)
    assert set(planned_jobs(out)) - {"all"} == {"report"}, out[-3000:]


def test_a_module_no_rule_imports_reruns_nothing(done: Path) -> None:
    """The control: a library file outside every rule's imports (the CLI's) plans nothing."""
    with appended(done / LIBRARY / "cli.py", "\n# edited\n"):
        assert planned_jobs(_dry_run(done)) == {}


def test_log_level_in_the_config_file_reruns_nothing(done: Path) -> None:
    cfg = yaml.safe_load((done / "config" / "config.yaml").read_text())
    cfg["misc"]["log_level"] = "DEBUG"
    path = done / "config" / "debug.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False))
    assert planned_jobs(_dry_run(done, "--configfile", str(path.relative_to(done)))) == {}


def test_log_level_on_the_command_line_reruns_nothing(done: Path) -> None:
    assert planned_jobs(_dry_run(done, "--config", "misc={log_level: DEBUG}")) == {}
