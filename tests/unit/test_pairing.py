"""Pairing of real files and real parquet inputs: ids as strings, unpaired ids listed, invalid answers handled."""

import json
import os
import stat
import unicodedata

import pandas as pd
import pyarrow.parquet as pq
import pytest

from afinar.data.pairing import (
    file_id,
    glob_mask,
    list_files,
    pair_records,
    raw_input_files,
    read_text,
    run_pair,
)
from afinar.errors import AfinarError


def sections(tmp_path, **over):
    """Normalized pastas sections for folders under tmp_path (entrada/, saidas/)."""
    entrada = {
        "pasta": str(tmp_path / "entrada"),
        "mascara": "*.txt",
        "prompt_template": "",
        "tag_texto": "",
        "dataframe": "",
        "dataframe_col": "",
        "dataframe_id": "",
    }
    predicao = {"pasta": str(tmp_path / "saidas"), "mascara": "*.txt"}
    validacao = {"exigir_json_valido": True, "skip_invalidos": False}
    formatos = {"tipo_entrada": "pastas", "formato_saida": "json"}
    entrada.update(over.get("entrada", {}))
    validacao.update(over.get("validacao", {}))
    return entrada, predicao, validacao, formatos


def write_pairs(tmp_path, records, inputs_only=(), answers_only=()):
    (tmp_path / "entrada").mkdir(exist_ok=True)
    (tmp_path / "saidas").mkdir(exist_ok=True)
    for rid, (text, answer) in records.items():
        (tmp_path / "entrada" / f"{rid}.txt").write_text(text, encoding="utf-8")
        (tmp_path / "saidas" / f"{rid}.txt").write_text(answer, encoding="utf-8")
    for rid in inputs_only:
        (tmp_path / "entrada" / f"{rid}.txt").write_text("só entrada", encoding="utf-8")
    for rid in answers_only:
        (tmp_path / "saidas" / f"{rid}.txt").write_text('{"a": 1}', encoding="utf-8")


def test_ids_are_strings_and_unpaired_ids_are_listed(tmp_path):
    write_pairs(
        tmp_path,
        {
            "001": ("texto um\n", '```json\n{"a": 1}\n```'),
            "a.b": ("texto ab", '{"a": 2}'),
            "10": ("dez", '{"a": 3}'),
        },
        inputs_only=["002"],
        answers_only=["003", "x.y.z"],
    )
    (tmp_path / "saidas" / "001.json").write_text("{}")  # sibling file excluded by the mask
    result = run_pair(
        *sections(tmp_path), tmp_path / "out" / "pairs.parquet", tmp_path / "out" / "pareamento.json"
    )
    assert result.ids == ["001", "10", "a.b"]
    table = pq.read_table(tmp_path / "out" / "pairs.parquet")
    assert table.column_names == ["id", "texto", "resposta"]
    assert str(table.schema.field("id").type) == "string"
    rows = table.to_pylist()
    assert rows[0] == {"id": "001", "texto": "texto um", "resposta": '{"a": 1}'}
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "pairs.parquet").st_mode) == 0o600
    summary = json.loads((tmp_path / "out" / "pareamento.json").read_text())
    assert summary["n_pares"] == 3
    assert summary["entrada_sem_par"] == ["002"]
    assert summary["predicao_sem_par"] == ["003", "x.y.z"]
    assert summary["invalidos"] == [] and summary["latin1"] == []


def test_latin1_files_are_read_and_reported(tmp_path):
    write_pairs(tmp_path, {"1": ("x", '{"a": 1}')})
    (tmp_path / "entrada" / "1.txt").write_bytes("decisão em Belém".encode("latin-1"))
    result = pair_records(*sections(tmp_path))
    assert result.texts == ["decisão em Belém"]
    assert result.latin1 == [str(tmp_path / "entrada" / "1.txt")]
    assert read_text(tmp_path / "entrada" / "1.txt") == ("decisão em Belém", True)


def test_invalid_answers_skipped_and_counted(tmp_path):
    write_pairs(
        tmp_path,
        {"1": ("a", '{"ok": 1}'), "2": ("b", "Error: timeout"), "3": ("c", "{quebrado"), "4": ("  ", "{}")},
    )
    result = pair_records(*sections(tmp_path, validacao={"skip_invalidos": True}))
    assert result.ids == ["1"]
    assert [i["id"] for i in result.invalid] == ["2", "3", "4"]
    assert "failed extraction" in result.invalid[0]["motivo"]
    assert "not valid JSON" in result.invalid[1]["motivo"]
    assert result.invalid[2]["motivo"] == "empty input text"


