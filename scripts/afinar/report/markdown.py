"""The per-experiment Markdown report (``results/{exp}/relatorio.md``), rendered from a Jinja2 template.

The original report printed a text dump as "YAML", token statistics that were always zero (bug B11)
and no evaluation at all. This one answers "is my fine-tuned model better, and by how much?": the
configuration really used (every default filled in), real token counts, the hardware the training ran
on, training results, the test metrics next to the base model's, the charts, and a few examples.

Examples show real text only when the source was not encrypted (``misc.env_chave_criptografia`` empty)
or ``relatorio.mostrar_exemplos: true``; otherwise only ids, lengths and scores, so a report can be
shared without leaking protected text. A report that does show text of an encrypted source is written
with mode 0600, like the decrypted splits.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from afinar.io import atomic_write_text
from afinar.report.charts import CHART_NAMES, peak_gpu_gb, read_json_lenient, read_jsonl_lenient

log = logging.getLogger("afinar.report.markdown")

TEMPLATES = Path(__file__).parent / "templates"

METRIC_LABELS: dict[str, str] = {
    "exact_match": "Exact match",
    "rouge_l_f1": "ROUGE-L F1",
    "token_f1": "Token F1",
    "json_valido": "Valid JSON",
    "campos_micro_f1": "Fields micro-F1",
    "campos_macro_f1": "Fields macro-F1",
}
"""Headline test metrics (0 to 1, higher is better), in the order the report and the comparison list them."""

DETAIL_LABELS: dict[str, str] = {
    "rouge_l_precision": "ROUGE-L precision",
    "rouge_l_recall": "ROUGE-L recall",
    "json_exact_match": "JSON exact match (parsed objects equal)",
    "campos_micro_precision": "Fields micro-precision",
    "campos_micro_recall": "Fields micro-recall",
    "campos_macro_precision": "Fields macro-precision",
    "campos_macro_recall": "Fields macro-recall",
}
"""The other quality scores of metricas.json (0 to 1, with a gain over the base model)."""

GENERATION_LABELS: dict[str, str] = {
    "n": "records predicted",
    "vazios": "empty answers",
    "truncados": "prompts cut to fit max_seq_length",
    "limite_atingido": "answers that hit max_new_tokens",
    "tokens_prompt_medio": "prompt tokens (mean)",
    "tokens_saida_medio": "generated tokens (mean)",
    "segundos_total": "generation time (s)",
    "tokens_por_segundo": "generated tokens / second",
}
"""Counts and speed of the generation: not scores, so they get their own table and no "gain"."""

CHART_TITLES: dict[str, str] = {
    "grafico_loss.png": "Training and validation loss",
    "grafico_learning_rate.png": "Learning rate",
    "grafico_grad_norm.png": "Gradient norm",
    "grafico_hardware.png": "GPU, RAM and CPU during training",
    "grafico_tokens.png": "Length distribution per split",
    "grafico_campos.png": "F1 per JSON field",
}


@dataclass
class ReportInputs:
    """Paths of everything the report reads; ``None`` or a missing file means "not available"."""

    metricas: str | Path | None = None
    predicoes: str | Path | None = None
    por_registro: str | Path | None = None
    training_metrics: str | Path | None = None
    hardware_metrics: str | Path | None = None
    metrics_summary: str | Path | None = None
    pareamento: str | Path | None = None
    divisao: str | Path | None = None
    token_stats: str | Path | None = None
    filtro_tokens: str | Path | None = None
    charts: list[str | Path] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ helpers


def format_duration(seconds: float | None) -> str:
    """``3725`` → ``1h 02m 05s`` (``—`` when unknown)."""
    if seconds is None or not isinstance(seconds, int | float) or math.isnan(seconds):
        return "—"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a Markdown table: fixed decimals for fractions, thousands separators for counts."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 1000:
            return f"{int(value):,}"
        return f"{value:.{digits}f}" if abs(value) >= 10 ** (-digits) or value == 0 else f"{value:.2e}"
    return str(value)


def signed(value: Any, digits: int = 3) -> str:
    """A gain with its sign (``+0.412``), ``—`` when there is no base to compare with."""
    if not isinstance(value, int | float) or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.{digits}f}"


def fence(text: str, info: str = "") -> str:
    """``text`` in a Markdown code fence longer than any backtick run inside it (answers may hold ```)."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{text}\n{ticks}"


def clip(text: str, head: int = 700, tail: int = 200) -> str:
    """Long texts keep their start and end, with the number of characters left out in between."""
    if len(text) <= head + tail + 40:
        return text
    return f"{text[:head]}\n[… {len(text) - head - tail:,} characters omitted …]\n{text[-tail:]}"


def source_is_encrypted(misc: dict) -> bool:
    """The data came through Fernet decryption (a key variable is configured)."""
    return bool(str((misc or {}).get("env_chave_criptografia") or "").strip())


def show_examples(misc: dict, relatorio: dict) -> bool:
    """``relatorio.mostrar_exemplos`` when set, else True only for a source that was not encrypted."""
    choice = (relatorio or {}).get("mostrar_exemplos")
    return (not source_is_encrypted(misc)) if choice is None else bool(choice)


# ------------------------------------------------------------------------------------------ sections


def training_section(events: list[dict], summary: dict) -> dict[str, Any]:
    """Runtime, steps, losses and trainable parameters, from metrics_summary.json and the event log."""
    from afinar.report.charts import event_kind, series

    end: dict[str, Any] = next((e for e in reversed(events) if event_kind(e) == "train_end"), {})
    begin: dict[str, Any] = next((e for e in events if event_kind(e) == "train_begin"), {})
    _, eval_losses = series(events, "eval_loss", kinds=("log", "evaluate"))
    loss_steps, losses = series(events, "train_loss")
    runtime = summary.get("train_runtime", end.get("total_time_seconds"))
    # training.count_parameters writes {treinaveis, total, percentual} (the seed's names)
    info = summary.get("modelo_info") or {}
    trainable = info.get("treinaveis")
    total = info.get("total")
    percent = info.get("percentual")
    if percent is None and trainable and total:
        percent = 100.0 * trainable / total
    last10 = losses[-10:]
    return {
        "available": bool(summary or events),
        "runtime_s": runtime,
        "runtime": format_duration(runtime),
        "steps": summary.get(
            "global_step", end.get("total_steps") or (int(loss_steps[-1]) if loss_steps else None)
        ),
        "epochs": summary.get("epoch", end.get("final_epoch")),
        "planned_steps": begin.get("total_steps"),
        "train_loss_mean": summary.get("train_loss", summary.get("training_loss")),
        "train_loss_final": end.get("final_train_loss_avg", sum(last10) / len(last10) if last10 else None),
        "best_eval_loss": end.get("best_eval_loss", min(eval_losses) if eval_losses else None),
        "final_eval_loss": summary.get("eval_loss", eval_losses[-1] if eval_losses else None),
        "samples_per_second": summary.get("train_samples_per_second"),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": percent,
        "stopped_early": bool(summary.get("parada_antecipada") or summary.get("early_stopped")),
        # per-device batch × accumulation × processes (treinamento.distribuido), as the training logged it
        "batch": summary.get("distribuido") or {},
    }


def hardware_section(samples: list[dict], summary: dict, events: list[dict]) -> dict[str, Any]:
    """What the training job ran on and its peaks, from the hardware samples and the summary.

    The report may be rendered on another machine (a cluster login node), so nothing here describes
    the machine running this code: only what the training job recorded.
    """
    hw: dict[str, Any] = summary["hardware"] if isinstance(summary.get("hardware"), dict) else {}
    begin = next((e for e in events if e.get("event") == "train_begin"), {})

    def first(*keys: str) -> Any:
        for source in (hw, begin, summary, *samples[:1]):
            for key in keys:
                if source.get(key) not in (None, "", []):
                    return source[key]
        return None

    def peak(key: str) -> float | None:
        values = [r[key] for r in samples if isinstance(r.get(key), int | float)]
        return max(values) if values else None

    cpu = [r["cpu_uso_%"] for r in samples if isinstance(r.get("cpu_uso_%"), int | float)]
    gpu_names = first("gpu_nome", "gpu_name", "gpus")
    if isinstance(gpu_names, list):
        gpu_names = ", ".join(
            str(g.get("nome", g.get("name", g)) if isinstance(g, dict) else g) for g in gpu_names
        )
    num_gpus = first("num_gpus")
    peak_gpu = peak_gpu_gb(samples)
    return {
        "available": bool(samples or hw),
        "samples": len(samples),
        "device": "GPU" if (peak_gpu or num_gpus) else "CPU",
        "gpu_name": gpu_names,
        "num_gpus": num_gpus,
        "gpu_total_gb": first("gpu_total_gb"),
        "peak_gpu_gb": peak_gpu,
        "cpu_name": first("cpu_nome", "cpu_name"),
        "cpu_cores": first("cpu_nucleos", "cpu_cores", "cpu_count"),
        "ram_total_gb": first("ram_total_gb"),
        "peak_ram_gb": peak("ram_usada_gb"),
        "peak_process_ram_gb": peak("ram_processo_gb"),
        "mean_cpu_percent": sum(cpu) / len(cpu) if cpu else None,
    }


def metric_label(key: str) -> str:
    """The display name of any key of metricas.json; an unknown key is humanised rather than shown raw."""
    for table in (METRIC_LABELS, DETAIL_LABELS, GENERATION_LABELS):
        if key in table:
            return table[key]
    return key.replace("_", " ").capitalize()


def evaluation_section(metricas: dict) -> dict[str, Any]:
    """Quality rows ``{label, model, base, gain}``, generation rows ``{label, model, base}``, per-field rows.

    Quality scores (0 to 1) and the generation's counts and speed are different kinds of numbers: a
    "gain" of -795 tokens/s or of +2 truncated prompts means nothing, so they are listed apart.
    """
    model = metricas.get("modelo") or {}
    base = metricas.get("base") or None
    gain = metricas.get("ganho") or {}
    numeric = [k for k, v in model.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    quality = [k for k in numeric if k not in GENERATION_LABELS]
    order = (
        [k for k in METRIC_LABELS if k in quality]
        + [k for k in DETAIL_LABELS if k in quality]
        + sorted(k for k in quality if k not in METRIC_LABELS and k not in DETAIL_LABELS)
    )
    rows = []
    for key in order:
        base_value = base.get(key) if base else None
        g = gain.get(key)
        if g is None and isinstance(base_value, int | float):
            g = model[key] - base_value
        rows.append(
            {"key": key, "label": metric_label(key), "model": model[key], "base": base_value, "gain": g}
        )
    generation = [
        {
            "key": key,
            "label": label,
            "model": model.get(key),
            "base": base.get(key) if base else None,
            "digits": 0 if key in ("n", "vazios", "truncados", "limite_atingido") else 2,
        }
        for key, label in GENERATION_LABELS.items()
        if key in model or (base and key in base)
    ]
    fields_base = (base or {}).get("por_campo") or metricas.get("por_campo_base") or {}
    per_field = []
    for name, scores in sorted(
        (metricas.get("por_campo") or {}).items(), key=lambda kv: -(kv[1].get("suporte") or 0)
    ):
        per_field.append({"name": name, **scores, "base_f1": (fields_base.get(name) or {}).get("f1")})
    return {
        "available": bool(model),
        "n": metricas.get("n"),
        "rows": rows,
        "generation": generation,
        "has_base": bool(base),
        "per_field": per_field,
    }


def primary_metric(model_metrics: dict) -> str | None:
    """The metric that ranks experiments: field micro-F1 for JSON tasks, else ROUGE-L F1, token F1, EM."""
    for key in ("campos_micro_f1", "rouge_l_f1", "token_f1", "exact_match"):
        if isinstance(model_metrics.get(key), int | float):
            return key
    return None


def _read_per_record(path: str | Path | None) -> dict[str, dict[str, float]]:
    if not path or not Path(path).exists():
        return {}
    out: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            rid = row.get("id")
            if rid is None:
                continue
            scores = {}
            for key, value in row.items():
                try:
                    scores[key] = float(value)
                except (TypeError, ValueError):
                    continue
            out[str(rid)] = scores
    return out


def pick_examples(predictions: list[dict], per_record: dict[str, dict[str, float]], n: int) -> list[dict]:
    """Up to ``n`` predictions spread over the score range (best, middle, worst) when scores exist.

    Showing only the first records tells little; a best/median/worst spread shows what the model gets
    right and where it fails. Without per-record scores the first ``n`` ids are shown.
    """
    if n <= 0 or not predictions:
        return []
    ordered = sorted(predictions, key=lambda p: str(p.get("id")))
    score_key = next(
        (k for k in ("rouge_l_f1", "token_f1", "exact_match") if any(k in s for s in per_record.values())),
        None,
    )
    if score_key is None:
        return ordered[:n]
    scored = sorted(ordered, key=lambda p: -per_record.get(str(p.get("id")), {}).get(score_key, -1.0))
    if n >= len(scored):
        return scored
    if n == 1:
        return [scored[0]]
    picks = [round(i * (len(scored) - 1) / (n - 1)) for i in range(n)]
    return [scored[i] for i in dict.fromkeys(picks)]


def examples_section(
    predictions: list[dict], per_record: dict[str, dict[str, float]], n: int, with_text: bool
) -> list[dict]:
    """The chosen examples with lengths and scores, and their text only when ``with_text``."""
    out = []
    for pred in pick_examples(predictions, per_record, n):
        rid = str(pred.get("id"))
        scores = {
            METRIC_LABELS.get(k, k): v for k, v in per_record.get(rid, {}).items() if k in METRIC_LABELS
        }
        example = {
            "id": rid,
            "scores": scores,
            "chars": {k: len(str(pred.get(k) or "")) for k in ("prompt", "esperado", "gerado")},
            "tokens_prompt": pred.get("tokens_prompt"),
            "tokens_saida": pred.get("tokens_saida"),
            "segundos": pred.get("segundos"),
        }
        if with_text:
            example.update({k: clip(str(pred.get(k) or "")) for k in ("prompt", "esperado", "gerado")})
        out.append(example)
    return out


def config_yaml(exp_config: dict, data_config: dict | None = None) -> str:
    """The configuration that produced this experiment, as YAML (data sections first, then the model)."""
    merged: dict[str, Any] = dict(data_config or {})
    merged.update(exp_config)
    return yaml.safe_dump(merged, sort_keys=False, allow_unicode=True, default_flow_style=False).rstrip()


# ------------------------------------------------------------------------------------------ rendering


def build_context(
    exp: str,
    exp_config: dict,
    inputs: ReportInputs,
    report_path: str | Path,
    misc: dict | None = None,
    relatorio: dict | None = None,
    data_config: dict | None = None,
) -> dict[str, Any]:
    """Everything the template shows, computed from the input files (missing files → sections say so)."""
    misc, relatorio = misc or {}, relatorio or {}
    events = read_jsonl_lenient(inputs.training_metrics)
    samples = read_jsonl_lenient(inputs.hardware_metrics)
    summary = read_json_lenient(inputs.metrics_summary)
    metricas = read_json_lenient(inputs.metricas)
    predictions = read_jsonl_lenient(inputs.predicoes)
    with_text = show_examples(misc, relatorio)
    report_dir = Path(report_path).parent
    charts = []
    for chart in inputs.charts:
        chart = Path(chart)
        charts.append(
            {
                "title": CHART_TITLES.get(chart.name, chart.stem),
                "name": chart.name,
                "link": Path(chart).resolve().relative_to(report_dir.resolve()).as_posix()
                if chart.resolve().is_relative_to(report_dir.resolve())
                else chart.as_posix(),
            }
        )
    evaluation = evaluation_section(metricas)
    primary = primary_metric(metricas.get("modelo") or {})
    headline = next((r for r in evaluation["rows"] if r["key"] == primary), None)
    pairing = read_json_lenient(inputs.pareamento)
    return {
        "exp": exp,
        "generated": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "base_model": (exp_config.get("modelo") or {}).get("base", ""),
        "lora": exp_config.get("lora") or {},
        "config_yaml": config_yaml(exp_config, data_config),
        "encrypted": source_is_encrypted(misc),
        "with_text": with_text,
        "pairing": pairing or None,
        "pairing_counts": {
            "pairs": pairing.get("n_pares"),
            "input_unpaired": len(pairing.get("entrada_sem_par") or []),
            "answer_unpaired": len(pairing.get("predicao_sem_par") or []),
            "invalid": len(pairing.get("invalidos") or []),
            "latin1": len(pairing.get("latin1") or []),
        }
        if pairing
        else None,
        "division": read_json_lenient(inputs.divisao) or None,
        "tokens": read_json_lenient(inputs.token_stats) or None,
        "token_filter": token_filter_section(read_json_lenient(inputs.filtro_tokens)),
        "training": training_section(events, summary),
        "hardware": hardware_section(samples, summary, events),
        "evaluation": evaluation,
        "headline": headline,
        "charts": charts,
        "n_predictions": len(predictions),
        "examples": examples_section(
            predictions,
            _read_per_record(inputs.por_registro),
            int(relatorio.get("n_exemplos", 3) or 0),
            with_text,
        ),
    }


def token_filter_section(report: dict[str, Any], n_ids: int = 10) -> dict[str, Any] | None:
    """The filter_tokens decisions per split, with the first ``n_ids`` dropped/truncated ids."""
    if not report or not isinstance(report.get("splits"), dict):
        return None
    rows = []
    for split, label in (("treino", "train"), ("validacao", "validation"), ("teste", "test")):
        d = report["splits"].get(split)
        if not isinstance(d, dict):
            continue
        dropped, cut = list(d.get("descartados") or []), list(d.get("truncados") or [])
        rows.append(
            {
                "split": split,
                "label": label,
                "total": d.get("total"),
                "mantidos": d.get("mantidos"),
                "n_descartados": len(dropped),
                "n_truncados": len(cut),
                "descartados": dropped[:n_ids],
                "truncados": cut[:n_ids],
                "aplicado": split in (report.get("aplicado_em") or []),
            }
        )
    return {
        "max_tokens": report.get("max_tokens"),
        "acao": report.get("acao"),
        "rows": rows,
        "n_ids": n_ids,
    }


def environment() -> Environment:
    """The Jinja2 environment of the report templates, with the number filters they use."""
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        undefined=StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update({"fmt": fmt, "signed": signed, "fence": fence, "duration": format_duration})
    return env


def render_report(context: dict[str, Any], template: str = "relatorio.md.j2") -> str:
    """Render the report Markdown from a context made by :func:`build_context`."""
    text = environment().get_template(template).render(**context)
    return re.sub(r"\n{3,}", "\n\n", text)


def write_report(
    out_path: str | Path,
    exp: str,
    exp_config: dict,
    inputs: ReportInputs,
    misc: dict | None = None,
    relatorio: dict | None = None,
    data_config: dict | None = None,
    html_path: str | Path | None = None,
) -> Path:
    """Build, render and atomically write ``relatorio.md`` (and its HTML page, see :mod:`afinar.report.html`).

    Both are 0600 when they show text of an encrypted source.
    """
    context = build_context(exp, exp_config, inputs, out_path, misc, relatorio, data_config)
    secret = context["encrypted"] and context["with_text"]
    text = render_report(context)
    atomic_write_text(out_path, text, mode=0o600 if secret else 0o644)
    if html_path is not None:
        from afinar.report.html import markdown_to_html

        page = markdown_to_html(text, Path(out_path).parent, f"Fine-tuning report: {exp}")
        atomic_write_text(html_path, page, mode=0o600 if secret else 0o644)
    log.info(
        "report written to %s (%d examples, text %s)",
        out_path,
        len(context["examples"]),
        "shown" if context["with_text"] else "hidden",
    )
    return Path(out_path)


__all__ = ["CHART_NAMES", "ReportInputs", "build_context", "render_report", "write_report", "primary_metric"]
