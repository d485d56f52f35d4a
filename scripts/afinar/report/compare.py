"""Ranking of the experiments of one config (``results/comparacao.md`` + ``results/comparacao.png``).

A sweep (``experimentos:``) trains several adapters on one split; this module answers "which one is
best, and what did it cost?" with one table and one chart: the test metrics, training time and peak
memory of every experiment, ranked on the primary test metric (field micro-F1 for JSON tasks, else
ROUGE-L F1), ties broken by the shorter training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afinar.io import atomic_write_text
from afinar.report.charts import (
    BASE_COLOR,
    FINETUNED_COLOR,
    RC,
    _figure,
    _no_data,
    _save,
    event_kind,
    peak_gpu_gb,
    read_json_lenient,
    read_jsonl_lenient,
)
from afinar.report.markdown import METRIC_LABELS, environment, fmt, format_duration, primary_metric, signed

log = logging.getLogger("afinar.report.compare")


@dataclass
class ExperimentFiles:
    """The files of one experiment the comparison reads (missing ones leave blanks in the table)."""

    name: str
    metricas: str | Path
    metrics_summary: str | Path | None = None
    hardware_metrics: str | Path | None = None
    training_metrics: str | Path | None = None
    config: dict = field(default_factory=dict)


@dataclass
class ExperimentResult:
    """One row of the comparison."""

    name: str
    metrics: dict[str, float]
    base_metrics: dict[str, float] | None
    train_seconds: float | None
    peak_gpu_gb: float | None
    peak_ram_gb: float | None
    trainable_params: int | None
    config: dict


def collect(files: ExperimentFiles) -> ExperimentResult:
    """Read one experiment's metrics, training time and memory peaks."""
    metricas = read_json_lenient(files.metricas)
    summary = read_json_lenient(files.metrics_summary)
    samples = read_jsonl_lenient(files.hardware_metrics)
    events = read_jsonl_lenient(files.training_metrics)
    seconds = summary.get("train_runtime")
    if seconds is None:
        end: dict[str, Any] = next((e for e in reversed(events) if event_kind(e) == "train_end"), {})
        seconds = end.get("total_time_seconds")
    ram = [r["ram_processo_gb"] for r in samples if isinstance(r.get("ram_processo_gb"), int | float)]
    if not ram:
        ram = [r["ram_usada_gb"] for r in samples if isinstance(r.get("ram_usada_gb"), int | float)]
    info = summary.get("modelo_info") or {}
    model = {k: v for k, v in (metricas.get("modelo") or {}).items() if isinstance(v, int | float)}
    base = metricas.get("base")
    return ExperimentResult(
        name=files.name,
        metrics=model,
        base_metrics={k: v for k, v in base.items() if isinstance(v, int | float)} if base else None,
        train_seconds=seconds,
        peak_gpu_gb=peak_gpu_gb(samples),
        peak_ram_gb=max(ram) if ram else None,
        trainable_params=info.get("treinaveis"),  # written by training.count_parameters
        config=files.config,
    )


def ranking_metric(results: list[ExperimentResult]) -> str | None:
    """The primary metric that every experiment has (so the ranking compares like with like)."""
    for result in results:
        key = primary_metric(result.metrics)
        if key and all(key in r.metrics for r in results):
            return key
    for key in ("rouge_l_f1", "token_f1", "exact_match"):
        if all(key in r.metrics for r in results):
            return key
    return None


def rank(results: list[ExperimentResult], metric: str | None) -> list[ExperimentResult]:
    """Best first on ``metric``; ties (and experiments without it) by shorter training, then by name."""

    def key(r: ExperimentResult) -> tuple[float, float, str]:
        value = r.metrics.get(metric) if metric else None
        return (-(value if value is not None else float("-inf")), r.train_seconds or float("inf"), r.name)

    return sorted(results, key=key)


