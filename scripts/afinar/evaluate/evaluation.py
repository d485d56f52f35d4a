"""Score predictions against expected answers: ``avaliacao/metricas.json`` and ``por_registro.csv``.

It answers "is the fine-tuned model better than the base model, and by how much?": every metric is
computed for the fine-tuned predictions (``teste.jsonl``) and, when they exist, for the base model's
(``teste_base.jsonl``) on the same records, and ``ganho`` is the difference. A generation that is
not valid JSON when JSON is expected is a wrong answer (counted in ``json_valido``, every expected
field a miss), never a crash.

``metricas.json``::

    {"n": 40, "formato_saida": "json", "campos": [...],
     "modelo": {<metric>: value, ...}, "base": {...} | null, "ganho": {<metric>: modelo - base} | {},
     "por_campo": {<field>: {"precision", "recall", "f1", "suporte"}}}   # fine-tuned model
    (base["por_campo"] holds the base model's per-field scores)

Metrics (all in [0, 1] unless a count): exact_match, rouge_l_precision/recall/f1, token_f1; for JSON
tasks also json_valido, json_exact_match, campos_micro_precision/recall/f1 and
campos_macro_precision/recall/f1; plus vazios (empty generations), truncados (prompts cut),
limite_atingido (outputs that hit max_new_tokens), tokens_prompt_medio, tokens_saida_medio,
segundos_total, tokens_por_segundo. ``por_registro.csv`` holds the scores per record and no text, so
it can be shared even when the data is confidential.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afinar.errors import AfinarError
from afinar.evaluate.metrics import (
    FieldCounts,
    exact_match,
    field_counts,
    json_equal,
    micro_macro,
    parse_json,
    prf,
    rouge_l,
    token_f1,
)

log = logging.getLogger("afinar.evaluate.evaluation")

#: metrics where higher is better; ``ganho`` is reported for these.
QUALITY_METRICS = (
    "exact_match",
    "rouge_l_precision",
    "rouge_l_recall",
    "rouge_l_f1",
    "token_f1",
    "json_valido",
    "json_exact_match",
    "campos_micro_precision",
    "campos_micro_recall",
    "campos_micro_f1",
    "campos_macro_precision",
    "campos_macro_recall",
    "campos_macro_f1",
)
REQUIRED_KEYS = ("id", "esperado", "gerado")


@dataclass
class RecordScore:
    """Scores of one prediction (no text: safe to write next to confidential data)."""

    id: str
    exact_match: float
    rouge_l_precision: float
    rouge_l_recall: float
    rouge_l_f1: float
    token_f1: float
    vazio: bool
    truncado: bool
    limite_atingido: bool
    tokens_prompt: int
    tokens_saida: int
    segundos: float
    json_valido: bool | None = None
    json_exact_match: float | None = None
    campos_f1: float | None = None
    fields: dict[str, FieldCounts] = field(default_factory=dict, repr=False)


def score_record(row: dict[str, Any], json_task: bool, campos: Sequence[str] | None = None) -> RecordScore:
    """All metrics for one prediction line."""
    gerado, esperado = str(row.get("gerado") or ""), str(row.get("esperado") or "")
    rl = rouge_l(gerado, esperado)
    score = RecordScore(
        id=str(row["id"]),
        exact_match=exact_match(gerado, esperado),
        rouge_l_precision=rl.precision,
        rouge_l_recall=rl.recall,
        rouge_l_f1=rl.f1,
        token_f1=token_f1(gerado, esperado),
        vazio=not gerado.strip(),
        truncado=bool(row.get("truncado", False)),
        limite_atingido=bool(row.get("limite_atingido", False)),
        tokens_prompt=int(row.get("tokens_prompt") or 0),
        tokens_saida=int(row.get("tokens_saida") or 0),
        segundos=float(row.get("segundos") or 0.0),
    )
    if json_task:
        ok_gen, gen = parse_json(gerado)
        ok_ref, ref = parse_json(esperado)
        score.json_valido = ok_gen
        if ok_ref:
            score.json_exact_match = float(ok_gen and json_equal(gen, ref))
            score.fields = field_counts(gen if ok_gen else None, ref, campos or None)
            pooled = FieldCounts()
            for c in score.fields.values():
                pooled.add(c)
            score.campos_f1 = prf(pooled).f1
        else:
            # the expected answer itself is not JSON (dataset mode allows it): only text metrics apply
            log.warning("record %s: the expected answer is not valid JSON; field scores skip it", score.id)
    return score


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(scores: Sequence[RecordScore], json_task: bool) -> tuple[dict[str, Any], dict[str, dict]]:
    """Aggregate record scores into the ``modelo``/``base`` block and the per-field table."""
    n = len(scores)
    summary: dict[str, Any] = {
        "exact_match": _mean([s.exact_match for s in scores]),
        "rouge_l_precision": _mean([s.rouge_l_precision for s in scores]),
        "rouge_l_recall": _mean([s.rouge_l_recall for s in scores]),
        "rouge_l_f1": _mean([s.rouge_l_f1 for s in scores]),
        "token_f1": _mean([s.token_f1 for s in scores]),
    }
    per_field: dict[str, dict] = {}
    if json_task:
        summary["json_valido"] = _mean([float(bool(s.json_valido)) for s in scores])
        summary["json_exact_match"] = _mean(
            [s.json_exact_match for s in scores if s.json_exact_match is not None]
        )
        totals: dict[str, FieldCounts] = {}
        for s in scores:
            for name, counts in s.fields.items():
                totals.setdefault(name, FieldCounts()).add(counts)
        averages = micro_macro(totals)
        for kind in ("micro", "macro"):
            avg = averages[kind]
            summary[f"campos_{kind}_precision"] = avg.precision if avg else None
            summary[f"campos_{kind}_recall"] = avg.recall if avg else None
            summary[f"campos_{kind}_f1"] = avg.f1 if avg else None
        for name in sorted(totals):
            c = totals[name]
            s_ = prf(c)
            per_field[name] = {
                "precision": s_.precision,
                "recall": s_.recall,
                "f1": s_.f1,
                "suporte": c.support,
                "tp": c.tp,
                "fp": c.fp,
                "fn": c.fn,
            }
    seconds = sum(s.segundos for s in scores)
    out_tokens = sum(s.tokens_saida for s in scores)
    summary.update(
        {
            "vazios": sum(s.vazio for s in scores),
            "truncados": sum(s.truncado for s in scores),
            "limite_atingido": sum(s.limite_atingido for s in scores),
            "tokens_prompt_medio": _mean([s.tokens_prompt for s in scores]),
            "tokens_saida_medio": _mean([s.tokens_saida for s in scores]),
            "segundos_total": seconds,
            "tokens_por_segundo": out_tokens / seconds if seconds > 0 else None,
            "n": n,
        }
    )
    return summary, per_field


def _gain(model: dict[str, Any], base: dict[str, Any]) -> dict[str, float]:
    return {
        k: model[k] - base[k]
        for k in QUALITY_METRICS
        if isinstance(model.get(k), int | float) and isinstance(base.get(k), int | float)
    }


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Read a predictions JSONL, naming the line of any damage (a file edited or written by hand)."""
    import json

    path = Path(path)
    if not path.exists():
        raise AfinarError(f"{path}: predictions not found — run `snakemake {path}`")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise AfinarError(
                f"{path}:{number}: not a JSON line — delete the file and rerun the predict rule"
            ) from None
        missing = [k for k in REQUIRED_KEYS if k not in row]
        if missing:
            raise AfinarError(
                f"{path}:{number}: missing {missing} — delete the file and rerun the predict rule"
            )
        rows.append(row)
    if not rows:
        raise AfinarError(f"{path}: no predictions — delete the file and rerun the predict rule")
    return rows


