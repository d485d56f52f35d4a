"""Dataset mode from a Hugging Face dataset folder, with the real snakemake (offline, nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import copy_workflow, offline_env, run_snakemake

pytestmark = pytest.mark.workflow


def _rows(start: int, n: int) -> list[dict]:
    return [
        {"uid": f"r{i:03d}", "pergunta": f"Quanto é {i} + 1?", "resposta": json.dumps({"resultado": i + 1})}
        for i in range(start, start + n)
    ]


def _config(hf_folder: Path, **dataset) -> dict:
    return {
        "formatos": {"tipo_entrada": "dataset", "formato_saida": "json"},
        "dataset": {
            "hf_dataset": str(hf_folder),
            "colunas": {"uid": "id", "pergunta": "prompt", "resposta": "completion"},
            **dataset,
        },
        "pastas": {"divisao": {"proporcao": {"treino": 0.8, "validacao": 0.1, "teste": 0.1}, "seed": 7}},
        "modelo": {"base": "results/demo/modelo-base", "saida": "hf"},
        "treinamento": {"backend": "transformers", "nbits": 0, "max_seq_length": 256},
        "predicao": {"max_new_tokens": 64},
    }


def test_hf_parquet_folder_becomes_the_split_files(tmp_path: Path) -> None:
    hf = tmp_path / "meu-dataset" / "data"
    hf.mkdir(parents=True)
    pd.DataFrame(_rows(0, 40)).to_parquet(hf / "train-00000-of-00001.parquet")
    pd.DataFrame(_rows(40, 6)).to_parquet(hf / "validation-00000-of-00001.parquet")
    wf = copy_workflow(tmp_path / "wf")
    (wf / "hf.yaml").write_text(yaml.safe_dump(_config(hf.parent)))
    env = offline_env(HF_DATASETS_CACHE=str(tmp_path / "hf-cache"))

    proc = run_snakemake(wf, "--configfile=hf.yaml", "results/data/teste.parquet", env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = wf / "results" / "data"
    ids = {s: list(pd.read_parquet(data / f"{s}.parquet")["id"]) for s in ("treino", "validacao", "teste")}
    # the dataset's validation split is used as is; the missing test split is carved from train
    assert sorted(ids["validacao"]) == [f"r{i:03d}" for i in range(40, 46)]
    assert len(ids["teste"]) == 4 and len(ids["treino"]) == 36
    assert not set(ids["teste"]) & set(ids["treino"])
    messages = pd.read_parquet(data / "teste.parquet")["messages"].iloc[0]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    divisao = json.loads((data / "divisao.json").read_text())
    assert divisao["hf_dataset"]["nome"] == str(hf.parent)
    assert divisao["hf_dataset"]["revisao_resolvida"] and divisao["hf_dataset"]["fingerprints"]["train"]

    # a column mapping to a missing column: one line, exit 1, no split file left behind
    for f in data.glob("*"):
        f.unlink()
    bad = _config(hf.parent, colunas={"uid": "id", "questao": "prompt", "resposta": "completion"})
    (wf / "bad.yaml").write_text(yaml.safe_dump(bad))
    proc = run_snakemake(wf, "--configfile=bad.yaml", "results/data/teste.parquet", env=env)
    assert proc.returncode != 0
    assert "afinar: error: dataset.colunas: column 'questao' is not in" in proc.stderr
    assert "(columns: pergunta, resposta, uid)" in proc.stderr
    assert not (data / "teste.parquet").exists()


def test_hub_name_offline_and_not_cached_is_one_line(tmp_path: Path) -> None:
    wf = copy_workflow(tmp_path / "wf")
    (wf / "hub.yaml").write_text(yaml.safe_dump(_config(Path("org-que-nao-existe/dataset-x"))))
    env = offline_env(HF_DATASETS_CACHE=str(tmp_path / "hf-cache"))
    proc = run_snakemake(wf, "--configfile=hub.yaml", "results/data/teste.parquet", env=env)
    assert proc.returncode != 0
    line = next(x for x in proc.stderr.splitlines() if x.startswith("afinar: error:"))
    assert "must already be in the local cache or a local folder (save_to_disk" in line
