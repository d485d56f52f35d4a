"""python -m afinar validate / inspect / list-files as real subprocesses, and the interactive fixer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from afinar.cli import main, show_text
from afinar.config import interactive, load_config, read_yaml
from afinar.errors import AfinarError

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "scripts")}
    return subprocess.run(
        [sys.executable, "-m", "afinar", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture()
def project(tmp_path, monkeypatch) -> Path:
    """A working directory (the CWD) with raw folders (3 pairs + 1 unpaired each side), a template and a config."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    for rid in ("001", "002", "a.b", "only_in"):
        (tmp_path / "in" / f"{rid}.txt").write_text(f"documento {rid}\nsegunda linha")
    for rid in ("001", "002", "a.b", "only_out"):
        (tmp_path / "out" / f"{rid}.txt").write_text(json.dumps({"id": rid}))
    (tmp_path / "prompt.txt").write_text("Extraia: <<T>>")
    (tmp_path / "modelo-base").mkdir()  # a local model folder (a Hub id would need the cache offline)
    config = {
        "formatos": {"tipo_entrada": "pastas", "formato_saida": "json"},
        "pastas": {
            "entrada": {"pasta": "in", "prompt_template": "prompt.txt", "tag_texto": "<<T>>"},
            "predicao": {"pasta": "out"},
        },
        "modelo": {"base": "modelo-base", "saida": "exp1"},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return tmp_path


def test_validate_prints_summary_and_success(project):
    result = run_cli("validate", "c.yaml", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "Configuração válida!" in result.stdout and "modelo.base: modelo-base" in result.stdout
    assert "(exp1)" in result.stdout


def test_validate_reports_every_problem_at_once(project):
    cfg = yaml.safe_load((project / "c.yaml").read_text())
    cfg["pastas"]["predicao"]["pasta"] = "nowhere"
    cfg["treinamento"] = {"batch_size": 0, "learnig_rate": 1}
    cfg["misc"] = {"env_chave_criptografia": "AFINAR_UNSET_VAR_X"}
    (project / "bad.yaml").write_text(yaml.safe_dump(cfg))
    result = run_cli("validate", "bad.yaml", "--log-level", "ERROR", cwd=project)
    assert result.returncode == 1
    assert "4 problem(s)" in result.stdout
    for key in (
        "treinamento.learnig_rate",
        "treinamento.batch_size",
        "pastas.predicao.pasta",
        "misc.env_chave_criptografia",
    ):
        assert f"  - {key}:" in result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("afinar: error: bad.yaml: 4 problem(s)")
    assert "Traceback" not in result.stderr


def test_list_files_shows_pairs_and_unpaired_ids(project):
    result = run_cli("list-files", "c.yaml", cwd=project)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "3 par(es) | 4 entrada(s) | 4 resposta(s) esperada(s)"
    assert "  a.b: in/a.b.txt -> out/a.b.txt" in result.stdout
    assert (
        "entrada sem par (1): only_in" in result.stdout and "predicao sem par (1): only_out" in result.stdout
    )


def test_inspect_without_results_reports_state(project):
    result = run_cli("inspect", "c.yaml", cwd=project)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "✓ pastas.entrada.pasta: in (4 arquivo(s) *.txt)" in out
    assert "3 par(es) (raw folders, now)" in out and "entrada sem par: 1" in out
    assert "no split files under results/data" in out
    assert "exp1: não treinado" in out


def test_inspect_shows_first_and_last_records_and_token_statistics(
    project, tiny_model_dir, task_splits, capsys
):
    # task_splits wrote results/data/*.parquet under its own tmp_path == project
    assert task_splits["treino"].is_relative_to(project)
    cfg = yaml.safe_load((project / "c.yaml").read_text())
    cfg["modelo"]["base"] = str(tiny_model_dir)
    cfg["treinamento"] = {"max_seq_length": 64}
    cfg["predicao"] = {"max_new_tokens": 32}  # within max_seq_length, or validate refuses the config
    (project / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["inspect", "c.yaml"]) == 0  # in-process: a subprocess would re-import transformers
    out = capsys.readouterr().out
    assert "treino: 48 registro(s)" in out and "[primeiro] id=" in out and "[último] id=" in out
    assert "    user: " in out and "    assistant: " in out
    assert f"tokenizer: {tiny_model_dir}" in out
    line = next(line for line in out.splitlines() if line.startswith("  treino: 48 registros | tokens min"))
    assert "acima de max_seq_length:" in line

    # encrypted source: lengths only, unless --show-text (in-process, without the tokenizer: faster)
    cfg["misc"] = {"env_chave_criptografia": "SOME_KEY"}
    cfg["modelo"]["base"] = "missing-model"
    (project / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["inspect", "c.yaml"]) == 0
    hidden = capsys.readouterr().out
    assert "    user: <" in hidden and "caracteres>" in hidden and "only lengths shown" in hidden
    assert main(["inspect", "c.yaml", "--show-text"]) == 0
    assert "caracteres>" not in capsys.readouterr().out


def test_inspect_without_local_tokenizer_says_so(project, task_splits):
    result = run_cli("inspect", "c.yaml", cwd=project)
    assert "tokenizer of modelo-base not available locally" in result.stdout


def test_show_text_truncates_like_the_seed():
    text = "a" * 500 + "\n" + "b" * 300
    shown = show_text(text, hide=False)
    assert shown.startswith("a" * 400 + " [...] ") and shown.endswith("b" * 150) and "\n" not in shown
    assert show_text("abc\ndef", hide=True) == "<7 caracteres>"


def test_predict_subcommand_is_registered():
    from afinar.cli import build_parser

    args = build_parser().parse_args(
        ["predict", "c.yaml", "-n", "3", "--exp", "e", "--base", "--yes", "--output", "o.json"]
    )
    assert (args.config, args.n, args.exp, args.base, args.yes, args.output) == (
        "c.yaml",
        3,
        "e",
        True,
        True,
        "o.json",
    )


# --------------------------------------------------------------------------------------------- interactive


class Script:
    """Answers questions in order, checking each question mentions the expected words."""

    def __init__(self, *pairs: tuple[str, str]) -> None:
        self.pairs = list(pairs)
        self.asked: list[str] = []

    def __call__(self, question: str, default: str) -> str:
        self.asked.append(question)
        expected, answer = self.pairs.pop(0)
        assert expected in question, (expected, question)
        return answer


SEED_STYLE = """\
# my experiment (comment kept)
formatos:
  tipo_entrada: pastas   # folders
pastas:
  entrada:
    pasta: in
    prompt_template: missing-template.txt
    tag_texto: '<<T>>'
  predicao:
    pasta: out
  divisao:
    proporcao:           # list of mappings: the original crashed here
      - treino: 0.7
      - validação: 0.2
      - teste: 0.2
modelo:
  base: ""               # the original only looked at base_model_name
treinamento:
  learnig_rate: 0.001    # typo
  max_seq_length: 32768
"""


def test_interactive_fixes_values_and_keeps_comments(project):
    path = project / "seed.yaml"
    path.write_text(SEED_STYLE)
    ask = Script(
        ("rename it to learning_rate", "s"),
        ("Base model", "2"),
        ("prompt_template 'missing-template.txt' does not exist", "r"),
        ("proporção de treino", "0.7"),
        ("proporção de validacao", "0.1"),
        ("proporção de teste", "0.2"),
        ("max_seq_length is 32768", "s"),
        ("Save these changes", "s"),
    )
    changes = interactive.fix_config(path, ask, out=lambda _m: None)
    assert not ask.pairs and len(changes) == 5
    text = path.read_text()
    assert "# my experiment (comment kept)" in text and "# folders" in text and "# typo" in text
    assert "# list of mappings: the original crashed here" in text
    assert "- validação: 0.1" in text  # the user's own name and form are kept
    cfg = load_config(read_yaml(path))
    assert cfg["modelo"]["base"] == interactive.PRESETS[1]
    assert cfg["treinamento"]["learning_rate"] == 0.001 and cfg["treinamento"]["max_seq_length"] == 8192
    assert cfg["pastas"]["entrada"]["prompt_template"] == ""
    assert cfg["pastas"]["divisao"]["proporcao"] == {"treino": 0.7, "validacao": 0.1, "teste": 0.2}


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ("[0.5, 0.3, 0.3]", "[0.6, 0.2, 0.2]"),
        ('"0.5, 0.3, 0.3"', "0.6, 0.2, 0.2"),
        ("{train: 0.5, eval: 0.3, test: 0.3}", "train: 0.6"),
    ],
)
def test_interactive_keeps_the_proportion_form(project, form, expected):
    path = project / "c.yaml"
    cfg = yaml.safe_load(path.read_text())
    path.write_text(
        yaml.safe_dump(cfg).replace("pastas:\n", f"pastas:\n  divisao:\n    proporcao: {form}\n", 1)
    )
    ask = Script(("treino", "0.6"), ("validacao", "0.2"), ("teste", "0.2"), ("Save", "s"))
    interactive.fix_config(path, ask, out=lambda _m: None)
    assert expected in path.read_text()
    assert load_config(read_yaml(path))["pastas"]["divisao"]["proporcao"] == {
        "treino": 0.6,
        "validacao": 0.2,
        "teste": 0.2,
    }


