"""afinar.layout: the paths the code reads are the paths the rules write."""

from __future__ import annotations

from pathlib import Path

from afinar import layout
from afinar.train.training import TrainPaths

RULES = Path(__file__).resolve().parents[2] / "rules"


def rule_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(RULES.glob("*.smk")))


def test_every_per_experiment_path_is_a_rule_output():
    text = rule_text()
    for name in (
        "CHECKPOINTS",
        "METRICS_SUMMARY",
        "METRICS_STREAM",
        "TRAINING_METRICS",
        "HARDWARE_METRICS",
        "PREDICTIONS",
        "BASE_PREDICTIONS",
        "METRICS",
        "REPORT",
    ):
        pattern = layout.exp_pattern(getattr(layout, name))
        assert f'"{pattern}"' in text, f"layout.{name} ({pattern}) is not spelled that way in rules/*.smk"
    assert 'directory("results/{exp}/adapter")' in text
    assert 'f"{DATA}/filtro_tokens/{{exp}}.json"' in text and layout.DATA == "results/data"


def test_split_files_and_train_paths_follow_the_layout(tmp_path):
    paths = TrainPaths.for_experiment(tmp_path, "demo")
    assert paths.train == tmp_path / "data" / "treino.parquet" == layout.split_file("treino", tmp_path)
    assert paths.adapter == tmp_path / "demo" / "adapter"
    assert paths.token_filter == layout.token_filter_file("demo", tmp_path)
    text = (RULES / "data.smk").read_text(encoding="utf-8")
    for split in layout.SPLITS:
        assert f'{split}=f"{{DATA}}/{split}.parquet"' in text


def test_results_own_folders_are_reserved():
    for folder in ("data", "logs", "benchmarks"):
        assert folder in layout.RESERVED and getattr(layout, folder.upper()) == f"results/{folder}"
    assert {Path(p).name for p in layout.COMPARISON} <= layout.RESERVED
    assert layout.under_results(layout.DEMO_MODEL) and not layout.under_results("org/model")