def evaluate(
    predictions: Sequence[dict[str, Any]],
    base_predictions: Sequence[dict[str, Any]] | None = None,
    formato_saida: str = "texto",
    campos: Sequence[str] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score fine-tuned (and base) predictions: returns ``(metricas, per_record_rows)``."""
    json_task = formato_saida == "json"
    scores = [score_record(r, json_task, campos) for r in predictions]
    model_summary, model_fields = summarize(scores, json_task)
    base_summary = None
    base_scores: dict[str, RecordScore] = {}
    if base_predictions is not None:
        ids, base_ids = [str(r["id"]) for r in predictions], {str(r["id"]) for r in base_predictions}
        if set(ids) != base_ids:
            raise AfinarError(
                "teste_base.jsonl: its records differ from teste.jsonl's "
                f"({len(base_ids ^ set(ids))} ids not in both) — delete both files and rerun the predict rules"
            )
        base_list = [score_record(r, json_task, campos) for r in base_predictions]
        base_scores = {s.id: s for s in base_list}
        base_summary, base_fields = summarize(base_list, json_task)
        if json_task:
            base_summary["por_campo"] = base_fields
    metricas = {
        "n": len(scores),
        "formato_saida": formato_saida,
        "campos": list(campos or []),
        "modelo": model_summary,
        "base": base_summary,
        "ganho": _gain(model_summary, base_summary) if base_summary else {},
        "por_campo": model_fields,
    }
    rows = [_csv_row(s, base_scores.get(s.id), json_task) for s in scores]
    return metricas, rows


def _csv_row(score: RecordScore, base: RecordScore | None, json_task: bool) -> dict[str, Any]:
    keys = ["exact_match", "rouge_l_f1", "token_f1"]
    if json_task:
        keys += ["json_valido", "json_exact_match", "campos_f1"]
    row: dict[str, Any] = {"id": score.id}
    row.update({k: getattr(score, k) for k in keys})
    row.update(
        {
            "vazio": score.vazio,
            "truncado": score.truncado,
            "limite_atingido": score.limite_atingido,
            "tokens_prompt": score.tokens_prompt,
            "tokens_saida": score.tokens_saida,
            "segundos": score.segundos,
        }
    )
    if base is not None:
        row.update({f"base_{k}": getattr(base, k) for k in keys})
        row["base_tokens_saida"] = base.tokens_saida
    return row


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def run_evaluation(
    predictions_path: str | Path,
    base_path: str | Path | None,
    metrics_path: str | Path,
    per_record_path: str | Path,
    formato_saida: str = "texto",
    campos: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The evaluate rule: predictions JSONL(s) → metricas.json + por_registro.csv (both atomic)."""
    from afinar.io import atomic_write_json, atomic_write_text

    predictions = read_predictions(predictions_path)
    base = read_predictions(base_path) if base_path else None
    metricas, rows = evaluate(predictions, base, formato_saida, campos)
    atomic_write_json(metrics_path, metricas)
    atomic_write_text(per_record_path, _csv_text(rows))
    m = metricas["modelo"]
    line = f"{metricas['n']} records: exact_match {m['exact_match']:.3f}, ROUGE-L F1 {m['rouge_l_f1']:.3f}"
    if formato_saida == "json":
        micro = m.get("campos_micro_f1")
        line += f", JSON valid {m['json_valido']:.3f}, field micro F1 " + (
            f"{micro:.3f}" if micro is not None else "n/a"
        )
    if metricas["base"]:
        line += f"; gain over base in ROUGE-L F1 {metricas['ganho'].get('rouge_l_f1', 0.0):+.3f}"
    log.info("evaluation: %s", line)
    return metricas