def test_invalid_answers_stop_the_run_naming_files(tmp_path):
    write_pairs(tmp_path, {"1": ("a", '{"ok": 1}'), "2": ("b", "Error: timeout")})
    with pytest.raises(AfinarError, match=r"1 of 2 pairs are invalid: .*2\.txt \(failed extraction"):
        pair_records(*sections(tmp_path))


def test_without_exigir_json_answers_are_kept(tmp_path):
    write_pairs(tmp_path, {"1": ("a", "Error: timeout"), "2": ("b", '```json\n{"x": 1}\n```')})
    entrada, predicao, validacao, formatos = sections(tmp_path, validacao={"exigir_json_valido": False})
    formatos["formato_saida"] = "texto"
    result = pair_records(entrada, predicao, validacao, formatos)
    assert result.answers == ["Error: timeout", '```json\n{"x": 1}\n```']


def test_dataframe_mode_pairs_ids_in_both(tmp_path):
    write_pairs(
        tmp_path, {"001": ("ignored", '{"a": 1}'), "002": ("ignored", '{"a": 2}')}, answers_only=["009"]
    )
    frame = pd.DataFrame(
        {"id_peca": ["001", "002", "005"], "texto": ["um", "dois", "cinco"], "extra": [1, 2, 3]}
    )
    frame.to_parquet(tmp_path / "textos.parquet")
    over = {
        "entrada": {
            "pasta": "",
            "dataframe": str(tmp_path / "textos.parquet"),
            "dataframe_col": "texto",
            "dataframe_id": "id_peca",
        }
    }
    result = pair_records(*sections(tmp_path, **over))
    assert result.ids == ["001", "002"] and result.texts == ["um", "dois"]
    assert result.input_only == ["005"] and result.answer_only == ["009"]


def test_dataframe_integer_ids_become_strings(tmp_path):
    write_pairs(tmp_path, {"7": ("x", '{"a": 1}')})
    pd.DataFrame({"id": [7, 8], "t": ["sete", "oito"]}).to_parquet(tmp_path / "t.parquet")
    over = {"entrada": {"dataframe": str(tmp_path / "t.parquet"), "dataframe_col": "t", "dataframe_id": "id"}}
    assert pair_records(*sections(tmp_path, **over)).ids == ["7"]


def test_masks(tmp_path):
    assert glob_mask("^(.+)\\.txt$", "k") == "*.txt"
    assert glob_mask("", "k") == "*.txt"
    assert glob_mask("doc_*.md", "k") == "doc_*.md"
    with pytest.raises(AfinarError, match="looks like a regular expression"):
        glob_mask("^doc_[0-9]+$", "k")
    with pytest.raises(AfinarError, match="subfolder"):
        glob_mask("sub/*.txt", "k")
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / ".swp.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("x")
    assert [p.name for p in list_files(tmp_path, "*.txt")] == ["a.txt"]
    assert file_id("a.b.txt") == "a.b" and file_id("001.txt") == "001" and file_id("semext") == "semext"


def test_raw_input_files_tolerates_missing_folders(tmp_path):
    write_pairs(tmp_path, {"1": ("a", "{}")})
    entrada, predicao, _, _ = sections(tmp_path)
    assert sorted(raw_input_files(entrada, predicao)) == sorted(
        [str(tmp_path / "entrada" / "1.txt"), str(tmp_path / "saidas" / "1.txt")]
    )
    entrada["pasta"] = str(tmp_path / "nope")
    assert raw_input_files(entrada, predicao) == [str(tmp_path / "saidas" / "1.txt")]


def test_bundled_example_pairs_completely(tmp_path):
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "resources" / "example"
    entrada, predicao, validacao, formatos = sections(tmp_path)
    entrada["pasta"], predicao["pasta"] = str(example / "entrada"), str(example / "saidas")
    result = pair_records(entrada, predicao, validacao, formatos)
    assert len(result.ids) >= 300 and not result.invalid and not result.input_only and not result.answer_only
    assert "001" in result.ids and any(i.count(".") == 2 for i in result.ids)
    assert all(a.startswith('{"tipo": ') for a in result.answers)


NFC_NAME = unicodedata.normalize("NFC", "ação")
NFD_NAME = unicodedata.normalize("NFD", "ação")