def test_interactive_declined_save_leaves_the_file_untouched(project):
    path = project / "seed.yaml"
    path.write_text(SEED_STYLE)
    answers = iter(["n", "", "i", "0.7", "0.1", "0.2", "n", "n"])
    interactive.fix_config(path, lambda q, d: next(answers), out=lambda _m: None)
    assert path.read_text() == SEED_STYLE


def test_validate_interactive_writes_a_template_for_a_missing_file(project):
    ask = Script(
        ("does not exist. Write a commented template", "s"),
        ("Input mode", "pastas"),
        ("Answer format: json", "json"),
        ("Base model", "modelo-base"),
        ("pastas.predicao.pasta", "n"),
        ("pastas.predicao.pasta", "out"),
        ("pastas.entrada.pasta", "n"),
        ("pastas.entrada.pasta", "in"),
        ("Save these changes", "s"),
    )
    assert main(["validate", "new.yaml", "--interactive"], ask=ask) == 0
    text = (project / "new.yaml").read_text()
    assert "# Afinar config (pastas mode)" in text and 'base: "modelo-base"' in text


def test_interactive_template_asks_the_answer_format(project):
    """Issue 13 item 1: plain-text answers get formato_saida: texto, so no JSON is required of them."""
    for rid in ("001", "002", "a.b", "only_out"):
        (project / "out" / f"{rid}.txt").write_text(f"Resposta em texto livre {rid}.")
    ask = Script(
        ("Write a commented template", "s"),
        ("Input mode", "pastas"),
        ("Answer format", "texto"),
        ("Base model", "modelo-base"),
        ("pastas.predicao.pasta", "n"),
        ("pastas.predicao.pasta", "out"),
        ("pastas.entrada.pasta", "n"),
        ("pastas.entrada.pasta", "in"),
        ("Save these changes", "s"),
    )
    assert main(["validate", "texto.yaml", "--interactive"], ask=ask) == 0
    cfg = load_config(read_yaml(project / "texto.yaml"))
    assert cfg["formatos"]["formato_saida"] == "texto"
    assert cfg["pastas"]["validacao"]["exigir_json_valido"] is False


