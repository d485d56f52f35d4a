"""Where everything lives: the split names and the ``results/`` layout, in one place.

Why: the split names and the paths under ``results/`` were spelled in the rules, the training paths,
the prediction CLI and the command line separately. Rules (rules/common.smk) and code read them from
here; tests/unit/test_layout.py checks that every rule output under ``results/`` is one of these paths.
"""

from __future__ import annotations

from pathlib import Path

RESULTS = "results"
DATA = f"{RESULTS}/data"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"

#: the three splits, in this order everywhere (file names results/data/<split>.parquet)
SPLITS: tuple[str, str, str] = ("treino", "validacao", "teste")

#: names directly under results/ that belong to the workflow: no experiment may take them
RESERVED: frozenset[str] = frozenset(
    {"data", "logs", "benchmarks", "comparacao.md", "comparacao.png", "report.html"}
)

#: the comparison of all experiments (only with several)
COMPARISON = (f"{RESULTS}/comparacao.md", f"{RESULTS}/comparacao.png")

#: the tiny demo model a rule builds (a base model path under results/ is an output of this workflow)
DEMO_MODEL = f"{RESULTS}/demo/modelo-base"

#: per-experiment paths, relative to results/<exp>/
ADAPTER = "adapter"
CHECKPOINTS = "checkpoints"
METRICS_SUMMARY = "metrics_summary.json"
METRICS_STREAM = "metrics_stream.jsonl"
TRAINING_METRICS = "treinamento/training_metrics.jsonl"
HARDWARE_METRICS = "treinamento/hardware_metrics.jsonl"
PREDICTIONS = "predicoes/teste.jsonl"
BASE_PREDICTIONS = "predicoes/teste_base.jsonl"
METRICS = "avaliacao/metricas.json"
REPORT = "relatorio.md"


def split_file(split: str, results: str | Path = RESULTS) -> Path:
    """``results/data/<split>.parquet``."""
    return Path(results) / "data" / f"{split}.parquet"


def token_filter_file(exp: str, results: str | Path = RESULTS) -> Path:
    """The filter_tokens rule's decisions for one experiment (each base model has its own tokenizer)."""
    return Path(results) / "data" / "filtro_tokens" / f"{exp}.json"


def exp_dir(exp: str, results: str | Path = RESULTS) -> Path:
    """``results/<exp>/``: everything one experiment writes."""
    return Path(results) / exp


def exp_path(exp: str, relative: str, results: str | Path = RESULTS) -> Path:
    """One of the per-experiment paths above, e.g. ``exp_path("demo", ADAPTER)``."""
    return exp_dir(exp, results) / relative


def exp_pattern(relative: str) -> str:
    """The same path as a Snakemake pattern with the ``{exp}`` wildcard (rules/common.smk)."""
    return f"{RESULTS}/{{exp}}/{relative}"


def under_results(path: str) -> bool:
    """Whether a configured path (e.g. ``modelo.base``) is an output of this workflow."""
    return Path(path).parts[:1] == (RESULTS,)
