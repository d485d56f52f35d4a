"""The bundled demo, end to end, with the real snakemake: data → train → predict → evaluate → charts → report.

One session-scoped run (a few minutes of CPU) feeds every assertion below, then the incremental-rerun
tests ask snakemake (dry runs) what it would redo after each kind of change.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import copy_workflow, run_snakemake
from tests.workflow.smk import planned_jobs, reasons

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wf = copy_workflow(tmp_path_factory.mktemp("demo") / "wf")
    proc = run_snakemake(wf)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return wf


def _exp(wf: Path) -> str:
    return "demo"


def test_splits_are_disjoint_and_private(demo: Path) -> None:
    data = demo / "results" / "data"
    ids = {}
    for split in ("treino", "validacao", "teste"):
        path = data / f"{split}.parquet"
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        frame = pd.read_parquet(path)
        ids[split] = set(frame["id"])
        roles = [m["role"] for m in frame["messages"].iloc[0]]
        assert roles == ["user", "assistant"]
    assert not ids["treino"] & ids["teste"] and not ids["treino"] & ids["validacao"]
    assert all(isinstance(i, str) for i in ids["teste"])
    assert "001" in set().union(*ids.values())  # zero-padded ids stay strings


def test_training_wrote_adapter_and_metrics(demo: Path) -> None:
    exp = demo / "results" / _exp(demo)
    assert (exp / "adapter" / "adapter_config.json").exists()
    assert (exp / "adapter" / "adapter_model.safetensors").exists()
    rows = [json.loads(x) for x in (exp / "treinamento" / "training_metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows if r.get("event") == "log" and "train_loss" in r]
    assert len(losses) >= 5 and losses[-1] < losses[0]
    assert (exp / "treinamento" / "hardware_metrics.jsonl").stat().st_size > 0
    summary = json.loads((exp / "metrics_summary.json").read_text())
    assert summary["final_eval"]["eval_loss"] > 0, "final evaluation must be saved (seed bug B11)"
    # the allocator settings reached the train job before torch started (torch reads them only then)
    train_log = (demo / "results" / "logs" / "train" / f"{_exp(demo)}.log").read_text()
    assert "CUDA allocator PYTORCH_" in train_log and "torch had already started" not in train_log


def test_predictions_and_metrics(demo: Path) -> None:
    exp = demo / "results" / _exp(demo)
    preds = [json.loads(x) for x in (exp / "predicoes" / "teste.jsonl").read_text().splitlines()]
    n_test = len(pd.read_parquet(demo / "results" / "data" / "teste.parquet"))
    assert len(preds) == n_test
    assert {"id", "prompt", "esperado", "gerado", "tokens_prompt", "tokens_saida", "segundos"} <= set(
        preds[0]
    )
    metrics = json.loads((exp / "avaliacao" / "metricas.json").read_text())
    assert 0.0 <= metrics["modelo"]["rouge_l_f1"] <= 1.0


def test_report_and_charts(demo: Path) -> None:
    exp = demo / "results" / _exp(demo)
    charts = sorted(p.name for p in (exp / "treinamento").glob("grafico_*.png"))
    assert "grafico_loss.png" in charts
    report = (exp / "relatorio.md").read_text()
    for chart in charts:
        assert chart in report


def test_snakemake_report_html(demo: Path) -> None:
    proc = run_snakemake(demo, "--report", "results/report.html")
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (demo / "results" / "report.html").read_text(errors="replace")
    assert "grafico_loss.png" in html
    # issue 13 item 11: the prediction memory chart and the report itself (as HTML, which it can show)
    assert "memoria_predicao.png" in html and "relatorio.html" in html


def test_nothing_to_do_after_a_complete_run(demo: Path) -> None:
    proc = run_snakemake(demo, "-n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert planned_jobs(proc.stdout + proc.stderr) == {}


def _edited_config(demo: Path, name: str, edit) -> str:
    cfg = yaml.safe_load((demo / "config" / "config.yaml").read_text())
    edit(cfg)
    path = demo / "config" / name
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False))
    return str(path.relative_to(demo))


def test_rerun_after_lora_change_skips_data_stages(demo: Path) -> None:
    cfg = _edited_config(demo, "lora.yaml", lambda c: c.setdefault("lora", {}).update(r=4))
    proc = run_snakemake(demo, "-n", "--configfile", cfg)
    out = proc.stdout + proc.stderr
    jobs = planned_jobs(out)
    assert jobs.get("train") == 1 and "predict" in jobs and "report" in jobs, out[-3000:]
    assert not {"pair", "decrypt", "split", "demo_model"} & set(jobs)
    assert "params have changed" in reasons(out)


def test_rerun_after_raw_file_edit_starts_at_pair(demo: Path) -> None:
    # Snakemake compares checksums of small inputs, so the content must change (a bare touch is not enough).
    raw = sorted((demo / "resources" / "example" / "saidas").glob("*.txt"))[0]
    original = raw.read_bytes()
    try:
        raw.write_bytes(original.replace(b"}", b" }", 1))
        proc = run_snakemake(demo, "-n")
        jobs = planned_jobs(proc.stdout + proc.stderr)
        assert {"pair", "split", "train"} <= set(jobs), proc.stdout[-3000:]
        assert "updated input files" in reasons(proc.stdout)
    finally:
        raw.write_bytes(original)


def test_rerun_after_new_experiment_runs_only_it_and_the_comparison(demo: Path) -> None:
    def add_experiment(c: dict) -> None:
        c["experimentos"] = {"demo": {}, "demo_r4": {"lora": {"r": 4}}}

    cfg = _edited_config(demo, "sweep.yaml", add_experiment)
    proc = run_snakemake(demo, "-n", "--configfile", cfg)
    out = proc.stdout + proc.stderr
    jobs = planned_jobs(out)
    assert jobs.get("train") == 1 and jobs.get("compare") == 1, out[-3000:]
    assert not {"pair", "decrypt", "split"} & set(jobs)


def test_rerun_after_report_template_change_runs_only_the_report(demo: Path) -> None:
    template = demo / "scripts" / "afinar" / "report" / "templates" / "relatorio.md.j2"
    backup = template.read_bytes()
    try:
        template.write_text(template.read_text() + "\n<!-- edited -->\n")
        proc = run_snakemake(demo, "-n")
        jobs = planned_jobs(proc.stdout + proc.stderr)
        assert set(jobs) - {"all"} == {"report"}, proc.stdout[-3000:]
    finally:
        template.write_bytes(backup)
        shutil.copystat(demo / "scripts" / "afinar" / "__init__.py", template)


def test_prediction_batch_size_never_reruns_anything(demo: Path) -> None:
    """`predicao.batch_size` changes speed, not results: neither a file edit nor --config plans a job."""
    cfg = _edited_config(demo, "batch.yaml", lambda c: c["predicao"].update(batch_size=3))
    for args in (("--configfile", cfg), ("--config", "predicao={batch_size: auto}")):
        proc = run_snakemake(demo, "-n", *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert planned_jobs(proc.stdout + proc.stderr) == {}, (args, proc.stdout[-3000:])


def test_retraining_never_reruns_the_base_predictions(demo: Path) -> None:
    cfg = _edited_config(demo, "lora_r4.yaml", lambda c: c.setdefault("lora", {}).update(r=4))
    proc = run_snakemake(demo, "-n", "--configfile", cfg)
    jobs = planned_jobs(proc.stdout + proc.stderr)
    assert {"train", "predict", "evaluate"} <= set(jobs), proc.stdout[-3000:]
    assert "predict_base" not in jobs


def test_base_and_tuned_predictions_share_one_model_load(demo: Path) -> None:
    """predict (higher priority) made the base predictions with the model it had loaded; predict_base copied
    them instead of loading the model again, and they are the base model's, not the adapter's."""
    exp = _exp(demo)
    predict_log = (demo / "results" / "logs" / "predict" / f"{exp}.log").read_text()
    base_log = (demo / "results" / "logs" / "predict_base" / f"{exp}.log").read_text()
    assert "predict (base model, for predict_base)" in predict_log and "tokens/s" in predict_log
    assert "reused the base-model predictions" in base_log and "loaded the" not in base_log
    tuned = (demo / "results" / exp / "predicoes" / "teste.jsonl").read_text().splitlines()
    base = (demo / "results" / exp / "predicoes" / "teste_base.jsonl").read_text().splitlines()
    assert len(tuned) == len(base) and tuned != base
