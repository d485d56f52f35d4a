"""``python -m afinar predict`` end to end on a real tiny model, through the real CLI entry point."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
import yaml

from afinar.cli import main as cli_main
from afinar.predict.quick import choose_experiment, shorten, side_by_side
from afinar.train.demo_model import TinyModelSpec, build_tiny_model

WORDS = "nome idade cidade Ana Bruno Recife Natal anos extraia em JSON cadastro".split()
SMALL = TinyModelSpec(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(200)]
    return build_tiny_model(tmp_path_factory.mktemp("m") / "base", corpus, vocab_size=300, spec=SMALL)


@pytest.fixture()
def project(tmp_path, tiny_base, monkeypatch) -> Path:
    """A run directory: config.yaml and results/data/teste.parquet (5 records), cwd set to it."""
    monkeypatch.chdir(tmp_path)
    cfg = {
        "formatos": {"tipo_entrada": "dataset", "formato_saida": "json"},
        "dataset": {"train_file": "treino.parquet"},
        "modelo": {"base": str(tiny_base), "saida": "exp1"},
        "treinamento": {"backend": "transformers", "nbits": 0, "max_seq_length": 256},
        "predicao": {"max_new_tokens": 8, "batch_size": 4},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    rows = [
        {
            "id": f"t{i}",
            "messages": [
                {"role": "user", "content": f"extraia nome idade cidade {i}"},
                {"role": "assistant", "content": json.dumps({"nome": "Ana", "idade": i})},
            ],
        }
        for i in range(5)
    ]
    (tmp_path / "results" / "data").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(tmp_path / "results" / "data" / "teste.parquet", index=False)
    return tmp_path


def test_shorten_and_columns():
    text = "a" * 300 + "b" * 300
    short = shorten(text)
    assert short == "a" * 250 + " [...] " + "b" * 250
    assert shorten("curto") == "curto"
    table = side_by_side("esperado " * 10, "gerado", 80)
    lines = table.splitlines()
    assert lines[0].startswith("ESPERADO") and "│ GERADO" in lines[0]
    assert all(len(line) <= 80 for line in lines)
    assert side_by_side("x", "y", 40) == "ESPERADO:\nx\nGERADO:\ny"


def test_choose_experiment():
    assert choose_experiment({"a": {}}, None) == "a"
    with pytest.raises(Exception, match="--exp"):
        choose_experiment({"a": {}, "b": {}}, None)
    with pytest.raises(Exception, match="choose one of: a, b"):
        choose_experiment({"a": {}, "b": {}}, "c")


def test_no_adapter_without_terminal_or_flag_is_a_clear_error(project, capsys):
    assert cli_main(["predict", "config.yaml", "-n", "2"]) == 1
    err = capsys.readouterr().err
    assert "pass --base" in err and "results/exp1/adapter" in err and "Traceback" not in err


def test_base_flag_predicts_prints_and_writes_json(project, capsys):
    assert cli_main(["predict", "config.yaml", "-n", "3", "--base"]) == 0
    out = capsys.readouterr().out
    assert out.count("ROUGE-L P") == 3 and "ESPERADO" in out and "GERADO" in out
    saved = json.loads((project / "results" / "exp1" / "predicoes" / "cli_n3_base.json").read_text())
    assert saved["modelo"] == "base" and saved["n"] == 3
    assert [r["id"] for r in saved["registros"]] == ["t0", "t1", "t2"]  # the TEST split, in its order
    first = saved["registros"][0]
    assert set(first["rouge_l"]) == {"precision", "recall", "f1"} and first["esperado"].startswith("{")


def test_question_answered_yes_or_no(project, capsys):
    asked = []

    def yes(question, default):
        asked.append(question)
        return "s"

    out_file = project / "out.json"
    assert cli_main(["predict", "config.yaml", "-n", "1", "--output", str(out_file)], ask=yes) == 0
    assert "Use the base model? [s/N]" in asked[0] and json.loads(out_file.read_text())["modelo"] == "base"
    assert cli_main(["predict", "config.yaml", "-n", "1"], ask=lambda q, d: "") == 1
    assert "declined" in capsys.readouterr().err


def test_trained_adapter_is_used_when_present(project, tiny_base):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    peft_model.save_pretrained(project / "results" / "exp1" / "adapter")
    assert cli_main(["predict", "config.yaml", "-n", "2"]) == 0
    saved = json.loads((project / "results" / "exp1" / "predicoes" / "cli_n2.json").read_text())
    assert saved["modelo"] == "adapter" and saved["adapter"].endswith("results/exp1/adapter")


def test_missing_test_split(project, capsys):
    (project / "results" / "data" / "teste.parquet").unlink()
    assert cli_main(["predict", "config.yaml", "-n", "1", "--base"]) == 1
    assert "snakemake results/data/teste.parquet" in capsys.readouterr().err