def plot_comparison(ranked: list[ExperimentResult], metric: str | None, path: str | Path) -> Path:
    """Three panels sharing the experiment axis: primary metric (with base), training time, peak memory."""
    import matplotlib

    names = [r.name for r in ranked][::-1]  # best at the top
    rows = ranked[::-1]
    ys = list(range(len(rows)))
    with matplotlib.rc_context(RC):
        fig, (ax_m, ax_t, ax_g) = _figure(13, max(3.2, 0.55 * len(rows) + 1.8), 1, 3, sharey=True)
        label = METRIC_LABELS.get(metric or "", metric or "metric")
        if metric:
            values = [r.metrics.get(metric, 0.0) for r in rows]
            bars = ax_m.barh(ys, values, color=FINETUNED_COLOR, height=0.6, label="fine-tuned")
            ax_m.bar_label(bars, labels=[f"{v:.3f}" for v in values], padding=3, fontsize=8)
            base = [
                (y, r.base_metrics.get(metric))
                for y, r in zip(ys, rows, strict=True)
                if r.base_metrics and isinstance(r.base_metrics.get(metric), int | float)
            ]
            if base:
                ax_m.scatter(
                    [b for _, b in base],
                    [y for y, _ in base],
                    marker="|",
                    s=400,
                    linewidths=2.5,
                    color="#444444",
                    zorder=4,
                    label="base model",
                )
            ax_m.set_xlim(0, 1.15)
            ax_m.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, fontsize=8, frameon=False)
        else:
            _no_data(ax_m, "No common test metric.")
        ax_m.set_xlabel(f"{label} on the test split (0–1)")
        ax_m.set_title(f"{label} (higher is better)", fontsize=11)
        ax_m.set_yticks(ys, names)

        minutes = [(r.train_seconds or 0) / 60 for r in rows]
        bars = ax_t.barh(ys, minutes, color="#ff7f0e", height=0.6)
        ax_t.bar_label(bars, labels=[format_duration(r.train_seconds) for r in rows], padding=3, fontsize=8)
        ax_t.set_xlim(0, max(minutes + [0.1]) * 1.3)
        ax_t.set_xlabel("training time (minutes)")
        ax_t.set_title("Training time (lower is better)", fontsize=11)

        gpu = [r.peak_gpu_gb for r in rows]
        if any(v is not None for v in gpu):
            vals = [v or 0.0 for v in gpu]
            bars = ax_g.barh(ys, vals, color="#9467bd", height=0.6)
            ax_g.bar_label(
                bars, labels=[f"{v:.2f} GB" if v is not None else "n/a" for v in gpu], padding=3, fontsize=8
            )
            ax_g.set_xlim(0, max(vals) * 1.35 or 1)
            ax_g.set_xlabel("peak GPU memory, reserved (GB)")
            ax_g.set_title("Peak GPU memory (lower is better)", fontsize=11)
        else:
            ram = [r.peak_ram_gb or 0.0 for r in rows]
            bars = ax_g.barh(ys, ram, color=BASE_COLOR, height=0.6)
            ax_g.bar_label(bars, labels=[f"{v:.2f} GB" for v in ram], padding=3, fontsize=8)
            ax_g.set_xlim(0, max(ram + [0.1]) * 1.35)
            ax_g.set_xlabel("peak RAM of the training process (GB)")
            ax_g.set_title("Peak RAM — CPU runs (lower is better)", fontsize=11)
        for ax in (ax_m, ax_t, ax_g):
            ax.grid(axis="y", visible=False)
        fig.suptitle("Experiments ranked on the test split (best at the top)", fontsize=13, fontweight="bold")
        return _save(fig, path)


def _describe(config: dict) -> str:
    """A short description of what differs between experiments: base model and the main knobs."""
    modelo, lora, treino = (
        config.get("modelo") or {},
        config.get("lora") or {},
        config.get("treinamento") or {},
    )
    parts = []
    if modelo.get("base"):
        parts.append(f"`{Path(str(modelo['base'])).name}`")
    if "r" in lora:
        parts.append(f"r={lora['r']}" if lora["r"] else "full FT")
    for key, short in (("learning_rate", "lr"), ("epochs", "epochs"), ("nbits", "bits")):
        if treino.get(key) not in (None, ""):
            parts.append(f"{short}={treino[key]}")
    return ", ".join(parts)


def write_comparison(
    experiments: list[ExperimentFiles], md_path: str | Path, png_path: str | Path
) -> list[str]:
    """Write comparacao.md and comparacao.png; returns the experiment names, best first."""
    results = [collect(files) for files in experiments]
    metric = ranking_metric(results)
    ranked = rank(results, metric)
    columns = [k for k in METRIC_LABELS if any(k in r.metrics for r in ranked)]
    rows = []
    for position, r in enumerate(ranked, 1):
        gain = None
        if metric and r.base_metrics and metric in r.base_metrics and metric in r.metrics:
            gain = r.metrics[metric] - r.base_metrics[metric]
        rows.append(
            {
                "rank": position,
                "name": r.name,
                "describe": _describe(r.config),
                "metrics": [fmt(r.metrics.get(k)) for k in columns],
                "gain": signed(gain),
                "time": format_duration(r.train_seconds),
                "gpu": fmt(r.peak_gpu_gb, 2),
                "ram": fmt(r.peak_ram_gb, 2),
                "params": fmt(r.trainable_params),
            }
        )
    plot_comparison(ranked, metric, png_path)
    text = (
        environment()
        .get_template("comparacao.md.j2")
        .render(
            metric_label=METRIC_LABELS.get(metric or "", metric or "—"),
            columns=[METRIC_LABELS[k] for k in columns],
            rows=rows,
            chart=Path(png_path).name,
            n=len(ranked),
            best=rows[0] if rows else None,
        )
    )
    atomic_write_text(md_path, text, mode=0o644)
    log.info("comparison of %d experiments written to %s (ranked on %s)", len(ranked), md_path, metric)
    return [r.name for r in ranked]


def describe_result(result: ExperimentResult) -> dict[str, Any]:
    """A plain dict of one row (for the CLI or logs)."""
    return {
        "name": result.name,
        **result.metrics,
        "train_seconds": result.train_seconds,
        "peak_gpu_gb": result.peak_gpu_gb,
        "peak_ram_gb": result.peak_ram_gb,
    }
