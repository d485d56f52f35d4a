"""Bad configs: each one is one clear line naming the key, through the library and the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from afinar.config import load_config, read_yaml
from afinar.errors import AfinarError

REPO = Path(__file__).resolve().parents[2]


def good() -> dict:
    return {
        "formatos": {"tipo_entrada": "pastas"},
        "pastas": {"entrada": {"pasta": "in"}, "predicao": {"pasta": "out"}},
        "modelo": {"base": "org/model"},
    }


def with_(path: str, value) -> dict:
    cfg = good()
    node = cfg
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return cfg


CASES = {
    "unknown key with suggestion": (
        with_("treinamento.learnig_rate", 1e-4),
        "treinamento.learnig_rate: unknown key — did you mean 'learning_rate'?",
    ),
    "unknown section": (with_("modell.base", "x"), "modell: unknown key — did you mean 'modelo'?"),
    "key in the wrong section": (
        with_("treinamento.dropout", 0.1),
        "treinamento.dropout: unknown key — it belongs under lora",
    ),
    "english name": (
        with_("modelo.output_dir", "x"),
        "modelo.output_dir: unknown key — did you mean 'saida'?",
    ),
    "wrong type": (
        with_("treinamento.batch_size", "dois"),
        "treinamento.batch_size: got 'dois' — expected an integer >= 1",
    ),
    "out of range": (with_("lora.dropout", 1.5), "lora.dropout: got 1.5 — expected a number >= 0, < 1"),
    "bad enum": (
        with_("treinamento.precisao", "fp8"),
        "treinamento.precisao: got 'fp8' — expected one of auto, bf16, fp16, fp32",
    ),
    "bad nbits": (with_("treinamento.nbits", 2), "treinamento.nbits: got 2 — expected one of 0, 4, 8"),
    "bad boolean": (
        with_("pastas.validacao.skip_invalidos", "talvez"),
        "pastas.validacao.skip_invalidos: 'talvez' is not a yes/no value",
    ),
    "proportions sum to 0.9": (
        with_("pastas.divisao.proporcao", [0.7, 0.1, 0.1]),
        "pastas.divisao.proporcao: treino 0.7 + validacao 0.1 + teste 0.1 = 0.9, must sum to 1",
    ),
    "negative proportion": (
        with_("pastas.divisao.proporcao", {"treino": 1.1, "validacao": -0.1, "teste": 0}),
        "pastas.divisao.proporcao.treino: got 1.1",
    ),
    "negative proportion summing to 1": (
        with_("pastas.divisao.proporcao", "0.9, -0.1, 0.2"),
        "pastas.divisao.proporcao.validacao: got -0.1 — expected a number >= 0",
    ),
    "two proportions": (
        with_("pastas.divisao.proporcao", [0.7, 0.3]),
        "pastas.divisao.proporcao: 2 values given, exactly 3 needed",
    ),
    "unknown split name": (
        with_("pastas.divisao.proporcao", [{"treino": 0.7}, {"valid": 0.1}, {"teste": 0.2}]),
        "pastas.divisao.proporcao.valid: unknown split name",
    ),
    "bad eval_steps": (
        with_("treinamento.eval_steps", "abc"),
        "treinamento.eval_steps: got 'abc' — expected steps",
    ),
    "eval_steps over 100%": (
        with_("treinamento.eval_steps", "150%"),
        "treinamento.eval_steps: 150% — a percentage of the run's steps must be between",
    ),
    "experiment name escaping results/": (
        with_("experimentos", {"..": {}}),
        "experimentos...: the experiment name '..' would write outside results/",
    ),
    "experiment name taking results/data": (
        with_("experimentos", {"data": {}}),
        "experimentos.data: the experiment name 'data' is one of results/'s own folders",
    ),
    "data section in experiment": (
        with_("experimentos", {"a": {"pastas": {}}}),
        "experimentos.a.pastas: experiments may only override",
    ),
    "bad value in experiment": (
        with_("experimentos", {"a": {"treinamento": {"epochs": 0}}}),
        "experimentos.a.treinamento.epochs: got 0 — expected an integer >= 1",
    ),
    "typo in experiment": (
        with_("experimentos", {"a": {"lora": {"rank": 4}}}),
        "experimentos.a.lora.rank: unknown key",
    ),
    "dataframe: true": (
        with_("pastas.entrada.dataframe", True),
        "pastas.entrada.dataframe: got True, but it is the PATH of a parquet file",
    ),
    "dataframe without columns": (
        with_("pastas.entrada.dataframe", "t.parquet"),
        "pastas.entrada.dataframe_col: required with entrada.dataframe",
    ),
    "missing modelo.base": (with_("modelo", {"saida": "x"}), "modelo.base: missing — set the base model"),
    "empty modelo.base": (with_("modelo.base", ""), "modelo.base: missing — set the base model"),
    "section not a mapping": (with_("lora", [8, 32]), "lora: got a list ([8, 32]) — expected a mapping"),
    "template without tag": (
        with_("pastas.entrada.prompt_template", "p.txt"),
        "pastas.entrada.tag_texto: empty while prompt_template is set",
    ),
    "no predicao folder": (with_("pastas.predicao", {}), "pastas.predicao.pasta: empty"),
    "alias conflict": (
        with_("modelo.base_model_name", "org/other"),
        "modelo: both base ('org/model') and its alias base_model_name",
    ),
    "regex mask": (
        with_("pastas.entrada.mascara", "^doc.*"),
        "pastas.entrada.mascara: mask '^doc.*' looks like a regular expression",
    ),
    "paciencia without validation": (
        with_("pastas.divisao.proporcao", [0.8, 0, 0.2]) | {"treinamento": {"paciencia": 2}},
        "treinamento.paciencia: early stopping needs a validation split",
    ),
    "filter above max_seq_length": (
        with_("treinamento", {"max_seq_length": 512, "filtro_tokens": {"max_tokens": 1024}}),
        "treinamento.filtro_tokens.max_tokens: 1024 exceeds treinamento.max_seq_length (512)",
    ),
    "dataset mode without train_file": (
        {"formatos": {"tipo_entrada": "dataset"}, "modelo": {"base": "m"}},
        "dataset.train_file: empty",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_config_is_one_line_naming_the_key(name):
    raw, expected = CASES[name]
    with pytest.raises(AfinarError) as info:
        load_config(raw)
    message = str(info.value)
    assert message.startswith(expected), message
    assert "\n" not in message and " — " in message


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("modelo:\n  base: x\n treinamento: 1\n")
    with pytest.raises(AfinarError, match=r"bad\.yaml: line 3, column 2: malformed YAML"):
        read_yaml(path)


@pytest.mark.parametrize(
    ("text", "expected"), [("", "the file is empty"), ("- a\n- b\n", "the top level must be a mapping")]
)
def test_empty_or_list_file(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(AfinarError, match=expected):
        read_yaml(path)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "scripts")}
    return subprocess.run(
        [sys.executable, "-m", "afinar", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_cli_bad_configs_exit_1_with_one_error_line_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("modelo:\n  base: [unclosed\n")
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump(CASES["unknown key with suggestion"][0]))
    before = typo.read_text()
    for args, expected in (
        (("validate", str(bad)), "malformed YAML"),
        (("inspect", str(typo)), "treinamento.learnig_rate: unknown key — did you mean 'learning_rate'?"),
        (("list-files", str(tmp_path / "missing.yaml")), "config file not found"),
        (("validate", str(tmp_path / "missing.yaml")), "--interactive"),
    ):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 1, result
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("afinar: error:")]
        assert len(errors) == 1 and expected in errors[0], result.stderr
    assert typo.read_text() == before  # user files are never modified
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "typo.yaml"]  # nothing written