def test_names_that_differ_only_in_unicode_normalisation_pair(tmp_path, caplog):
    """An input named ação.txt in NFC and its answer in NFD (as macOS writes it) are one record."""
    assert NFC_NAME != NFD_NAME
    write_pairs(tmp_path, {"1": ("um", '{"a": 1}')})
    (tmp_path / "entrada" / f"{NFC_NAME}.txt").write_text("texto", encoding="utf-8")
    (tmp_path / "saidas" / f"{NFD_NAME}.txt").write_text('{"a": 2}', encoding="utf-8")
    out = tmp_path / "out"
    with caplog.at_level("INFO", logger="afinar"):
        result = run_pair(*sections(tmp_path), out / "pairs.parquet", out / "pareamento.json")
    assert result.ids == ["1", NFC_NAME] and result.input_only == [] and result.answer_only == []
    summary = json.loads((out / "pareamento.json").read_text())
    assert summary["ids_normalizados_nfc"] == [NFC_NAME]
    assert "decomposed accents (Unicode NFD)" in caplog.text
    assert (tmp_path / "saidas" / f"{NFD_NAME}.txt").exists()  # the user's file keeps its name
    assert file_id(f"{NFD_NAME}.txt") == NFC_NAME


def test_two_files_whose_names_differ_only_in_normalisation_are_named(tmp_path):
    write_pairs(tmp_path, {"1": ("um", '{"a": 1}')})
    (tmp_path / "saidas" / f"{NFC_NAME}.txt").write_text('{"a": 2}', encoding="utf-8")
    (tmp_path / "saidas" / f"{NFD_NAME}.txt").write_text('{"a": 3}', encoding="utf-8")
    with pytest.raises(AfinarError, match="differ only in Unicode normalisation"):
        pair_records(*sections(tmp_path))


def test_dataframe_ids_are_matched_in_nfc(tmp_path):
    write_pairs(tmp_path, {})
    (tmp_path / "saidas" / f"{NFC_NAME}.txt").write_text('{"a": 2}', encoding="utf-8")
    frame = tmp_path / "textos.parquet"
    pd.DataFrame({"id": [NFD_NAME], "texto": ["um texto"]}).to_parquet(frame)
    entrada = {"pasta": "", "dataframe": str(frame), "dataframe_col": "texto", "dataframe_id": "id"}
    result = pair_records(*sections(tmp_path, entrada=entrada))
    assert result.ids == [NFC_NAME]


def test_a_utf8_file_with_stray_bytes_is_decoded_as_utf8_and_reported(tmp_path, caplog):
    """Two bad bytes in UTF-8 text: the rest stays readable (not garbled as latin-1), the bytes are counted."""
    write_pairs(tmp_path, {"1": ("x", '{"a": 1}'), "2": ("y", '{"a": 2}')})
    good = "Decisão: ação de cobrança em São Luís.".encode()
    stray = tmp_path / "entrada" / "1.txt"
    stray.write_bytes(good[:10] + b"\xff" + good[10:30] + b"\x80" + good[30:])
    (tmp_path / "entrada" / "2.txt").write_bytes("decisão em Belém".encode("latin-1"))  # a real latin-1 file
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="afinar"):
        result = run_pair(*sections(tmp_path), out / "pairs.parquet", out / "pareamento.json")
    text = result.texts[0]
    assert "ação de cobrança" in text and "Luís" in text and "Ã" not in text and text.count("\ufffd") == 2
    assert result.texts[1] == "decisão em Belém"
    summary = json.loads((out / "pareamento.json").read_text())
    assert summary["utf8_bytes_invalidos"] == [{"arquivo": str(stray), "bytes": 2}]
    assert summary["latin1"] == [str(tmp_path / "entrada" / "2.txt")]
    assert f"{stray} (2 bytes)" in caplog.text


def test_records_far_beyond_max_seq_length_are_warned_about_at_pairing(tmp_path, caplog):
    write_pairs(tmp_path, {"1": ("curto", '{"a": 1}'), "grande": ("palavra " * 50_000, '{"a": 2}')})
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="afinar"):
        run_pair(*sections(tmp_path), out / "pairs.parquet", out / "pareamento.json", max_seq_length=256)
    assert "1 record(s) are far longer than max_seq_length 256" in caplog.text
    assert "grande (~100,001 tokens)" in caplog.text
