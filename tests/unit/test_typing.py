"""mypy (run by `make lint`) catches the dict misuse the typed settings exist to prevent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_mypy_rejects_settings_read_as_a_dict(tmp_path):
    api = pytest.importorskip("mypy.api")
    snippet = tmp_path / "misuse.py"
    snippet.write_text(
        "from afinar.config.settings import Experiment\n"
        "def epochs(exp: Experiment) -> int:\n"
        '    return exp.treinamento["epochs"]\n'
        "def rate(exp: Experiment) -> str:\n"
        "    return exp.treinamento.learning_rate\n"
        "def fine(exp: Experiment) -> int:\n"
        "    return exp.treinamento.epochs * exp.lora.r\n",
        encoding="utf-8",
    )
    out, _, status = api.run(
        [
            "--config-file",
            str(REPO / "pyproject.toml"),
            "--cache-dir",
            str(tmp_path / "cache"),
            str(snippet),
        ]
    )
    assert status == 1, out
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert any(':3: error: Value of type "TrainSettings" is not indexable' in e for e in errors), out
    assert any(":5: error: Incompatible return value type" in e for e in errors), out
    assert not any(":7:" in e for e in errors), out  # the correct use passes
