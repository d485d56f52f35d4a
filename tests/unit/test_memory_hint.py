"""The hint that a GPU has room to train without gradient checkpointing (afinar.train.memory_hint)."""

from __future__ import annotations

from afinar.train.memory_hint import (
    GB,
    MARGIN,
    activation_bytes,
    checkpointing_hint,
    largest_step_tokens,
    model_shape,
)

# Llama 3 8B's config.json (the shape of the 8B benchmark model)
LLAMA3_8B = {"num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 14336, "vocab_size": 128256}


def test_estimate_bounds_the_measured_8b_run():
    # H200, 2026-12-02 (docs/benchmarks.md, run 2): 8,192-token steps, allocated 16.85 GB with checkpointing and
    # 43.85 GB without; the estimate must not be below what the run really kept
    measured = (43.85 - 16.85) * 1e9
    estimate = activation_bytes(32, 4096, 14336, 8192)
    assert measured <= estimate <= 2 * measured
    # linear in tokens and layers
    assert activation_bytes(32, 4096, 14336, 4096) * 2 == estimate
    assert activation_bytes(16, 4096, 14336, 8192) * 2 == estimate


def test_model_shape_reads_plain_and_nested_configs():
    assert model_shape(LLAMA3_8B) == (32, 4096, 14336)
    # multimodal configs (Gemma 3) keep the language model's shape under text_config
    gemma = {"model_type": "gemma3", "text_config": {"num_hidden_layers": 26, "hidden_size": 1152}}
    assert model_shape(gemma) == (26, 1152, 4 * 1152)  # no intermediate_size: the usual 4x
    assert model_shape({"n_layer": 12, "n_embd": 768}) is None  # GPT-2 names: no estimate, no hint
    assert model_shape({"num_hidden_layers": "x", "hidden_size": 8}) is None


def test_largest_step_tokens():
    lengths = [40, 300, 120]
    assert largest_step_tokens(lengths, 8, 1024, None) == 8 * 300
    assert largest_step_tokens(lengths, 8, 256, None) == 8 * 256  # rows are cut at max_seq_length
    assert largest_step_tokens(lengths, 8, 1024, 8192) == 8192  # tokens_por_lote bounds every step
    assert largest_step_tokens([], 4, 512, None) == 4 * 512


def test_hint_only_when_the_activations_fit_with_margin():
    need = activation_bytes(32, 4096, 14336, 8192)
    line = checkpointing_hint(LLAMA3_8B, 8192, int(122 * GB))  # an H200 after loading the 8B in bf16
    assert line is not None
    assert "treinamento.gradient_checkpointing: false" in line
    assert "8192 tokens" in line and f"{need / GB:.1f} GB" in line and "122.0 GB are free" in line
    assert checkpointing_hint(LLAMA3_8B, 8192, int(need * MARGIN) - 1) is None  # a 24-80 GB card: no hint
    assert checkpointing_hint(LLAMA3_8B, 8192, int(need * MARGIN) + 1) is not None
    assert checkpointing_hint({"n_layer": 12}, 8192, int(1000 * GB)) is None
    assert checkpointing_hint(LLAMA3_8B, 0, int(1000 * GB)) is None
