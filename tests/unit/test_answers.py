"""Expected-answer normalization: JSON answers are re-serialized on one line, bad ones rejected with a reason."""

import json

import pytest

from afinar.data.answers import normalize_answer, parse_json_answer, strip_fences

ONE_LINE = '{"tipo": "recibo", "nome": "Ana Lima", "valor": null}'


@pytest.mark.parametrize(
    "raw",
    [
        '{\n  "tipo": "recibo",\n  "nome": "Ana Lima",\n  "valor": null\n}\n',
        '```json\n{"tipo": "recibo", "nome": "Ana Lima", "valor": null}\n```\n',
        '```JSON\n{"tipo": "recibo", "nome": "Ana Lima", "valor": null}\n```',
        '```\n{"tipo": "recibo", "nome": "Ana Lima", "valor": null}\n```',
        'json\n{"tipo": "recibo", "nome": "Ana Lima", "valor": null}',
        'Aqui está o JSON: {"tipo": "recibo", "nome": "Ana Lima", "valor": null} Espero ter ajudado.',
        '  \ufeff{"tipo":"recibo","nome":"Ana Lima","valor":null}  ',
    ],
)
def test_json_answers_become_one_canonical_line(raw):
    answer = normalize_answer(raw.replace("\ufeff", ""), require_json=True)
    assert answer.ok, answer.reason
    assert answer.text == ONE_LINE
    assert json.loads(answer.text) == {"tipo": "recibo", "nome": "Ana Lima", "valor": None}


def test_non_ascii_is_kept_and_key_order_preserved():
    answer = normalize_answer('{"z": "ação", "a": "Belém"}', require_json=True)
    assert answer.text == '{"z": "ação", "a": "Belém"}'


def test_arrays_are_accepted():
    assert normalize_answer('[{"a": 1}, {"a": 2}]', require_json=True).text == '[{"a": 1}, {"a": 2}]'


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("Error: the model timed out", "failed extraction"),
        ("error: rate limit", "failed extraction"),
        ('{"tipo": "recibo", "nome": }', "not valid JSON"),
        ("apenas texto sem json", "not valid JSON"),
        ("42", "JSON int instead of an object"),
        ("   \n", "empty answer"),
        ("```json\n```", "empty answer"),
    ],
)
def test_invalid_answers_are_rejected_never_turned_into_empty_objects(raw, reason):
    answer = normalize_answer(raw, require_json=True)
    assert not answer.ok
    assert answer.text == ""
    assert reason in answer.reason


def test_without_require_json_text_answers_are_kept_as_written():
    assert (
        normalize_answer("  Resposta livre.\n", require_json=False, json_output=False).text
        == "Resposta livre."
    )
    assert normalize_answer("Error: x", require_json=False, json_output=False).text == "Error: x"
    # json output still normalizes what parses, and keeps the rest
    assert normalize_answer('```json\n{"a": 1}\n```', require_json=False, json_output=True).text == '{"a": 1}'
    assert normalize_answer("not json", require_json=False, json_output=True).text == "not json"
    assert not normalize_answer("", require_json=False).ok


def test_strip_fences_and_parse_report_the_parser_position():
    assert strip_fences("```json\n{}\n```") == "{}"
    with pytest.raises(ValueError, match="line 2 column"):
        parse_json_answer('{"a": 1,\n "b" 2}')
