"""Chat templates: own template kept, family fallbacks, markers derived from the template, exact masks."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from afinar.errors import AfinarError
from afinar.train import chat

CONV = [
    {"role": "user", "content": "Qual o nome?\nTexto: Ana Silva"},
    {"role": "assistant", "content": '{"nome": "Ana Silva"}'},
]
TWO_TURNS = CONV + [
    {"role": "user", "content": "E a cidade?"},
    {"role": "assistant", "content": '{"cidade": "Recife"}'},
]


@pytest.fixture()
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def trained_text(tokenizer, enc) -> str:
    return tokenizer.decode(
        [t for t, lab in zip(enc["input_ids"], enc["labels"], strict=True) if lab != -100]
    )


def test_markers_of_the_tokenizers_own_template(tok):
    assert (
        chat.ensure_chat_template(tok, "whatever/gemma-3") == "tokenizer"
    )  # never overwritten by name (B13)
    m = chat.derive_markers(tok)
    assert m.response_prefix == "<|im_start|>assistant\n"
    assert m.end_of_turn == "<|im_end|>"
    assert m.instruction_prefix == "<|im_start|>user\n"


def test_mask_matches_trls_generation_mask(tok):
    """Our character-span mask equals the one transformers derives from {% generation %} blocks."""
    markers = chat.derive_markers(tok)
    for conv in (CONV, TWO_TURNS):
        enc = chat.tokenize_conversation(tok, conv, markers)
        ref = tok.apply_chat_template(
            conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        assert enc["input_ids"] == ref["input_ids"]
        assert [lab != -100 for lab in enc["labels"]] == [bool(x) for x in ref["assistant_masks"]]
    enc = chat.tokenize_conversation(tok, TWO_TURNS, markers)
    assert trained_text(tok, enc) == '{"nome": "Ana Silva"}<|im_end|>{"cidade": "Recife"}<|im_end|>'


@pytest.mark.parametrize(
    ("family", "end"),
    [
        ("gemma", "<end_of_turn>"),
        ("llama-3", "<|eot_id|>"),
        ("deepseek", "<｜end▁of▁sentence｜>"),
        ("qwen", "<|im_end|>"),
    ],
)
def test_family_fallbacks_mask_only_the_answers(tok, family, end):
    tok.chat_template = None
    name = {
        "gemma": "google/gemma-3-4b-it",
        "llama-3": "meta-llama/Llama-3.2-1B",
        "deepseek": "deepseek-ai/x",
        "qwen": "Qwen/Qwen2.5-0.5B",
    }[family]
    assert chat.ensure_chat_template(tok, name) == family
    markers = chat.derive_markers(tok)
    assert markers.end_of_turn == end
    enc = chat.tokenize_conversation(tok, TWO_TURNS, markers)
    text = trained_text(tok, enc)
    assert text == f'{{"nome": "Ana Silva"}}{end}{{"cidade": "Recife"}}{end}'
    assert "Qual o nome" not in text
    assert 0.3 < chat.masked_fraction([enc["labels"]]) < 1.0


def test_family_of():
    assert chat.family_of("unsloth/gemma-3-4b-it") == "gemma"
    assert chat.family_of("meta-llama/Meta-Llama-3.1-8B") == "llama-3"
    assert chat.family_of("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B") == "deepseek"
    assert chat.family_of("Qwen/Qwen3-4B") == "qwen"
    assert chat.family_of("mistralai/Mistral-7B") == "chatml"


def test_template_without_assistant_marker_is_refused(tok):
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    with pytest.raises(AfinarError, match="no detectable assistant marker"):
        chat.derive_markers(tok)


def test_template_that_drops_content_is_refused(tok):
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(AfinarError, match="drops or reorders"):
        chat.derive_markers(tok)


def test_full_sequence_without_markers(tok):
    enc = chat.tokenize_conversation(tok, CONV, None)
    assert enc["labels"] == enc["input_ids"]
    assert chat.masked_fraction([enc["labels"]]) == 0.0
