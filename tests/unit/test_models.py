"""Model sources: local folders, offline hub ids, limits and adapters — each problem one clear line."""

from __future__ import annotations

import json

import pytest

from afinar.errors import AfinarError
from afinar.train import models


def test_local_folder_is_accepted(tiny_model_dir):
    assert models.resolve_model_source(str(tiny_model_dir)) == str(tiny_model_dir)
    assert models.model_max_length(models.read_model_config(str(tiny_model_dir))) == 4096


def test_missing_and_corrupt_folders(tmp_path):
    with pytest.raises(AfinarError, match="not found — download the model first"):
        models.resolve_model_source(str(tmp_path / "nope"))
    with pytest.raises(AfinarError, match="not found"):
        models.resolve_model_source("results/demo/modelo-inexistente")
    (tmp_path / "broken").mkdir()
    with pytest.raises(AfinarError, match="no config.json"):
        models.resolve_model_source(str(tmp_path / "broken"))
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(AfinarError, match="corrupt"):
        models.read_model_config(str(tmp_path / "broken"))


def test_corrupt_weights_fail_cleanly(tiny_model_dir, tmp_path):
    import shutil

    import torch

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    (bad / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(AfinarError, match="cannot load the model"):
        models.load_causal_lm(str(bad), torch.float32)


def test_hub_id_offline_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(AfinarError, match="HF_HUB_OFFLINE is set — download it first"):
        models.resolve_model_source("Qwen/Qwen2.5-0.5B-Instruct")


def test_hub_id_online_is_passed_through(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert models.resolve_model_source("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"


def test_max_seq_length_limit(tiny_model_dir):
    cfg = models.read_model_config(str(tiny_model_dir))
    models.check_max_seq_length(4096, cfg, "m")
    with pytest.raises(AfinarError, match="above the limit of m \\(4096\\)"):
        models.check_max_seq_length(8192, cfg, "m")


def test_quantization_needs_cuda():
    models.check_quantization(16, cuda=False)
    models.check_quantization(0, cuda=False)
    with pytest.raises(AfinarError, match="4-bit loading needs a CUDA GPU"):
        models.check_quantization(4, cuda=False)


def test_adapter_for_another_base(tmp_path, tiny_model_dir):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen2.5-7B"}))
    with pytest.raises(AfinarError, match=r"trained on Qwen/Qwen2.5-7B, not on modelo.base .*modelo-base"):
        models.check_adapter_matches_base(adapter, str(tiny_model_dir))
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir)}))
    models.check_adapter_matches_base(adapter, str(tiny_model_dir))
    with pytest.raises(AfinarError, match="no adapter_config.json"):
        models.check_adapter_matches_base(tmp_path, "x")


@pytest.mark.parametrize(
    ("value", "backend", "bits", "world", "expected"),
    [
        (None, "unsloth", 4, 1, True),  # QLoRA users chose memory over speed
        (None, "unsloth", 8, 1, True),
        (None, "unsloth", 16, 1, "auto"),  # bf16: Unsloth moves it only when the GPU lacks room
        (False, "unsloth", 4, 1, False),
        (True, "unsloth", 16, 1, True),
        (True, "unsloth", 4, 2, False),  # each distributed process keeps its whole model
        (None, "unsloth", 4, 2, False),
        (True, "transformers", 4, 1, False),  # Unsloth's feature
        (None, "transformers", 4, 1, False),
    ],
)
def test_embedding_offload_setting(value, backend, bits, world, expected):
    assert models.embedding_offload(value, backend, bits, world) == expected


def test_a_tied_table_stays_quietly_unless_asked():
    assert models.embedding_offload(None, "unsloth", 4, 1, tied=True) == "auto"  # Unsloth: never for tied
    assert models.embedding_offload(True, "unsloth", 4, 1, tied=True) is True  # Unsloth says why it declines


def test_tied_embeddings_read_from_config(tiny_model_dir):
    assert models.ties_embeddings(models.read_model_config(str(tiny_model_dir))) is True  # tiny Qwen2
    assert models.ties_embeddings({"tie_word_embeddings": False}) is False  # Llama 3 8B, Qwen2.5-7B
    assert (
        models.ties_embeddings({"text_config": {"tie_word_embeddings": False}}) is False
    )  # nested (Gemma 3)
    assert models.ties_embeddings({}) is True  # transformers' default


def test_embedding_on_cpu_counts_only_a_split_model(tiny_model_dir):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model = models.load_causal_lm(str(tiny_model_dir), torch.float32)
    assert models.embedding_on_cpu(model) == 0.0  # a CPU training: nothing was moved
    with torch.device("meta"):  # "meta" stands in for the GPU the rest of the model is on
        split = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_model_dir))
    assert models.embedding_on_cpu(split) == 0.0
    table = split.get_input_embeddings().to_empty(device="cpu").weight
    assert models.embedding_on_cpu(split) == pytest.approx(table.numel() * 4 / 1e9)
