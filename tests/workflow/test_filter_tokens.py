"""The filter_tokens rule in the demo's DAG: train depends on it, and it reruns exactly when it should."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_workflow, run_snakemake
from tests.workflow.smk import planned_jobs, reasons

pytestmark = pytest.mark.workflow

FILTRO = "results/data/filtro_tokens/demo.json"


def test_train_depends_on_filter_tokens_and_only_it_reruns_on_edit(tmp_path: Path) -> None:
    wf = copy_workflow(tmp_path / "wf")
    proc = run_snakemake(wf, "--dry-run", "results/demo/adapter")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    assert jobs.get("filter_tokens") == 1 and jobs.get("train") == 1 and jobs.get("split") == 1

    proc = run_snakemake(wf, FILTRO)  # demo model + data stages + the filter, no training
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((wf / FILTRO).read_text())
    assert report["max_tokens"] == 256 and report["acao"] == "descartar"  # null max_tokens = max_seq_length
    assert set(report["splits"]) == {"treino", "validacao", "teste"}
    assert report["splits"]["treino"]["total"] > 200

    cfg = yaml.safe_load((wf / "config" / "config.yaml").read_text())
    cfg["treinamento"]["filtro_tokens"] = {"max_tokens": 128, "acao": "truncar"}
    (wf / "edited.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(wf, "--configfile=edited.yaml", "--dry-run", "results/demo/adapter")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    assert jobs.get("filter_tokens") == 1 and jobs.get("train") == 1
    assert "split" not in jobs and "pair" not in jobs and "demo_model" not in jobs
    assert "params" in reasons(proc.stdout)  # the filter reruns because its config changed

    proc = run_snakemake(wf, "--configfile=edited.yaml", FILTRO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((wf / FILTRO).read_text())
    assert report["max_tokens"] == 128 and report["acao"] == "truncar"
    split = report["splits"]["treino"]
    assert split["mantidos"] == split["total"] - len(split["descartados"])
    assert split["truncados"] or split["descartados"]  # the demo's prompts are longer than 128 tokens

    # max_tokens above the model's context (max_position_embeddings) is one line at rule time
    cfg["treinamento"]["max_seq_length"] = 8192
    cfg["treinamento"]["filtro_tokens"] = {"max_tokens": 8192}
    (wf / "big.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(wf, "--configfile=big.yaml", FILTRO)
    assert proc.returncode != 0
    assert "afinar: error: treinamento.filtro_tokens.max_tokens: 8192 is above the context of" in proc.stderr
    assert not (wf / FILTRO).exists()
