"""ONNX export of the merged model with ``torch.onnx`` (dynamo exporter), checked with onnxruntime.

optimum's ONNX exporter (optimum-onnx 0.1) requires transformers < 4.58, so it cannot run beside
transformers 5; ``torch.onnx.export(dynamo=True)`` is maintained with torch itself and follows new
architectures through ``torch.export``. The graph maps ``input_ids`` and ``attention_mask`` (batch and
sequence dynamic) to the logits of every position, without a KV cache: right for scoring,
classification-style use and short generations on CPU; for fast chat generation use GGUF.

An export is only kept after onnxruntime reproduces PyTorch's next-token logits on real token ids
(two lengths, one left-padded row) within a tolerance: the numbers land in ``validacao.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from afinar.errors import AfinarError
from afinar.export.merged import is_quantized, read_model_config
from afinar.io import atomic_dir

log = logging.getLogger("afinar.export.onnx")

ONNX_FILE = "model.onnx"
VALIDATION_FILE = "validacao.json"
# Families this exporter was checked on (tests/unit/test_export.py); others are attempted and, when
# torch.export cannot trace them, refused with a message naming the family.
CHECKED_FAMILIES = ("qwen2",)
VALIDATION_TEXTS = (
    "Olá! Resuma o texto a seguir em JSON.",
    "The quick brown fox jumps over the lazy dog, 1234 times.",
)


@dataclass
class OnnxValidation:
    """How closely onnxruntime matched PyTorch on the last-position logits."""

    ok: bool
    max_abs_diff: float
    max_abs_logit: float
    tolerance: float
    argmax_iguais: bool
    formas_testadas: list[list[int]]
    familia: str
    opset: int | None
    torch: str
    onnxruntime: str


def export_onnx(
    model_dir: str | Path, out_dir: str | Path, atol: float = 1e-4, rtol: float = 1e-3
) -> OnnxValidation:
    """Export ``model_dir`` (a merged, unquantised model) to ``out_dir``/model.onnx and validate it.

    ``out_dir`` also receives config, generation config and tokenizer (so the folder is usable alone) and
    ``validacao.json``. It is built under a temporary name and appears only when validation passed.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, out = Path(model_dir), Path(out_dir)
    config = read_model_config(model_dir)
    if not config:
        raise AfinarError(
            f"{model_dir}: no config.json — ONNX is exported from the merged model (exportacao.merged)"
        )
    family = str(config.get("model_type", "?"))
    if is_quantized(config):
        method = config["quantization_config"].get("quant_method", "quantised")
        raise AfinarError(
            f"{model_dir}: ONNX export needs a 16-bit model, this one is stored {method} — export the merged "
            f"16-bit model first (exportacao.merged: true) and export ONNX from it"
        )
    if family not in CHECKED_FAMILIES:
        log.warning("ONNX export of model family %s was not checked by Afinar's tests; trying", family)

    # float32: onnxruntime's CPU kernels for bf16/fp16 are incomplete, and validation compares with fp32.
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    model.config.use_cache = False
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    with atomic_dir(out) as tmp:
        opset = _export(model, tmp / ONNX_FILE, family, model_dir)
        result = validate_onnx(model, tokenizer, tmp / ONNX_FILE, family, opset, atol, rtol)
        if not result.ok:
            raise AfinarError(
                f"{model_dir}: ONNX export of model family {family} does not reproduce PyTorch (max |Δlogit| "
                f"{result.max_abs_diff:.3g} > {result.tolerance:.3g}, same argmax: {result.argmax_iguais}) — "
                f"use the merged or GGUF export for this model"
            )
        for name in ("config.json", "generation_config.json"):
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
        tokenizer.save_pretrained(tmp)
        (tmp / VALIDATION_FILE).write_text(json.dumps(asdict(result), indent=2) + "\n", encoding="utf-8")
    log.info(
        "ONNX model written to %s (max |Δlogit| %.2e, tolerance %.2e)",
        out,
        result.max_abs_diff,
        result.tolerance,
    )
    return result


def _logits_only(model: Any) -> Any:
    """Wrap a causal LM so the exported graph has plain tensor inputs and one output (no cache objects)."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    return LogitsOnly(model)


def _export(model: Any, path: Path, family: str, model_dir: Path) -> int | None:
    """Trace and write the ONNX graph (weights as external data beside it, so >2 GB models work)."""
    import torch

    example = torch.ones((2, 8), dtype=torch.long)
    batch, seq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("sequence", min=2, max=1 << 17)
    try:
        program = torch.onnx.export(
            _logits_only(model),
            (example, torch.ones_like(example)),
            str(path),
            dynamo=True,
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            external_data=True,
            verbose=False,
        )
    except Exception as exc:  # torch.export's failures are long; the user needs the family and the gist
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise AfinarError(
            f"{model_dir}: torch.onnx cannot export model family {family} ({type(exc).__name__}: {first[:200]}) — "
            f"use the merged or GGUF export for this model"
        ) from None
    if not path.is_file():
        raise AfinarError(f"{model_dir}: torch.onnx wrote no {path.name} for model family {family}")
    opset = None
    try:
        opset = next(
            (o.version for o in program.model_proto.opset_import if o.domain in ("", "ai.onnx")), None
        )
    except AttributeError:
        pass
    return opset


def validate_onnx(
    model: Any,
    tokenizer: Any,
    onnx_path: Path,
    family: str = "?",
    opset: int | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> OnnxValidation:
    """Compare onnxruntime's and PyTorch's last-position logits on a left-padded batch of real prompts.

    Tolerance is ``atol + rtol * max|logit|``, because float32 kernels in two runtimes round differently
    in proportion to the logits' size; the argmax (the greedy next token) must match exactly.
    """
    import numpy as np
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = [tokenizer(text, add_special_tokens=True)["input_ids"] for text in VALIDATION_TEXTS]
    encoded = [ids if len(ids) >= 2 else ids + ids for ids in encoded]
    width = max(len(ids) for ids in encoded)
    batches = [
        # one row, its own length; then every text in one batch, left-padded as prediction does
        (np.array([encoded[0]], dtype=np.int64), np.ones((1, len(encoded[0])), dtype=np.int64)),
        (
            np.array([[pad_id] * (width - len(ids)) + ids for ids in encoded], dtype=np.int64),
            np.array([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], dtype=np.int64),
        ),
    ]
    max_diff, max_logit, same_argmax, shapes = 0.0, 0.0, True, []
    for ids, mask in batches:
        got = session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0][:, -1, :]
        with torch.no_grad():
            ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits[
                :, -1, :
            ]
        ref = ref.float().numpy()
        max_diff = max(max_diff, float(np.abs(got - ref).max()))
        max_logit = max(max_logit, float(np.abs(ref).max()))
        same_argmax &= bool((got.argmax(-1) == ref.argmax(-1)).all())
        shapes.append(list(ids.shape))
    tolerance = atol + rtol * max_logit
    return OnnxValidation(
        ok=bool(max_diff <= tolerance and same_argmax),
        max_abs_diff=max_diff,
        max_abs_logit=max_logit,
        tolerance=tolerance,
        argmax_iguais=same_argmax,
        formas_testadas=shapes,
        familia=family,
        opset=opset,
        torch=torch.__version__,
        onnxruntime=onnxruntime.__version__,
    )
