"""The tiny offline model: tokenizer ids survive a reload, ChatML with generation blocks, random weights."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from afinar.errors import AfinarError
from afinar.train.demo_model import CHAT_TEMPLATE, build_tiny_model, read_corpus

SAMPLE = 'Processo nº 0001234-56.2020: autor João; réu "Empresa X". Valor R$ 1.234,56.\n{"a": [1, 2]}'


def test_ids_survive_save_and_reload(tiny_model_dir):
    from transformers import Qwen2Tokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert isinstance(tok, Qwen2Tokenizer)  # transformers 5 picks this class for any qwen2 folder
    ids = tok(SAMPLE)["input_ids"]
    assert tok.decode(ids) == SAMPLE
    tok.save_pretrained(tiny_model_dir.parent / "resaved")
    again = AutoTokenizer.from_pretrained(tiny_model_dir.parent / "resaved")
    assert again(SAMPLE)["input_ids"] == ids
    # the raw tokenizers file gives the same ids as the transformers class that rebuilds the pre-tokenizer
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    assert raw.encode(SAMPLE, add_special_tokens=False).ids == ids


def test_special_tokens_and_chat_template(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert "{% generation %}" in tok.chat_template
    msgs = [{"role": "user", "content": "Oi"}, {"role": "assistant", "content": "Tchau"}]
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    trained = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert trained == "Tchau<|im_end|>"


def test_model_config_and_weights(tiny_model_dir):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["num_hidden_layers"] == 2
    assert cfg["initializer_range"] == pytest.approx(0.1)
    assert (tiny_model_dir / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert model.config.vocab_size == len(tok)
    std = model.model.layers[0].mlp.up_proj.weight.std().item()
    assert 0.05 < std < 0.15  # random init with the wide range, not the 0.02 default


def test_same_seed_same_weights_and_atomic_folder(tmp_path):
    texts = ["abc def ghi, jkl 123.\n" * 20, "Olá, mundo! Árvore e ação.\n" * 20]
    a = build_tiny_model(tmp_path / "a", texts, vocab_size=300, seed=7)
    b = build_tiny_model(tmp_path / "b", texts, vocab_size=300, seed=7)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temporary folder left behind
    assert (a / "chat_template.jinja").read_text().strip() == CHAT_TEMPLATE.strip()


def test_bad_corpus(tmp_path):
    with pytest.raises(AfinarError, match="no text"):
        build_tiny_model(tmp_path / "m", ["   ", ""])
    with pytest.raises(AfinarError, match="not found"):
        read_corpus([tmp_path / "missing.txt"])
    assert not (tmp_path / "m").exists()


def test_read_corpus_latin1(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_bytes("ação".encode("latin-1"))
    (tmp_path / "d" / "b.txt").write_text("ok", encoding="utf-8")
    assert read_corpus([tmp_path / "d"]) == ["ação", "ok"]
