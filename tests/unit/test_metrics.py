"""Metrics on hand-computed cases (the expected numbers are worked out in the comments)."""

from __future__ import annotations

import random

import pytest

from afinar.evaluate.metrics import (
    FieldCounts,
    exact_match,
    field_counts,
    flatten,
    json_equal,
    lcs_length,
    micro_macro,
    normalize_value,
    parse_json,
    prf,
    rouge_l,
    token_f1,
    word_tokens,
)


def _lcs_table(a: list[str], b: list[str]) -> int:
    """Textbook quadratic LCS, the reference for the bit-parallel one."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def test_word_tokens_lowercases_keeps_accents_drops_punctuation():
    assert word_tokens("Ação, DE  cobrança!  R$ 1.500") == ["ação", "de", "cobrança", "r", "1", "500"]
    assert word_tokens("") == []


def test_exact_match_ignores_surrounding_and_repeated_whitespace_only():
    assert exact_match("  o réu\n foi   condenado ", "o réu foi condenado") == 1.0
    assert exact_match("O réu", "o réu") == 0.0  # case matters for exact match
    assert exact_match("", "") == 1.0


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("a b c d e", "a c e", 3),
        ("a b c b d a b", "b d c a b a", 4),  # CLRS example: BCBA
        ("x y z", "a b c", 0),
        ("a a a", "a", 1),
        ("", "a", 0),
    ],
)
def test_lcs_length_hand_cases(a, b, expected):
    assert lcs_length(a.split(), b.split()) == expected
    assert lcs_length(b.split(), a.split()) == expected


def test_lcs_bit_parallel_agrees_with_table_on_random_sequences():
    rng = random.Random(7)
    for _ in range(200):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        assert lcs_length(a, b) == _lcs_table(a, b)


def test_rouge_l_hand_computed():
    # generated: the cat sat on the mat (6); expected: the cat is on the mat (6)
    # LCS = the cat on the mat = 5 → P = R = F1 = 5/6
    s = rouge_l("The cat sat on the mat.", "the cat is on the mat")
    assert s.precision == pytest.approx(5 / 6)
    assert s.recall == pytest.approx(5 / 6)
    assert s.f1 == pytest.approx(5 / 6)
    # generated: a b (2); expected: a x b y (4); LCS 2 → P = 1, R = 0.5, F1 = 2/3
    s = rouge_l("a b", "a x b y")
    assert (s.precision, s.recall) == (1.0, 0.5)
    assert s.f1 == pytest.approx(2 / 3)


def test_rouge_l_order_matters_unlike_token_f1():
    # same bag, reversed order: LCS of (a b c) and (c b a) is 1 → F1 1/3; bag F1 is 1
    assert rouge_l("a b c", "c b a").f1 == pytest.approx(1 / 3)
    assert token_f1("a b c", "c b a") == 1.0


def test_empty_texts():
    assert rouge_l("", "").f1 == 1.0
    assert rouge_l("", "algo").f1 == 0.0
    assert rouge_l("algo", "").f1 == 0.0
    assert token_f1("", "") == 1.0
    assert token_f1("", "x") == 0.0


def test_token_f1_counts_multiplicity():
    # generated: a a b (3), expected: a b b c (4); overlap = min(2,1)a + min(1,2)b = 2
    # P = 2/3, R = 2/4 → F1 = 2·(2/3)(1/2)/((2/3)+(1/2)) = 4/7
    assert token_f1("a a b", "a b b c") == pytest.approx(4 / 7)


def test_parse_json_fences_prose_and_invalid():
    assert parse_json('```json\n{"a": 1}\n```') == (True, {"a": 1})
    assert parse_json("```\n[1, 2]\n```") == (True, [1, 2])
    assert parse_json('Resposta: {"a": {"b": 2}} fim.') == (True, {"a": {"b": 2}})
    assert parse_json('{"a": 1') == (False, None)
    assert parse_json("Error: timeout") == (False, None)
    assert parse_json("42") == (False, None)  # a bare number is not a structured answer
    assert parse_json("") == (False, None)


def test_normalize_value_numbers_case_whitespace():
    assert normalize_value(" São  Paulo ") == "são paulo"
    assert normalize_value("1,5") == normalize_value(1.5) == normalize_value("1.50")
    assert normalize_value("3") == normalize_value(3.0) == 3
    assert normalize_value(True) is True and normalize_value(None) is None
    assert normalize_value(["A ", 2.0]) == ["a", 2]
    assert normalize_value("1.000") == 1  # no thousands-separator guessing


def test_flatten_nested_and_drops_empty_values():
    obj = {"a": 1, "b": {"c": "x", "d": {"e": None}}, "f": [], "g": "", "h": [1, 2]}
    assert flatten(obj) == {"a": 1, "b.c": "x", "h": [1, 2]}
    assert flatten([1]) == {"": [1]}


def test_field_counts_hand_computed():
    expected = {"nome": "Ana", "idade": 30, "end": {"cidade": "Recife", "uf": "PE"}, "vazio": None}
    generated = {"nome": " ana ", "idade": "31", "end": {"cidade": "recife"}, "extra": "x"}
    counts = field_counts(generated, expected)
    # nome: tp; idade: wrong → fp+fn; end.cidade: tp; end.uf: missing → fn; extra: fp; vazio: ignored
    assert {k: (c.tp, c.fp, c.fn) for k, c in counts.items()} == {
        "nome": (1, 0, 0),
        "idade": (0, 1, 1),
        "end.cidade": (1, 0, 0),
        "end.uf": (0, 0, 1),
        "extra": (0, 1, 0),
    }
    avg = micro_macro(counts)
    # micro: tp 2, fp 2, fn 2 → P = R = F1 = 0.5
    assert avg["micro"].precision == pytest.approx(0.5)
    assert avg["micro"].recall == pytest.approx(0.5)
    assert avg["micro"].f1 == pytest.approx(0.5)
    # macro F1: mean(1, 0, 1, 0, 0) = 0.4
    assert avg["macro"].f1 == pytest.approx(0.4)


def test_field_counts_invalid_generation_and_field_filter():
    expected = {"a": 1, "b": {"c": 2, "d": 3}}
    counts = field_counts(None, expected)
    assert {k: (c.tp, c.fp, c.fn) for k, c in counts.items()} == {
        "a": (0, 0, 1),
        "b.c": (0, 0, 1),
        "b.d": (0, 0, 1),
    }
    only_b = field_counts({"a": 1, "b": {"c": 2}}, expected, fields=["b"])
    assert sorted(only_b) == ["b.c", "b.d"]
    assert only_b["b.c"].tp == 1 and only_b["b.d"].fn == 1


def test_prf_conventions():
    assert prf(FieldCounts(0, 0, 0)).f1 == 1.0
    assert prf(FieldCounts(0, 0, 3)) == prf(FieldCounts(0, 2, 0))  # both 0
    assert prf(FieldCounts(0, 0, 3)).f1 == 0.0
    s = prf(FieldCounts(tp=3, fp=1, fn=2))  # P = 3/4, R = 3/5, F1 = 2/3
    assert (s.precision, s.recall) == (0.75, 0.6)
    assert s.f1 == pytest.approx(2 / 3)
    assert micro_macro({}) == {"micro": None, "macro": None}


def test_json_equal_after_normalisation():
    assert json_equal({"a": "X ", "b": {"c": 1.0}, "d": None}, {"b": {"c": "1"}, "a": "x"})
    assert not json_equal({"a": 1}, {"a": 2})
