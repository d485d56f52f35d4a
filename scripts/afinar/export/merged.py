"""Merged 16-bit export: the LoRA adapter folded into its base model, loadable without PEFT.

The merge always happens on the base model loaded in 16-bit, never on quantised weights: an adapter
trained on a 4-bit base (QLoRA) is merged onto the dequantised base, as PEFT recommends, because
rounding the merged weights back to 4 bits would throw away most of what the adapter learned. The
result is one plain Hugging Face folder (weights, config, generation config, tokenizer and chat
template) that ``AutoModelForCausalLM.from_pretrained`` loads, and that the GGUF and ONNX exports
start from.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from afinar.errors import AfinarError
from afinar.io import atomic_dir

log = logging.getLogger("afinar.export.merged")

MERGED_DTYPES = ("bfloat16", "float16", "float32")
METADATA_FILE = "afinar_export.json"


def export_targets(exportacao: dict[str, Any], exp: str) -> list[str]:
    """The export files one experiment must produce, from the normalized ``exportacao`` section.

    Nothing is exported unless asked; GGUF and ONNX are built from the merged model, which Snakemake
    then produces as their input even when ``merged`` itself is false.
    """
    base = f"results/{exp}/exportado"
    targets: list[str] = []
    if exportacao.get("merged"):
        targets.append(f"{base}/merged")
    gguf = str(exportacao.get("gguf") or "").strip().lower()
    if gguf:
        targets.append(f"{base}/modelo-{gguf}.gguf")
    if exportacao.get("onnx"):
        targets.append(f"{base}/onnx")
    return targets


def merged_dtype(precisao: str = "auto") -> str:
    """The 16-bit type of the merged weights: fp16 when training used fp16, bfloat16 otherwise.

    bfloat16 keeps float32's range (no overflow in the merged sums) and is what current checkpoints
    ship in; fp16 is kept for users whose GPUs (V100, T4) trained in it.
    """
    return "float16" if str(precisao).lower() == "fp16" else "bfloat16"


def read_model_config(model_dir: str | Path) -> dict[str, Any]:
    """A local model folder's config.json, or {} for a Hub name (not available offline here)."""
    config = Path(model_dir) / "config.json"
    if config.is_file():
        data: dict[str, Any] = json.loads(config.read_text(encoding="utf-8"))
        return data
    return {}


def is_quantized(config: dict[str, Any]) -> bool:
    """Whether a model's weights on disk are quantised (bitsandbytes, GPTQ, AWQ, ...)."""
    return bool(config.get("quantization_config"))


def merge_adapter(
    adapter_dir: str | Path,
    base_model: str,
    out_dir: str | Path,
    dtype: str = "bfloat16",
    trained_nbits: int = 16,
) -> Path:
    """Merge ``adapter_dir`` (PEFT LoRA, or a full model when ``lora.r`` was 0) into ``base_model`` and save.

    The folder is built under a temporary name next to ``out_dir`` and renamed at the end, so it either
    holds a complete model or does not exist.
    """
    import torch
    from transformers import AutoModelForCausalLM

    adapter, out = Path(adapter_dir), Path(out_dir)
    if dtype not in MERGED_DTYPES:
        raise AfinarError(f"merged export: dtype {dtype!r} unknown — use one of {', '.join(MERGED_DTYPES)}")
    torch_dtype = getattr(torch, dtype)
    is_lora = (adapter / "adapter_config.json").is_file()
    if not is_lora and not (adapter / "config.json").is_file():
        raise AfinarError(f"{adapter}: neither a PEFT adapter nor a model folder — run the train rule first")

    if is_lora:
        model = _load_base_16bit(base_model, torch_dtype)
        model = _apply_and_merge(model, adapter, base_model)
        source = "lora"
    else:
        log.info("%s holds a full model (lora.r: 0): saving it in %s", adapter, dtype)
        model = AutoModelForCausalLM.from_pretrained(adapter, dtype=torch_dtype)
        source = "full"
    model.to(torch_dtype)
    tokenizer = _load_tokenizer(adapter if _has_tokenizer(adapter) else base_model)

    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        meta = {
            "base": base_model,
            "adapter": str(adapter),
            "origem": source,
            "dtype": dtype,
            "treinado_em_nbits": trained_nbits,
            "quantizacao_no_treino_descartada": trained_nbits in (4, 8),
        }
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    n_params = sum(p.numel() for p in model.parameters())
    log.info("merged model (%s parameters, %s) written to %s", f"{n_params:,}", dtype, out)
    return out


def _load_base_16bit(base_model: str, torch_dtype: Any) -> Any:
    """The base model in 16-bit; a checkpoint stored quantised is dequantised first (needs CUDA)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = read_model_config(base_model)
    if not is_quantized(config):
        try:
            return AutoModelForCausalLM.from_pretrained(base_model, dtype=torch_dtype)
        except OSError as exc:
            raise AfinarError(
                f"modelo.base: cannot load {base_model} ({str(exc).splitlines()[0]}) — it must be a local model "
                f"folder or a model already in the Hugging Face cache"
            ) from None
    method = config["quantization_config"].get("quant_method", "?")
    if not torch.cuda.is_available():
        raise AfinarError(
            f"modelo.base: {base_model} is stored quantised ({method}); merging needs its 16-bit weights — set "
            f"modelo.base to the unquantised model (e.g. without the '-bnb-4bit' suffix) or run this rule on a GPU "
            f"so it can be dequantised"
        )
    log.info(
        "%s is stored quantised (%s): loading on the GPU and dequantising before the merge",
        base_model,
        method,
    )
    model = AutoModelForCausalLM.from_pretrained(base_model, device_map={"": 0})
    model = model.dequantize()
    return model.to(device="cpu", dtype=torch_dtype)


def _apply_and_merge(model: Any, adapter: Path, base_model: str) -> Any:
    """Load the LoRA weights onto ``model`` and fold them in (``merge_and_unload`` with a NaN check)."""
    from peft import PeftModel

    declared = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")).get(
        "base_model_name_or_path", ""
    )
    if declared and Path(str(declared)).name != Path(base_model).name:
        log.warning("%s was trained on %s, merging onto modelo.base %s", adapter, declared, base_model)
    try:
        peft_model = PeftModel.from_pretrained(model, adapter)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise AfinarError(
            f"{adapter}: adapter does not fit base model {base_model} ({str(exc).splitlines()[0][:200]}) — "
            f"set modelo.base to the model it was trained on ({declared or 'see adapter_config.json'})"
        ) from None
    try:
        return peft_model.merge_and_unload(safe_merge=True)
    except ValueError as exc:  # safe_merge found NaNs: the adapter is broken, don't ship it
        raise AfinarError(
            f"{adapter}: merging produced invalid weights ({exc}) — retrain or check the adapter"
        ) from None


def _has_tokenizer(folder: Path) -> bool:
    return any(
        (folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    )


def _load_tokenizer(source: str | Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)
