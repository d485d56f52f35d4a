"""`afinar validate` / `inspect` check that each base model's chat template can be masked, before any job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from _chat_families import FAMILIES, family_tokenizer

from afinar.cli import main
from afinar.train import template_check

UNMASKABLE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"


@pytest.fixture()
def project(tmp_path, monkeypatch) -> Path:
    """A CWD with two raw pairs, a prompt template and a config (the base model is set per test)."""
    monkeypatch.chdir(tmp_path)
    for side in ("in", "out"):
        (tmp_path / side).mkdir()
    for rid in ("001", "002"):
        (tmp_path / "in" / f"{rid}.txt").write_text(f"documento {rid}")
        (tmp_path / "out" / f"{rid}.txt").write_text(json.dumps({"id": rid}))
    (tmp_path / "prompt.txt").write_text("Extraia: <<T>>")
    return tmp_path


def write_config(project: Path, base: str, responses_only: bool = True) -> str:
    config = {
        "pastas": {
            "entrada": {"pasta": "in", "prompt_template": "prompt.txt", "tag_texto": "<<T>>"},
            "predicao": {"pasta": "out"},
        },
        "modelo": {"base": base, "saida": "exp1"},
        "treinamento": {"train_on_responses_only": responses_only},
    }
    (project / "c.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return "c.yaml"


def tokenizer_folder(tmp_path: Path, tiny_model_dir: Path, family: str, template: str | None = None) -> str:
    tok = family_tokenizer(tiny_model_dir, FAMILIES[family])
    if template is not None:
        tok.chat_template = template
    out = tmp_path / f"tok-{family}"
    tok.save_pretrained(out)
    return str(out)


def test_validate_refuses_a_template_that_cannot_be_masked(project, tiny_model_dir, capsys):
    base = tokenizer_folder(project, tiny_model_dir, "qwen2.5", UNMASKABLE)
    assert main(["validate", write_config(project, base)]) == 1
    out = capsys.readouterr()
    assert f"experiment exp1: modelo.base {base}: chat template: no detectable assistant marker" in out.out
    assert "train_on_responses_only: false" in out.out and "Traceback" not in out.err
    assert not (project / "results").exists()  # nothing ran

    # with whole-chat loss the template is not a problem
    assert main(["validate", write_config(project, base, responses_only=False)]) == 0


@pytest.mark.parametrize("family", ["deepseek-r1-distill-qwen", "mistral-v0.3"])
def test_validate_accepts_the_templates_that_used_to_fail(project, tiny_model_dir, capsys, family):
    base = tokenizer_folder(project, tiny_model_dir, family)
    assert main(["validate", write_config(project, base)]) == 0
    out = capsys.readouterr().out
    assert f"chat template: {base}: its own template masks the answers" in out


def test_inspect_shows_the_template_check(project, tiny_model_dir, capsys):
    good = tokenizer_folder(project, tiny_model_dir, "deepseek-r1-distill-llama")
    assert main(["inspect", write_config(project, good)]) == 0
    assert "<｜Assistant｜>" in capsys.readouterr().out.split("== Chat template ==")[1]
    bad = tokenizer_folder(project, tiny_model_dir, "phi3.5", UNMASKABLE)
    assert main(["inspect", write_config(project, bad)]) == 0
    section = capsys.readouterr().out.split("== Chat template ==")[1]
    assert "✗ experiment exp1" in section and "no detectable assistant marker" in section


def test_a_base_not_here_is_left_to_training():
    problems, notes = template_check.template_report(
        {"e": {"modelo": {"base": "results/modelos/not-built-yet"}, "treinamento": {}}}
    )
    assert problems == [] and "checked when training starts" in notes[0]
