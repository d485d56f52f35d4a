"""Exports on the real tiny Qwen2 model: merged 16-bit folder, GGUF (llama.cpp's converter), ONNX.

The LoRA adapter has random non-zero B matrices, so the merge changes the model's output: a merged
model equal to the base would fail ``test_merge_changes_the_model``.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from afinar.errors import AfinarError
from afinar.export.gguf import (
    CONVERTER,
    convert_to_gguf,
    extract_converter,
    find_converter,
    supported_architectures,
)
from afinar.export.merged import export_targets, merge_adapter, merged_dtype

PROMPTS = ["Extraia nome, idade e cidade em JSON.\nNome: Ana Silva.", "Cadastro recebido. Idade: 42 anos."]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base_dir: Path, out: Path, seed: int = 7) -> Path:
    """A PEFT LoRA adapter on ``base_dir`` with random (non-zero) A and B, saved with the tokenizer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return out


def greedy(model, tokenizer, n_new: int = 12) -> list[list[int]]:
    """Greedy continuation token ids of PROMPTS, one prompt at a time (no padding effects)."""
    outs = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False)
        outs.append(gen[0, ids["input_ids"].shape[1] :].tolist())
    return outs


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "adapter")


@pytest.fixture(scope="module")
def merged_dir(tiny_model_dir, adapter_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exp") / "exportado" / "merged"
    return merge_adapter(adapter_dir, str(tiny_model_dir), out, dtype="bfloat16", trained_nbits=4)


def test_export_targets_follow_exportacao():
    none = {"merged": False, "gguf": "", "llama_cpp": "", "onnx": False}
    assert export_targets(none, "e1") == []
    every = {"merged": True, "gguf": "Q8_0", "llama_cpp": "", "onnx": True}
    assert export_targets(every, "e1") == [
        "results/e1/exportado/merged",
        "results/e1/exportado/modelo-q8_0.gguf",
        "results/e1/exportado/onnx",
    ]
    assert merged_dtype("fp16") == "float16" and merged_dtype("auto") == "bfloat16"


def test_merged_generates_like_base_plus_adapter(tiny_model_dir, adapter_dir, tmp_path):
    """In float32 the merge is exact: same greedy tokens and logits as the unmerged PEFT model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = merge_adapter(adapter_dir, str(tiny_model_dir), tmp_path / "merged", dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(out)
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.dtype == torch.float32
    assert not (out / "adapter_config.json").exists()  # a plain model, no PEFT needed to load it

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, adapter_dir).eval()
    assert greedy(merged, tokenizer) == greedy(with_adapter, tokenizer)
    ids = tokenizer(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(merged(**ids).logits, with_adapter(**ids).logits, atol=1e-4, rtol=1e-4)


def test_bf16_merge_is_base_plus_lora_delta_to_bf16_precision(tiny_model_dir, adapter_dir, merged_dir):
    """bf16 greedy decoding of a random tiny model flips on rounding, so check the weights themselves:
    merged = W + (alpha/r)·B·A within bf16 resolution on adapted layers, untouched layers bit-equal."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    lora = load_file(adapter_dir / "adapter_model.safetensors")
    scale = json.loads((adapter_dir / "adapter_config.json").read_text())["lora_alpha"] / 4
    merged = load_file(merged_dir / "model.safetensors")
    adapted = 0
    for name, weight in merged.items():
        assert weight.dtype == torch.bfloat16
        key_a = "base_model.model." + name.replace(".weight", ".lora_A.weight")
        if key_a in lora:
            delta = scale * lora[key_a.replace("lora_A", "lora_B")].float() @ lora[key_a].float()
            expected = base[name] + delta
            assert (delta.abs().max() > 1e-3) and not torch.equal(
                weight.float(), base[name].bfloat16().float()
            )
            torch.testing.assert_close(weight.float(), expected, atol=1e-2, rtol=2**-7)
            adapted += 1
        else:
            assert torch.equal(weight, base[name].bfloat16())
    assert adapted == 7 * json.loads((merged_dir / "config.json").read_text())["num_hidden_layers"]


def test_merge_changes_the_model(tiny_model_dir, merged_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    ids = tokenizer(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(**ids).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)(**ids).logits
    assert (base - merged).abs().max() > 0.05
    meta = json.loads((merged_dir / "afinar_export.json").read_text())
    assert meta["origem"] == "lora" and meta["dtype"] == "bfloat16" and meta["treinado_em_nbits"] == 4
    assert tokenizer.chat_template  # the chat template travels with the merged model
    assert not list(merged_dir.parent.glob(".merged.*"))  # no temporary folder left behind


def test_full_model_folder_is_saved_in_16_bit(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = merge_adapter(tiny_model_dir, str(tiny_model_dir), tmp_path / "merged")
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    assert json.loads((out / "afinar_export.json").read_text())["origem"] == "full"


def test_merge_bad_inputs_are_one_line_errors(tiny_model_dir, adapter_dir, tmp_path):
    with pytest.raises(AfinarError, match="neither a PEFT adapter nor a model folder"):
        merge_adapter(tmp_path / "missing", str(tiny_model_dir), tmp_path / "m1")

    from transformers import AutoConfig, AutoModelForCausalLM

    other = AutoConfig.from_pretrained(tiny_model_dir)
    other.hidden_size, other.intermediate_size = 96, 256
    AutoModelForCausalLM.from_config(other).save_pretrained(tmp_path / "other-base")
    with pytest.raises(AfinarError, match="does not fit base model") as info:
        merge_adapter(adapter_dir, str(tmp_path / "other-base"), tmp_path / "m2")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "m2").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the quantised base is dequantised instead")
def test_merge_refuses_quantised_base_without_gpu(adapter_dir, tmp_path):
    base = tmp_path / "base-bnb-4bit"
    base.mkdir()
    config = {
        "model_type": "qwen2",
        "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True},
    }
    (base / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        AfinarError, match="stored quantised .bitsandbytes.; merging needs its 16-bit weights"
    ):
        merge_adapter(adapter_dir, str(base), tmp_path / "m")
    assert not (tmp_path / "m").exists()


# --- GGUF -------------------------------------------------------------------------------------------


def installed_converter() -> Path:
    try:
        return find_converter("")
    except AfinarError:
        pytest.skip(
            "llama.cpp converter not installed: run `python -m afinar.export.gguf fetch` (make install does)"
        )


def test_gguf_q8_0_reads_back_with_the_same_tensors(merged_dir, tmp_path):
    from gguf import GGUFReader
    from safetensors import safe_open

    installed_converter()
    out = convert_to_gguf(merged_dir, tmp_path / "modelo-q8_0.gguf", "q8_0", pre_tokenizer="qwen2")
    reader = GGUFReader(out)
    assert reader.fields["general.architecture"].contents() == "qwen2"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "qwen2"
    with safe_open(merged_dir / "model.safetensors", "pt") as st:
        hf_names = list(st.keys())
    names = {t.name: t for t in reader.tensors}
    assert len(names) == len(hf_names)
    n_layers = json.loads((merged_dir / "config.json").read_text())["num_hidden_layers"]
    for i in range(n_layers):
        for part in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
            assert names[f"blk.{i}.{part}.weight"].tensor_type.name == "Q8_0"
    assert names["token_embd.weight"].tensor_type.name == "Q8_0"
    assert names["output_norm.weight"].tensor_type.name == "F32"
    assert not list(tmp_path.glob(".modelo-q8_0.gguf*"))


def test_gguf_unknown_tokenizer_names_the_fix(merged_dir, tmp_path):
    installed_converter()
    with pytest.raises(AfinarError, match="pre-tokenizer was not recognized.*exportacao.gguf_pre_tokenizer"):
        convert_to_gguf(merged_dir, tmp_path / "m.gguf", "f16")
    assert not (tmp_path / "m.gguf").exists()


def test_gguf_bad_requests_fail_before_converting(merged_dir, tmp_path):
    converter = installed_converter()
    assert "Qwen2ForCausalLM" in supported_architectures(converter)
    strange = tmp_path / "strange"
    shutil.copytree(merged_dir, strange)
    config = json.loads((strange / "config.json").read_text())
    config["architectures"] = ["FooBarForCausalLM"]
    (strange / "config.json").write_text(json.dumps(config))
    with pytest.raises(AfinarError, match="model family FooBarForCausalLM is not supported"):
        convert_to_gguf(strange, tmp_path / "x.gguf", "q8_0")
    with pytest.raises(AfinarError, match="'nope' is not a llama.cpp pre-tokenizer"):
        convert_to_gguf(merged_dir, tmp_path / "x.gguf", "q8_0", pre_tokenizer="nope")
    with pytest.raises(AfinarError, match="needs llama.cpp's llama-quantize"):
        convert_to_gguf(merged_dir, tmp_path / "x.gguf", "q4_k_m", llama_cpp=converter)
    with pytest.raises(AfinarError, match=f"exportacao.llama_cpp: .* has no {CONVERTER}"):
        convert_to_gguf(merged_dir, tmp_path / "x.gguf", "q8_0", llama_cpp=tmp_path)
    assert not (tmp_path / "x.gguf").exists()


def test_extract_converter_takes_only_the_converter_from_an_sdist(tmp_path):
    root = tmp_path / "src" / "llama_cpp_python-9.9.9"
    files = {
        f"vendor/llama.cpp/{CONVERTER}": "print('convert')\n",
        "vendor/llama.cpp/conversion/__init__.py": "",
        "vendor/llama.cpp/gguf-py/gguf/__init__.py": "",
        "vendor/llama.cpp/LICENSE": "MIT\n",
        "vendor/llama.cpp/ggml/src/big.c": "int x;\n",
        "llama_cpp/__init__.py": "",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    sdist = tmp_path / "llama_cpp_python-9.9.9.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(root, arcname=root.name)
    dest = tmp_path / "share" / "llama.cpp"
    (dest / "stale").mkdir(parents=True)  # an older install is replaced whole
    extract_converter(sdist, dest)
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert got == sorted(["LICENSE", CONVERTER, "conversion/__init__.py", "gguf-py/gguf/__init__.py"])
    assert find_converter(dest) == dest

    not_llama = tmp_path / "other.tar.gz"
    with tarfile.open(not_llama, "w:gz") as tar:
        tar.add(root / "llama_cpp", arcname="pkg/llama_cpp")
    with pytest.raises(AfinarError, match="not a llama-cpp-python sdist"):
        extract_converter(not_llama, tmp_path / "other")
    assert not (tmp_path / "other").exists()


# --- ONNX -------------------------------------------------------------------------------------------


def test_onnx_export_matches_pytorch(merged_dir, tmp_path):
    import numpy as np
    import onnxruntime
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from afinar.export.onnx import export_onnx

    out = tmp_path / "onnx"
    result = export_onnx(merged_dir, out)
    report = json.loads((out / "validacao.json").read_text())
    assert report["ok"] and report["argmax_iguais"] and report["familia"] == "qwen2"
    assert report["max_abs_diff"] <= report["tolerance"] == result.tolerance

    # independent check on a batch shape the validation did not use (dynamic batch and length)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tokenizer(PROMPTS[1])["input_ids"]] * 3)
    mask = torch.ones_like(ids)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)(
            ids, attention_mask=mask
        ).logits
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-3, rtol=1e-3)


def test_onnx_refuses_a_quantised_model(tmp_path):
    from afinar.export.onnx import export_onnx

    model = tmp_path / "adapter-4bit"
    model.mkdir()
    config = {"model_type": "llama", "quantization_config": {"quant_method": "bitsandbytes"}}
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(AfinarError, match="needs a 16-bit model.*exportacao.merged: true") as info:
        export_onnx(model, tmp_path / "onnx")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "onnx").exists()
