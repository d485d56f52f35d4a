"""The comparison ranks experiments on the test metric, breaks ties by training time, and draws the chart."""

from __future__ import annotations

import json
from pathlib import Path

import _report_fixtures as F

from afinar.report import compare


def experiment(
    root: Path,
    teste: Path,
    name: str,
    quality: float,
    runtime: float,
    peak: float,
    gpu: bool = True,
    seed: int = 3,
) -> compare.ExperimentFiles:
    exp = root / "results" / name
    t = F.write_training(exp, runtime=runtime, peak_gpu=peak, gpu=gpu)
    e = F.write_evaluation(exp, teste, quality=quality, seed=seed)
    config = {
        "modelo": {"base": "org/Qwen2.5-0.5B"},
        "lora": {"r": 8},
        "treinamento": {"learning_rate": 2e-4},
    }
    return compare.ExperimentFiles(name, e["metricas"], t["summary"], t["hardware"], t["training"], config)


def test_ranking_on_the_test_metric_with_time_as_tie_break(tmp_path: Path) -> None:
    teste = F.write_data(tmp_path)["teste"]
    exps = [
        experiment(tmp_path, teste, "weak", 0.3, 60, 4.0),
        experiment(tmp_path, teste, "strong-slow", 0.95, 300, 9.0),
        experiment(tmp_path, teste, "strong-fast", 0.95, 100, 9.5),  # same seed and quality: same metrics
    ]
    md, png = tmp_path / "results" / "comparacao.md", tmp_path / "results" / "comparacao.png"
    order = compare.write_comparison(exps, md, png)
    assert order == ["strong-fast", "strong-slow", "weak"]
    text = md.read_text()
    assert "ranked on **Fields micro-F1**" in text and "Best: **strong-fast**" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "](" in line]
    assert [r.split("|")[2].strip() for r in rows] == [
        "[strong-fast](strong-fast/relatorio.md)",
        "[strong-slow](strong-slow/relatorio.md)",
        "[weak](weak/relatorio.md)",
    ]
    assert "| 1m 40s | 9.50 |" in rows[0] and "| 5m 00s | 9.00 |" in rows[1]
    micro = json.loads(exps[2].metricas.read_text())["modelo"]["campos_micro_f1"]
    assert f"{micro:.3f}" in rows[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_ranking_metric_is_one_every_experiment_has(tmp_path: Path) -> None:
    teste = F.write_data(tmp_path)["teste"]
    a = compare.collect(experiment(tmp_path, teste, "json", 0.9, 60, 4.0))
    b = compare.collect(experiment(tmp_path, teste, "cpu-text", 0.5, 60, 4.0, gpu=False))
    for key in ("campos_micro_f1", "campos_macro_f1", "json_valido"):
        b.metrics.pop(key)
    assert compare.ranking_metric([a, b]) == "rouge_l_f1"
    assert b.peak_gpu_gb is None and b.peak_ram_gb == 3.2  # CPU run: process RAM instead of GPU memory
    assert [r.name for r in compare.rank([b, a], "rouge_l_f1")] == ["json", "cpu-text"]
