"""The static-cache decoder (run eagerly on CPU: the same step a GPU captures), merged adapters,
``batch_size: auto`` with out-of-memory halving, and the progress line — on a real tiny Qwen2 model."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pandas as pd
import pytest
import torch

from afinar.predict import generation
from afinar.predict.batching import MemoryModel, ProgressLog, auto_batch_size
from afinar.predict.decoding import StaticDecoder, bucket_length
from afinar.predict.generation import (
    GenerationSettings,
    generate_predictions,
    load_for_inference,
    read_test_split,
)
from afinar.train.demo_model import TinyModelSpec, build_tiny_model

WORDS = "o réu autor processo juiz sentença recurso prazo nome idade cidade valor ação parte autos".split()
SMALL = TinyModelSpec(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 20))) for _ in range(300)]
    return build_tiny_model(tmp_path_factory.mktemp("models") / "base", corpus, vocab_size=400, spec=SMALL)


def _split(path: Path, n: int, seed: int = 1) -> Path:
    """Prompts of 3-90 words: several 64-token buckets, so batches have different shapes."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 90)))
        answer = json.dumps({"nome": rng.choice(WORDS)}, ensure_ascii=False)
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
    base = {"batch_size": 4, "max_new_tokens": 16, "max_seq_length": 512}
    base.update(kw)
    return GenerationSettings(**base)


def _answers(preds):
    return [(p.id, p.gerado, p.tokens_saida, p.limite_atingido) for p in preds]


def test_bucket_length():
    assert [bucket_length(n) for n in (1, 64, 65, 200)] == [64, 64, 128, 256]


