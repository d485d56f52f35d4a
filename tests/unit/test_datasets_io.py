"""Dataset mode: every file format, both record shapes, row-level validation and carving of missing splits."""

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from afinar.data.dataset_mode import load_sources, run_dataset_split
from afinar.data.splits import SplitOutputs
from afinar.errors import AfinarError

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


# --- Hugging Face datasets (dataset.hf_dataset): built locally, loaded offline through the same code path


def hf_cfg(name, **over):
    cfg = dataset(hf_dataset=name)
    cfg.update(
        {
            "hf_config": "",
            "hf_revision": "",
            "hf_splits": {"treino": "train", "validacao": "validation", "teste": "test"},
            "colunas": {},
        }
    )
    cfg.update(over)
    return cfg


def qa_rows(start, n):
    return [
        {"uid": f"q{i}", "pergunta": f"pergunta {i}", "resposta": f"resposta {i}"}
        for i in range(start, start + n)
    ]


@pytest.fixture
def hf_env(tmp_path, monkeypatch):
    """Offline, with the datasets cache in tmp: nothing may touch the network or the user's cache."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return str(tmp_path / "hf-cache")


def parquet_shards(folder: Path) -> Path:
    """A Hub-like folder: ``data/<split>-0000N-of-0000M.parquet`` shards (train in two shards, no validation)."""
    (folder / "data").mkdir(parents=True)
    pd.DataFrame(qa_rows(0, 10)).to_parquet(folder / "data" / "train-00000-of-00002.parquet")
    pd.DataFrame(qa_rows(10, 10)).to_parquet(folder / "data" / "train-00001-of-00002.parquet")
    pd.DataFrame(qa_rows(20, 5)).to_parquet(folder / "data" / "test-00000-of-00001.parquet")
    return folder


COLUNAS = {"uid": "id", "pergunta": "prompt", "resposta": "completion"}


def test_hf_parquet_shards_become_the_split_files(tmp_path, hf_env):
    from afinar.data.dataset_mode import load_hf_sources

    folder = parquet_shards(tmp_path / "shards")
    sources, prov = load_hf_sources(hf_cfg(str(folder), colunas=COLUNAS), cache_dir=hf_env)
    assert sorted(sources) == ["teste", "treino"]  # no validation split in the dataset: carved later
    assert sorted(sources["treino"].ids) == sorted(f"q{i}" for i in range(20))
    assert sources["teste"].messages[0] == [
        {"role": "user", "content": "pergunta 20"},
        {"role": "assistant", "content": "resposta 20"},
    ]
    assert prov["carregado_com"] == "load_dataset" and prov["revisao_resolvida"]
    assert prov["splits"] == {"train": 20, "test": 5}

    out = tmp_path / "out"
    outputs = SplitOutputs(*(out / n for n in ("t.parquet", "v.parquet", "te.parquet", "d.csv", "d.json")))
    cfg = hf_cfg(str(folder), colunas=COLUNAS)
    # like local files: the dataset's test split is used as it is, and without a validation split in the
    # dataset none is carved when a test split exists
    report = run_dataset_split(cfg, DIVISAO, outputs)
    assert report["contagens"] == {"treino": 20, "validacao": 0, "teste": 5, "total": 25}
    assert report["hf_dataset"]["nome"] == str(folder)
    assert json.loads((out / "d.json").read_text())["hf_dataset"]["fingerprints"]["train"]
    assert pq.read_table(out / "te.parquet").column("id").to_pylist() == [f"q{i}" for i in range(20, 25)]

    # only a train split: test and validation are carved from it with pastas.divisao.proporcao
    for shard in (folder / "data").glob("test-*"):
        shard.unlink()
    report = run_dataset_split(hf_cfg(str(folder), colunas=COLUNAS), DIVISAO, outputs)
    assert report["contagens"] == {"treino": 14, "validacao": 2, "teste": 4, "total": 20}
    assert report["origem"] == "dataset (teste recortado do treino)"


def test_hf_save_to_disk_folder_and_custom_split_names(tmp_path, hf_env):
    import datasets

    from afinar.data.dataset_mode import load_hf_sources

    rows = qa_rows(0, 12)
    dd = datasets.DatasetDict(
        {
            "tr": datasets.Dataset.from_list(rows[:8]),
            "dev": datasets.Dataset.from_list(rows[8:10]),
            "ev": datasets.Dataset.from_list(rows[10:]),
        }
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    splits = {"treino": "tr", "validacao": "dev", "teste": "ev"}
    sources, prov = load_hf_sources(hf_cfg(str(tmp_path / "saved"), hf_splits=splits, colunas=COLUNAS))
    assert [len(sources[r]) for r in ("treino", "validacao", "teste")] == [8, 2, 2]
    assert prov["carregado_com"] == "load_from_disk" and prov["usados"] == splits
    # a split name the user chose that the dataset lacks is a typo, not something to carve
    with pytest.raises(AfinarError, match=r"hf_splits.teste: .* has no split 'eval' \(splits: dev, ev, tr\)"):
        load_hf_sources(
            hf_cfg(str(tmp_path / "saved"), hf_splits={**splits, "teste": "eval"}, colunas=COLUNAS)
        )


def test_hf_offline_and_not_cached_is_one_line(hf_env):
    from afinar.data.dataset_mode import load_sources

    with pytest.raises(AfinarError) as err:
        load_sources(hf_cfg("someorg/a-dataset-that-is-not-cached"))
    msg = str(err.value)
    assert "\n" not in msg
    assert "must already be in the local cache or a local folder (save_to_disk" in msg


def test_hf_missing_folder_and_bad_column_mapping(tmp_path, hf_env):
    from afinar.data.dataset_mode import load_hf_sources

    with pytest.raises(AfinarError, match=r"folder './nao/existe' \(relative to .*\) not found"):
        load_hf_sources(hf_cfg("./nao/existe"))
    folder = parquet_shards(tmp_path / "shards")
    bad = {"uid": "id", "questao": "prompt", "resposta": "completion"}
    with pytest.raises(AfinarError) as err:
        load_hf_sources(hf_cfg(str(folder), colunas=bad), cache_dir=hf_env)
    assert "dataset.colunas: column 'questao' is not in" in str(err.value)
    assert "(columns: pergunta, resposta, uid)" in str(err.value)
    # without a mapping, the columns found are named too
    with pytest.raises(AfinarError, match="found: pergunta, resposta, uid"):
        load_hf_sources(hf_cfg(str(folder)), cache_dir=hf_env)


def test_colunas_apply_to_local_files_too(tmp_path):
    path = write(tmp_path / "d.jsonl", qa_rows(0, 3), "lines")
    cfg = dataset(train_file=path)
    cfg["colunas"] = COLUNAS
    assert load_sources(cfg)["treino"].ids == ["q0", "q1", "q2"]
