"""Evaluation of real prediction files with hand-computed expectations."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from afinar.errors import AfinarError
from afinar.evaluate.evaluation import evaluate, read_predictions, run_evaluation


def _row(rid: str, esperado: str, gerado: str, **kw) -> dict:
    row = {
        "id": rid,
        "prompt": "p",
        "esperado": esperado,
        "gerado": gerado,
        "tokens_prompt": 10,
        "tokens_saida": 4,
        "segundos": 0.5,
        "truncado": False,
    }
    row.update(kw)
    return row


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


JSON_ROWS = [
    # exact (after normalisation): both fields right, JSON valid, fenced
    _row("a", '{"nome": "Ana", "idade": 30}', '```json\n{"nome": "ana", "idade": "30"}\n```'),
    # one field wrong
    _row("b", '{"nome": "Bia", "idade": 41}', '{"nome": "Bia", "idade": 14}'),
    # not JSON at all: counted invalid, both expected fields missed
    _row("c", '{"nome": "Caio", "idade": 7}', "Desculpe, não sei.", truncado=True),
    # empty generation
    _row("d", '{"nome": "Duda"}', "", tokens_saida=0),
]


def test_json_task_hand_computed():
    metricas, rows = evaluate(JSON_ROWS, formato_saida="json")
    m = metricas["modelo"]
    assert metricas["n"] == 4 and metricas["base"] is None and metricas["ganho"] == {}
    assert m["json_valido"] == pytest.approx(2 / 4)
    assert m["json_exact_match"] == pytest.approx(1 / 4)
    # nome: tp a, b; fn c, d → P 1, R 2/4; idade: tp a; fp+fn b; fn c → P 1/2, R 1/3
    nome, idade = metricas["por_campo"]["nome"], metricas["por_campo"]["idade"]
    assert (nome["precision"], nome["recall"], nome["suporte"]) == (1.0, 0.5, 4)
    assert nome["f1"] == pytest.approx(2 / 3)
    assert (idade["precision"], idade["suporte"]) == (0.5, 3)
    assert idade["recall"] == pytest.approx(1 / 3)
    # micro: tp 3, fp 1, fn 4 → P 3/4, R 3/7, F1 = 2·(3/4)(3/7)/((3/4)+(3/7)) = 6/11
    assert m["campos_micro_precision"] == pytest.approx(0.75)
    assert m["campos_micro_recall"] == pytest.approx(3 / 7)
    assert m["campos_micro_f1"] == pytest.approx(6 / 11)
    # macro F1: mean(2/3, F1(P 1/2, R 1/3) = 0.4) = 8/15
    assert m["campos_macro_f1"] == pytest.approx((2 / 3 + 0.4) / 2)
    assert m["vazios"] == 1 and m["truncados"] == 1
    assert m["exact_match"] == 0.0  # text-level: the fence and case differ
    assert m["tokens_por_segundo"] == pytest.approx((4 + 4 + 4 + 0) / 2.0)
    assert [r["json_valido"] for r in rows] == [True, True, False, False]
    assert rows[0]["campos_f1"] == 1.0 and rows[2]["campos_f1"] == 0.0


def test_text_task_has_no_json_metrics():
    rows = [_row("x", "o réu foi condenado", "o réu foi condenado"), _row("y", "a b c d", "a x")]
    metricas, per_record = evaluate(rows, formato_saida="texto")
    m = metricas["modelo"]
    assert "json_valido" not in m and metricas["por_campo"] == {}
    assert m["exact_match"] == 0.5
    # y: LCS 1 of 2 generated and 4 expected → P 1/2, R 1/4, F1 1/3; mean with x (1.0) = 2/3
    assert m["rouge_l_f1"] == pytest.approx((1 + 1 / 3) / 2)
    assert "json_valido" not in per_record[0]


def test_base_comparison_gain_and_csv(tmp_path):
    tuned = _write(tmp_path / "predicoes" / "teste.jsonl", JSON_ROWS)
    base_rows = [dict(r, gerado="nada") for r in JSON_ROWS]
    base = _write(tmp_path / "predicoes" / "teste_base.jsonl", base_rows)
    out_json, out_csv = tmp_path / "avaliacao" / "metricas.json", tmp_path / "avaliacao" / "por_registro.csv"
    metricas = run_evaluation(tuned, base, out_json, out_csv, "json", None)
    on_disk = json.loads(out_json.read_text())
    assert on_disk["base"]["json_valido"] == 0.0
    assert on_disk["ganho"]["json_valido"] == pytest.approx(0.5)
    assert on_disk["ganho"]["campos_micro_f1"] == pytest.approx(6 / 11)
    assert on_disk["base"]["por_campo"]["nome"]["f1"] == 0.0
    assert metricas["modelo"]["n"] == 4
    with open(out_csv, newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert [r["id"] for r in table] == ["a", "b", "c", "d"]
    assert {"base_rouge_l_f1", "campos_f1", "json_valido"} <= set(table[0])
    assert "gerado" not in table[0] and "esperado" not in table[0]  # no text: confidential data stays out


def test_field_filter_restricts_scoring():
    metricas, _ = evaluate(JSON_ROWS, formato_saida="json", campos=["nome"])
    assert list(metricas["por_campo"]) == ["nome"]
    assert metricas["campos"] == ["nome"]


def test_bad_inputs(tmp_path):
    with pytest.raises(AfinarError, match="not found"):
        read_predictions(tmp_path / "missing.jsonl")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "a", "esperado": "x", "gerado": "x"}\n{"id": "b", "esper', encoding="utf-8")
    with pytest.raises(AfinarError, match=r"broken.jsonl:2"):
        read_predictions(broken)
    tuned = _write(tmp_path / "t.jsonl", JSON_ROWS)
    other = _write(tmp_path / "b.jsonl", JSON_ROWS[:2])
    with pytest.raises(AfinarError, match="differ"):
        run_evaluation(tuned, other, tmp_path / "m.json", tmp_path / "r.csv", "json")
    assert not (tmp_path / "m.json").exists()
