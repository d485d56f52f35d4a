"""Dataset mode: every file format, both record shapes, row-level validation and carving of missing splits."""

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from afinar.datasets_io import load_sources, run_dataset_split
from afinar.errors import AfinarError
from afinar.splits import SplitOutputs

EXAMPLE = Path(__file__).resolve().parents[2] / "resources" / "example" / "dataset" / "treino.jsonl"
DIVISAO = {
    "arquivo": "",
    "proporcao": {"treino": 0.7, "validacao": 0.1, "teste": 0.2},
    "seed": 42,
    "validar_ids": True,
}


def dataset(**over):
    cfg = {
        "train_file": "",
        "eval_file": "",
        "test_file": "",
        "train_prompt_col": "messages",
        "eval_prompt_col": "",
        "prompt_template": "",
        "tag_texto": "",
        "hf_dataset": "",
    }
    cfg.update({k: str(v) for k, v in over.items()})
    return cfg


def chat(i):
    return [{"role": "user", "content": f"pergunta {i}"}, {"role": "assistant", "content": f"resposta {i}"}]


def write(path: Path, rows, fmt):
    if fmt == "parquet":
        pd.DataFrame(rows).to_parquet(path)
    elif fmt == "json-array":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    else:
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("d.parquet", "parquet"),
        ("d.json", "json-array"),
        ("d.json", "lines"),
        ("d.jsonl", "lines"),
        ("d.txt", "lines"),
    ],
)
def test_every_format_reads_messages(tmp_path, name, fmt):
    path = write(tmp_path / name, [{"messages": chat(i)} for i in range(3)], fmt)
    records = load_sources(dataset(train_file=path))["treino"]
    assert records.ids == ["treino-000001", "treino-000002", "treino-000003"]
    assert records.messages[2] == chat(2)


def test_prompt_completion_strings_and_lists(tmp_path):
    rows = [
        {"id": 5, "prompt": "p", "completion": "c"},
        {
            "id": 6,
            "prompt": [{"role": "user", "content": "q"}],
            "completion": [{"role": "assistant", "content": "a"}],
        },
    ]
    records = load_sources(dataset(train_file=write(tmp_path / "d.jsonl", rows, "lines")))["treino"]
    assert records.ids == ["5", "6"]
    assert records.messages == [
        [{"role": "user", "content": "p"}, {"role": "assistant", "content": "c"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
    ]


def test_custom_prompt_column_and_template(tmp_path):
    (tmp_path / "t.txt").write_text("Texto: <T>")
    path = write(tmp_path / "d.jsonl", [{"conversa": chat(1)}], "lines")
    records = load_sources(
        dataset(
            train_file=path, train_prompt_col="conversa", prompt_template=tmp_path / "t.txt", tag_texto="<T>"
        )
    )["treino"]
    assert records.messages[0][0]["content"] == "Texto: pergunta 1"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{"messages": chat(1)}, {"messages": [{"role": "user", "content": "só pergunta"}]}],
            "row 2: the last message must be a non-empty assistant answer",
        ),
        (
            [{"messages": chat(1)}, {"messages": [{"role": "robot", "content": "x"}]}],
            "row 2 message 1: role 'robot'",
        ),
        ([{"messages": []}], "row 1: messages must be a non-empty list"),
        ([{"texto": "x"}], "no 'messages' column and no 'prompt'/'completion' columns (found: texto)"),
        (
            [{"id": "a", "messages": chat(1)}, {"id": "a", "messages": chat(2)}],
            "row 2: id 'a' appears more than once",
        ),
    ],
)
def test_bad_rows_are_named(tmp_path, rows, message):
    path = write(tmp_path / "d.jsonl", rows, "lines")
    with pytest.raises(
        AfinarError, match="dataset.train_file .*" + message.replace("(", r"\(").replace(")", r"\)")
    ):
        load_sources(dataset(train_file=path))


def test_bad_json_line_is_named(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"messages": []}\n{quebrado\n')
    with pytest.raises(AfinarError, match="line 2: not valid JSON"):
        load_sources(dataset(train_file=tmp_path / "d.jsonl"))


def test_test_and_validation_carved_from_train(tmp_path):
    out = SplitOutputs.in_folder(tmp_path / "data")
    report = run_dataset_split(dataset(train_file=EXAMPLE), DIVISAO, out)
    assert report["contagens"] == {"treino": 42, "validacao": 6, "teste": 12, "total": 60}
    ids = [
        r
        for s in ("treino", "validacao", "teste")
        for r in pq.read_table(out.split_path(s)).column("id").to_pylist()
    ]
    assert sorted(ids) == [f"ds{i:03d}" for i in range(1, 61)]
    again = SplitOutputs.in_folder(tmp_path / "again")
    run_dataset_split(dataset(train_file=EXAMPLE), DIVISAO, again)
    assert again.teste.read_bytes() == out.teste.read_bytes()


def test_given_eval_and_test_files_are_used_as_they_are(tmp_path):
    train = write(tmp_path / "tr.jsonl", [{"id": f"t{i}", "messages": chat(i)} for i in range(5)], "lines")
    test = write(tmp_path / "te.parquet", [{"id": f"x{i}", "messages": chat(i)} for i in range(2)], "parquet")
    out = SplitOutputs.in_folder(tmp_path / "data")
    report = run_dataset_split(dataset(train_file=train, test_file=test), DIVISAO, out)
    assert report["contagens"] == {"treino": 5, "validacao": 0, "teste": 2, "total": 7}
    assert pq.read_table(out.teste).to_pylist()[0] == {"id": "x0", "messages": chat(0)}


def test_id_in_two_files_is_an_error(tmp_path):
    rows = [{"id": "same", "messages": chat(1)}]
    train, test = write(tmp_path / "a.jsonl", rows, "lines"), write(tmp_path / "b.jsonl", rows, "lines")
    with pytest.raises(AfinarError, match="id 'same' is also in dataset.train_file"):
        load_sources(dataset(train_file=train, test_file=test))