def test_static_decoder_matches_generate_token_for_token(tiny_base, tmp_path):
    loaded = load_for_inference(str(tiny_base), None)
    records = read_test_split(_split(tmp_path / "teste.parquet", 11))
    old = generate_predictions(
        loaded.model, loaded.tokenizer, records, _settings(), progress=False, engine="generate"
    )
    for size in (3, 11):
        new = generate_predictions(
            loaded.model,
            loaded.tokenizer,
            records,
            _settings(batch_size=size),
            progress=False,
            engine="static",
        )
        assert _answers(new) == _answers(old)
    assert len({p.tokens_prompt // 64 for p in old}) > 1  # the prompts span several length buckets


def test_static_decoder_stops_rows_independently(tiny_base, tmp_path):
    """A row that emits a stop token gets pads after it while the others go on; the cut is the same as
    generate's; a batch where every row stopped ends early."""
    loaded = load_for_inference(str(tiny_base), None)
    records = read_test_split(_split(tmp_path / "teste.parquet", 6))
    free = generate_predictions(
        loaded.model, loaded.tokenizer, records, _settings(), progress=False, engine="generate"
    )
    # make the third token one row greedily emits a stop token: that row ends early
    text = loaded.tokenizer.apply_chat_template(
        records[0].messages, add_generation_prompt=True, tokenize=False
    )
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    decoder = StaticDecoder(loaded.model, loaded.tokenizer.pad_token_id, [], 3, use_graphs=False)
    third = decoder.generate([ids])[0][2]
    loaded.model.generation_config.eos_token_id = [third, loaded.tokenizer.eos_token_id]
    old = generate_predictions(
        loaded.model, loaded.tokenizer, records, _settings(), progress=False, engine="generate"
    )
    new = generate_predictions(
        loaded.model, loaded.tokenizer, records, _settings(), progress=False, engine="static"
    )
    assert _answers(new) == _answers(old)
    assert old[0].tokens_saida <= 2 < free[0].tokens_saida
    assert any(p.tokens_saida > old[0].tokens_saida for p in old)


def test_static_sampling_is_seeded_and_differs_from_greedy(tiny_base, tmp_path):
    loaded = load_for_inference(str(tiny_base), None)
    records = read_test_split(_split(tmp_path / "teste.parquet", 5))
    sampled = _settings(temperatura=1.5, top_p=0.9, seed=7)
    a = generate_predictions(
        loaded.model, loaded.tokenizer, records, sampled, progress=False, engine="static"
    )
    b = generate_predictions(
        loaded.model, loaded.tokenizer, records, sampled, progress=False, engine="static"
    )
    greedy = generate_predictions(
        loaded.model, loaded.tokenizer, records, _settings(), progress=False, engine="static"
    )
    assert _answers(a) == _answers(b)
    assert [p.gerado for p in a] != [p.gerado for p in greedy]


def _adapter(base_dir: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return out


def test_merged_adapter_predicts_like_the_unmerged_one(tiny_base, tmp_path):
    from peft import PeftModel

    adapter = _adapter(tiny_base, tmp_path / "adapter")
    merged = load_for_inference(str(tiny_base), adapter)
    unmerged = load_for_inference(str(tiny_base), adapter, merge=False)
    base = load_for_inference(str(tiny_base), None)
    assert isinstance(unmerged.model, PeftModel) and not isinstance(merged.model, PeftModel)
    records = read_test_split(_split(tmp_path / "teste.parquet", 8))
    a = generate_predictions(
        merged.model, merged.tokenizer, records, _settings(), progress=False, engine="static"
    )
    b = generate_predictions(
        unmerged.model, unmerged.tokenizer, records, _settings(), progress=False, engine="generate"
    )
    c = generate_predictions(base.model, base.tokenizer, records, _settings(), progress=False)
    assert _answers(a) == _answers(b)
    assert [p.gerado for p in a] != [p.gerado for p in c]  # the adapter does change the answers


def test_out_of_memory_halves_the_batch_and_keeps_predictions(tiny_base, tmp_path, monkeypatch, caplog):
    """A real engine behind a fault injector that raises the CUDA out-of-memory error for batches of more
    than 2 prompts: the batch is retried in halves, and the answers are those of an undisturbed run."""
    loaded = load_for_inference(str(tiny_base), None)
    records = read_test_split(_split(tmp_path / "teste.parquet", 9))
    plain = generate_predictions(
        loaded.model, loaded.tokenizer, records, _settings(batch_size=8), progress=False
    )
    real_choose = generation.choose_engine
    seen: list[int] = []

    class Tight:
        def __init__(self, inner):
            self.inner, self.name = inner, inner.name

        def generate(self, prompts):
            seen.append(len(prompts))
            if len(prompts) > 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return self.inner.generate(prompts)

        def release(self):
            self.inner.release()

    monkeypatch.setattr(generation, "choose_engine", lambda *a, **k: Tight(real_choose(*a, **k)))
    with caplog.at_level(logging.WARNING, logger="afinar"):
        preds = generate_predictions(
            loaded.model, loaded.tokenizer, records, _settings(batch_size=8), progress=False
        )
    assert _answers(preds) == _answers(plain)
    assert seen[:3] == [8, 4, 2] and max(seen[3:]) <= 2
    assert "out of GPU memory on a batch of 8 prompts; retrying it in batches of 4" in caplog.text


def test_out_of_memory_on_one_prompt_is_one_clear_error(tiny_base, tmp_path, monkeypatch):
    loaded = load_for_inference(str(tiny_base), None)
    records = read_test_split(_split(tmp_path / "teste.parquet", 2))

    class Full:
        name = "generate"

        def generate(self, prompts):
            raise torch.OutOfMemoryError("CUDA out of memory")

        def release(self):
            pass

    monkeypatch.setattr(generation, "choose_engine", lambda *a, **k: Full())
    with pytest.raises(generation.AfinarError, match=r"record r\d\d: out of GPU memory on a single prompt"):
        generate_predictions(loaded.model, loaded.tokenizer, records, _settings(batch_size=1), progress=False)


def test_auto_batch_size_follows_the_token_budget(tiny_base):
    loaded = load_for_inference(str(tiny_base), None)
    memory = MemoryModel.of(loaded.model)
    one_short = memory.batch_bytes(1, 64, 64 + 128)
    assert auto_batch_size(memory, one_short * 10, 64, 192) == 10
    assert auto_batch_size(memory, one_short * 10, 640, 768) < 10  # longer prompts, fewer of them
    assert auto_batch_size(memory, 1, 64, 192) == 1  # never zero
    assert auto_batch_size(memory, one_short * 10_000, 64, 192, cap=256) == 256
    # on a CPU, auto is the generate path's fixed batch
    settings = GenerationSettings.from_config({"batch_size": "auto"}, max_seq_length=1024)
    assert settings.batch_size is None


def test_progress_line_has_tokens_per_second_and_eta(caplog):
    meter = ProgressLog("predict", 10, interval_s=0.0)
    with caplog.at_level(logging.INFO, logger="afinar"):
        meter.update(4, 400)
    assert "predict: 4/10 records (40%)" in caplog.text
    assert "tokens/s" in caplog.text and "ETA 0:" in caplog.text


def test_predict_job_makes_the_base_predictions_predict_base_reuses(tiny_base, tmp_path, caplog):
    """One load for both prediction sets: the predict job keeps the base predictions under the cache key;
    predict_base copies them, and they equal what predict_base computes on its own."""
    from afinar.predict.base_cache import cache_file, cache_key
    from afinar.predict.generation import run_prediction

    adapter = _adapter(tiny_base, tmp_path / "adapter")
    split = _split(tmp_path / "data" / "teste.parquet", 6)
    settings = _settings()
    out = tmp_path / "exp" / "predicoes"
    key = cache_key(split, str(tiny_base), {"predicao": {"max_new_tokens": 16}})
    kept = cache_file(out, key)
    run_prediction(split, out / "teste.jsonl", str(tiny_base), adapter, settings, base_cache=kept)
    assert kept.is_file() and (out / "teste.jsonl").is_file()
    with caplog.at_level(logging.INFO, logger="afinar"):
        run_prediction(split, out / "teste_base.jsonl", str(tiny_base), None, settings, base_cache=kept)
    assert "reused the base-model predictions" in caplog.text
    alone = run_prediction(split, tmp_path / "alone.jsonl", str(tiny_base), None, settings)

    def rows(path: Path) -> list[dict]:
        return [
            {k: v for k, v in json.loads(x).items() if k != "segundos"} for x in path.read_text().splitlines()
        ]

    assert rows(out / "teste_base.jsonl") == rows(tmp_path / "alone.jsonl")
    assert [json.loads(x)["gerado"] for x in (out / "teste.jsonl").read_text().splitlines()] != [
        p.gerado for p in alone
    ]
    # another key (here: other settings) never matches the kept file
    other = cache_file(out, cache_key(split, str(tiny_base), {"predicao": {"max_new_tokens": 8}}))
    assert other != kept and not other.exists()


def test_sliding_window_model_falls_back_to_generate(tiny_base, tmp_path, caplog):
    """A model with sliding-window layers is refused by the static decoder and decoded by generate."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from afinar.predict.decoding import Unsupported

    loaded = load_for_inference(str(tiny_base), None)
    cfg = AutoConfig.from_pretrained(tiny_base)
    cfg.use_sliding_window, cfg.sliding_window, cfg.max_window_layers = True, 16, 0
    cfg.layer_types = ["sliding_attention"] * cfg.num_hidden_layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    model.generation_config = loaded.model.generation_config
    with pytest.raises(Unsupported):
        StaticDecoder(model, 0, [1], 4, use_graphs=False).generate([[5, 6, 7]])
    records = read_test_split(_split(tmp_path / "teste.parquet", 4))
    with caplog.at_level(logging.WARNING, logger="afinar"):
        forced = generate_predictions(
            model, loaded.tokenizer, records, _settings(), progress=False, engine="static"
        )
    plain = generate_predictions(
        model, loaded.tokenizer, records, _settings(), progress=False, engine="generate"
    )
    assert "does not handle this model" in caplog.text
    assert _answers(forced) == _answers(plain)
