"""Batched generation on a real tiny Qwen2 model (random weights, built locally), real PEFT adapters."""

from __future__ import annotations

import json
import logging
import os
import random
import stat
from pathlib import Path

import pandas as pd
import pytest

from afinar.errors import AfinarError
from afinar.predict.generation import (
    GenerationSettings,
    generate_predictions,
    load_for_inference,
    read_test_split,
    run_prediction,
    truncate_middle,
)
from afinar.train.demo_model import TinyModelSpec, build_tiny_model

WORDS = (
    "o réu autor processo juiz sentença recurso prazo nome idade cidade valor ação parte fls autos".split()
)
SMALL = TinyModelSpec(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)


def _corpus(seed: int = 0, n: int = 300) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 20))) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "base", _corpus(), vocab_size=400, spec=SMALL)


def _write_split(path: Path, n: int, seed: int = 1, long_every: int = 0) -> Path:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        length = rng.randint(3, 40) if not (long_every and i % long_every == 0) else 400
        prompt = " ".join(rng.choice(WORDS) for _ in range(length))
        answer = json.dumps({"nome": rng.choice(WORDS), "idade": rng.randint(1, 90)}, ensure_ascii=False)
        rows.append(
            {
                "id": f"r{i:02d}",
                "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def _settings(**kw) -> GenerationSettings:
    base = {"batch_size": 4, "max_new_tokens": 12, "max_seq_length": 512}
    base.update(kw)
    return GenerationSettings(**base)


def test_truncate_middle_keeps_head_and_tail():
    ids = list(range(10))
    assert truncate_middle(ids, 5) == [0, 1, 2, 8, 9]
    assert truncate_middle(ids, 4) == [0, 1, 8, 9]
    assert truncate_middle(ids, 1) == [0]
    assert truncate_middle(ids, 20) == ids


def test_settings_validation_names_the_key():
    with pytest.raises(AfinarError, match="predicao.max_new_tokens"):
        GenerationSettings.from_config({"max_new_tokens": 500}, max_seq_length=512)
    with pytest.raises(AfinarError, match="predicao.batch_size"):
        GenerationSettings.from_config({"batch_size": 0}, max_seq_length=512)
    with pytest.raises(AfinarError, match="predicao.batch_size"):
        GenerationSettings.from_config({"batch_size": "big"}, max_seq_length=512)
    auto = {"batch_size": "auto", "max_new_tokens": 64}
    assert GenerationSettings.from_config(auto, max_seq_length=512).batch_size is None
    assert GenerationSettings.from_config({**auto, "batch_size": 8}, max_seq_length=512).batch_size == 8
    s = GenerationSettings.from_config(
        {"temperatura": 0.7, "top_p": 0.9, "n_exemplos": 3}, max_seq_length=1024
    )
    assert s.sampling and s.n_exemplos == 3 and s.max_prompt_tokens == 1024 - 512


def test_read_test_split_errors_and_limit(tmp_path):
    with pytest.raises(AfinarError, match="snakemake .*teste.parquet"):
        read_test_split(tmp_path / "teste.parquet")
    empty = tmp_path / "empty.parquet"
    pd.DataFrame({"id": pd.Series([], dtype=str), "messages": pd.Series([], dtype=object)}).to_parquet(empty)
    with pytest.raises(AfinarError, match="zero records"):
        read_test_split(empty)
    split = _write_split(tmp_path / "teste.parquet", 7)
    records = read_test_split(split, n_exemplos=3)
    assert [r.id for r in records] == ["r00", "r01", "r02"]
    assert records[0].messages[-1]["role"] == "user" and json.loads(records[0].esperado)


def test_batched_generation_equals_one_by_one_and_keeps_order(tiny_base, tmp_path):
    loaded = load_for_inference(str(tiny_base), None, backend="transformers")
    assert loaded.source == "base"
    assert loaded.tokenizer.padding_side == "left"
    records = read_test_split(_write_split(tmp_path / "teste.parquet", 9))
    batched = generate_predictions(
        loaded.model, loaded.tokenizer, records, _settings(batch_size=4), progress=False
    )
    single = generate_predictions(
        loaded.model, loaded.tokenizer, records, _settings(batch_size=1), progress=False
    )
    assert [p.id for p in batched] == [r.id for r in records]
    assert [p.gerado for p in batched] == [p.gerado for p in single]
    assert [p.tokens_saida for p in batched] == [p.tokens_saida for p in single]
    first = batched[0]
    assert first.esperado == records[0].esperado and first.prompt == records[0].messages[-1]["content"]
    assert 0 < first.tokens_prompt and 0 <= first.tokens_saida <= 12 and first.segundos > 0
    assert not any(p.truncado for p in batched)


def test_long_prompts_are_truncated_counted_and_do_not_crash(tiny_base, tmp_path, caplog):
    loaded = load_for_inference(str(tiny_base), None, backend="transformers")
    records = read_test_split(_write_split(tmp_path / "teste.parquet", 6, long_every=3))
    with caplog.at_level(logging.WARNING, logger="afinar"):
        preds = generate_predictions(
            loaded.model,
            loaded.tokenizer,
            records,
            _settings(max_seq_length=128, max_new_tokens=8),
            progress=False,
        )
    cut = [p for p in preds if p.truncado]
    assert [p.id for p in cut] == ["r00", "r03"]
    assert all(p.tokens_prompt == 120 for p in cut)
    assert "2 of 6 prompts were truncated" in caplog.text


def test_empty_generation_is_counted_not_fatal(tiny_base, tmp_path, caplog):
    loaded = load_for_inference(str(tiny_base), None, backend="transformers")
    records = read_test_split(_write_split(tmp_path / "teste.parquet", 3))
    settings = _settings(max_new_tokens=4)
    import torch

    text = loaded.tokenizer.apply_chat_template(
        records[0].messages, add_generation_prompt=True, tokenize=False
    )
    ids = loaded.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        first_token = int(loaded.model(ids).logits[0, -1].argmax())
    # make the token this model greedily emits first an end-of-turn token: its answer becomes empty
    loaded.model.generation_config.eos_token_id = [first_token, loaded.tokenizer.eos_token_id]
    with caplog.at_level(logging.WARNING, logger="afinar"):
        preds = generate_predictions(loaded.model, loaded.tokenizer, records[:1], settings, progress=False)
    assert preds[0].gerado == "" and preds[0].tokens_saida == 0
    assert "1 of 1 generations are empty" in caplog.text


def test_sampling_is_reproducible_with_the_seed(tiny_base, tmp_path):
    loaded = load_for_inference(str(tiny_base), None, backend="transformers")
    records = read_test_split(_write_split(tmp_path / "teste.parquet", 4))
    settings = _settings(temperatura=1.5, top_p=0.95, seed=3)
    a = generate_predictions(loaded.model, loaded.tokenizer, records, settings, progress=False)
    b = generate_predictions(loaded.model, loaded.tokenizer, records, settings, progress=False)
    greedy = generate_predictions(loaded.model, loaded.tokenizer, records, _settings(), progress=False)
    assert [p.gerado for p in a] == [p.gerado for p in b]
    assert [p.gerado for p in a] != [p.gerado for p in greedy]


def _save_adapter(base_dir: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return out


def test_adapter_loads_and_changes_predictions(tiny_base, tmp_path):
    from peft import PeftModel

    adapter = _save_adapter(tiny_base, tmp_path / "adapter")
    tuned = load_for_inference(str(tiny_base), adapter, backend="transformers")
    base = load_for_inference(str(tiny_base), None, backend="transformers")
    # merged into the weights for inference: a plain model, no adapter layers left
    assert tuned.source == "adapter" and not isinstance(tuned.model, PeftModel)
    assert "merged=True" in tuned.notes
    records = read_test_split(_write_split(tmp_path / "teste.parquet", 4))
    a = generate_predictions(tuned.model, tuned.tokenizer, records, _settings(), progress=False)
    b = generate_predictions(base.model, base.tokenizer, records, _settings(), progress=False)
    assert [p.gerado for p in a] != [p.gerado for p in b]


def test_missing_adapter_and_adapter_of_another_base(tiny_base, tmp_path):
    with pytest.raises(AfinarError, match="no trained adapter"):
        load_for_inference(str(tiny_base), tmp_path / "nothing", backend="transformers")
    other_spec = TinyModelSpec(
        hidden_size=96, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2
    )
    other = build_tiny_model(tmp_path / "other-base", _corpus(5), vocab_size=400, spec=other_spec)
    adapter = _save_adapter(other, tmp_path / "adapter-other")
    with pytest.raises(AfinarError) as err:
        load_for_inference(str(tiny_base), adapter, backend="transformers")
    message = str(err.value)
    assert str(tiny_base) in message and str(other) in message and "\n" not in message


def test_run_prediction_writes_complete_files_atomically(tiny_base, tmp_path):
    split = _write_split(tmp_path / "data" / "teste.parquet", 5)
    out = tmp_path / "exp" / "predicoes" / "teste.jsonl"
    mem = tmp_path / "exp" / "treinamento" / "memoria_predicao.jsonl"
    png = mem.with_suffix(".png")
    preds = run_prediction(
        split, out, str(tiny_base), None, _settings(n_exemplos=4), "transformers", 16, mem, png
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(preds) == 4
    assert set(rows[0]) >= {
        "id",
        "prompt",
        "esperado",
        "gerado",
        "tokens_prompt",
        "tokens_saida",
        "segundos",
        "truncado",
    }
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600  # decrypted text inside
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [f for f in os.listdir(out.parent) if f.endswith(".tmp")] == []


def test_interrupted_run_leaves_no_predictions_file(tiny_base, tmp_path):
    split = tmp_path / "teste.parquet"
    rows = [
        {
            "id": "ok",
            "messages": [{"role": "user", "content": "o réu"}, {"role": "assistant", "content": "{}"}],
        },
        # a role the template cannot render: generation stops half-way through the split
        {
            "id": "bad",
            "messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "{}"}],
        },
    ]
    pd.DataFrame(rows).to_parquet(split, index=False)
    out = tmp_path / "predicoes" / "teste.jsonl"
    with pytest.raises(AfinarError, match="'bad'"):
        run_prediction(split, out, str(tiny_base), None, _settings(), "transformers")
    assert not out.exists()