def test_interactive_asks_again_for_a_path_that_does_not_exist(project):
    """Issue 13 item 6: a path typed at the prompt is checked there; a wrong one is asked again."""
    path = project / "seed.yaml"
    path.write_text(SEED_STYLE.replace("pasta: out", "pasta: saidas-que-nao-existem"))
    said: list[str] = []
    ask = Script(
        ("rename it to learning_rate", "s"),
        ("Base model", "./modelos/nao-existe"),
        ("Base model", "modelo-base"),
        ("pastas.predicao.pasta", "n"),
        ("pastas.predicao.pasta", "tambem-nao-existe"),
        ("pastas.predicao.pasta", "out"),
        ("prompt_template 'missing-template.txt' does not exist", "n"),
        ("pastas.entrada.prompt_template", "nao.txt"),
        ("pastas.entrada.prompt_template", "prompt.txt"),
        ("proporção de treino", "0.7"),
        ("proporção de validacao", "0.1"),
        ("proporção de teste", "0.2"),
        ("max_seq_length is 32768", "n"),
        ("Save these changes", "s"),
    )
    interactive.fix_config(path, ask, out=said.append)
    assert not ask.pairs
    assert any("'tambem-nao-existe' (relative to " in line and "try again" in line for line in said), said
    assert any("./modelos/nao-existe" in line and "does not exist" in line for line in said), said
    cfg = load_config(read_yaml(path))
    assert cfg["pastas"]["predicao"]["pasta"] == "out" and cfg["modelo"]["base"] == "modelo-base"
    assert cfg["pastas"]["entrada"]["prompt_template"] == "prompt.txt"


def test_interactive_gives_up_after_three_wrong_paths_without_saving(project):
    path = project / "seed.yaml"
    path.write_text(SEED_STYLE.replace("pasta: out", "pasta: nada"))
    before = path.read_text()
    ask = Script(
        ("rename it to learning_rate", "s"),
        ("Base model", "modelo-base"),
        ("pastas.predicao.pasta", "n"),
        ("pastas.predicao.pasta", "x1"),
        ("pastas.predicao.pasta", "x2"),
        ("pastas.predicao.pasta", "x3"),
    )
    with pytest.raises(AfinarError, match="3 answers were not an existing folder — nothing saved"):
        interactive.fix_config(path, ask, out=lambda _m: None)
    assert path.read_text() == before


def test_validate_interactive_without_a_terminal_asks_nothing(project):
    result = subprocess.run(
        [sys.executable, "-m", "afinar", "validate", "c.yaml", "--interactive"],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(REPO / "scripts")},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert result.returncode == 0 and "no terminal" in result.stdout
