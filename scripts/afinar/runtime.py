"""How a stage runs on this machine: backend, precision, dtype and optimizer, decided in one place.

Why one module: training, prediction, the rule files and the train entry point each used to carry their
own copy of "auto = Unsloth where CUDA is present and it imports" and "auto precision = bf16 where
supported", and the copies drifted (prediction ignored ``precisao`` and skipped Unsloth's import
settings). Every stage now asks :func:`for_training` or :func:`for_prediction`; the pure helpers
(:func:`wants_gpu`) are what rules/common.smk and scripts/train.py read before torch is imported.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from afinar.errors import AfinarError

if TYPE_CHECKING:
    from afinar.config.settings import TrainSettings

log = logging.getLogger("afinar.runtime")

BACKENDS = ("auto", "unsloth", "transformers")
#: backends that want a GPU slot (auto falls back to the CPU when the job gets none)
GPU_BACKENDS = ("auto", "unsloth")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
EIGHT_BIT_OPTIMS = frozenset(
    {"adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "adamw_torch_8bit", "lion_8bit", "paged_lion_8bit"}
)


@dataclass(frozen=True)
class Runtime:
    """What this machine runs a stage with (logged, and written to the training summary)."""

    backend: str  # unsloth | transformers
    precision: str  # bf16 | fp16 | fp32
    cuda: bool
    optim: str  # the optimizer name transformers gets (training only; "" for prediction)

    @property
    def dtype(self) -> Any:
        """The torch dtype of ``precision``."""
        return torch_dtype(self.precision)

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"


# ------------------------------------------------------------------------------ pure (no torch import)


def wants_gpu(backend: str) -> bool:
    """Whether a job with this ``treinamento.backend`` asks for a GPU slot (rules/common.smk, scripts/train.py)."""
    return backend in GPU_BACKENDS


#: the CUDA caching allocator's settings for training (see :func:`allocator_env`)
TRAIN_ALLOCATOR = "expandable_segments:True"
ALLOCATOR_VARS = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")


def allocator_env(environ: dict[str, str] | os._Environ[str] | None = None) -> dict[str, str]:
    """The variables a training process needs before torch starts: ``{}`` when the user set either one.

    torch reads its allocator settings once, when it starts; Unsloth sets expandable segments when it is
    imported, which in a process that imported torch first is too late. Set before torch, they keep the
    reserved memory at the allocated one: on an NVIDIA H200 (2026-12-03, bench_train_gpu.py, same run) the
    1.1B bf16 training reserved 2.88 GB instead of 3.56 GB (allocated 2.81 GB both), the 8B 4-bit one
    6.86 GB instead of 7.40 GB (allocated 6.73 GB), at the same speed."""
    environ = os.environ if environ is None else environ
    if any(var in environ for var in ALLOCATOR_VARS):
        return {}
    return {"PYTORCH_ALLOC_CONF": TRAIN_ALLOCATOR}


def set_training_allocator() -> str:
    """Apply :func:`allocator_env` to this process (call it before anything imports torch); returns the
    setting in force, for the log."""
    import sys

    os.environ.update(allocator_env())
    setting = next((f"{v}={os.environ[v]}" for v in ALLOCATOR_VARS if v in os.environ), "")
    if "torch" in sys.modules:
        return f"{setting or 'default'} (torch had already started: its own settings stay)"
    return setting


def choose_optim(optim: str, cuda: bool) -> str:
    """``auto`` = adamw_8bit on CUDA with bitsandbytes, else adamw_torch; 8-bit ones fall back on CPU."""
    if not optim or optim == "auto":
        has_bnb = importlib.util.find_spec("bitsandbytes") is not None
        return "adamw_8bit" if cuda and has_bnb else "adamw_torch"
    if optim in EIGHT_BIT_OPTIMS and not cuda:
        log.info("optim %s needs CUDA: using adamw_torch on CPU", optim)
        return "adamw_torch"
    return optim


# ------------------------------------------------------------------------------ machine-dependent


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def import_unsloth() -> None:
    """Import Unsloth (before transformers/TRL, which it patches) with Afinar's measured settings.

    Unsloth's per-layer ``torch.compile`` blocks are off unless the user sets ``UNSLOTH_BLOCK_COMPILE``:
    with batches of varying length they recompiled on new shapes, checked guards on every layer call and
    held more memory; without them the H100 benchmark ran 1.2x faster at 0.89x the peak memory."""
    os.environ.setdefault("UNSLOTH_BLOCK_COMPILE", "0")
    import unsloth  # noqa: F401


def choose_backend(requested: str, cuda: bool) -> str:
    """``auto`` → Unsloth where CUDA is present and it imports, else transformers; ``unsloth`` must work."""
    requested = (requested or "auto").lower()
    if requested not in BACKENDS:
        raise AfinarError(f"treinamento.backend: {requested!r} — use auto, unsloth or transformers")
    if requested == "transformers":
        return "transformers"
    unsloth_ok, why = False, "it is not installed"
    if cuda and importlib.util.find_spec("unsloth") is not None:
        try:
            import_unsloth()
            unsloth_ok = True
        except Exception as exc:  # unsloth raises many kinds of errors on import
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            why = f"it does not import ({first[:200]})"
    elif not cuda:
        why = "there is no CUDA GPU"
    if requested == "unsloth" and not unsloth_ok:
        raise AfinarError(
            f"treinamento.backend: unsloth cannot be used because {why} — use backend: transformers"
        )
    return "unsloth" if unsloth_ok else "transformers"


def choose_precision(precisao: str, cuda: bool) -> str:
    """Resolve ``precisao`` (auto|bf16|fp16|fp32) for this machine; fp16 needs CUDA."""
    p = (precisao or "auto").lower()
    if p not in PRECISIONS:
        raise AfinarError(f"treinamento.precisao: {precisao!r} is not one of auto, bf16, fp16, fp32")
    if not cuda:
        if p == "fp16":
            raise AfinarError("treinamento.precisao: fp16 needs a CUDA GPU — use auto, bf16 or fp32 on CPU")
        return "fp32" if p == "auto" else p
    import torch

    bf16 = bool(torch.cuda.is_bf16_supported())
    if p == "auto":
        return "bf16" if bf16 else "fp16"
    if p == "bf16" and not bf16:
        raise AfinarError("treinamento.precisao: this GPU has no bf16 — use fp16 or auto")
    return p


def torch_dtype(precision: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def check_trl_on_cpu(cuda: bool) -> None:
    """TRL 1.15 cannot train on CPU (its fused LM head needs Triton on CUDA); 1.16 can."""
    if cuda:
        return
    import trl

    version = tuple(int(x) for x in trl.__version__.split(".")[:2] if x.isdigit())
    if version < (1, 16):
        raise AfinarError(
            f"treinamento.backend: no CUDA GPU here and TRL {trl.__version__} cannot train on CPU — "
            "set backend: transformers (its environment has TRL 1.16) or run on a GPU"
        )


def use_flash_attention_kernels() -> None:
    """On CUDA: keep torch's SDPA off cuDNN during training (flash / memory-efficient kernels instead).

    cuDNN's attention builds an execution plan per new shape on the host, about 1 ms per call with
    length-varying batches: a fifth of a 1B model's step on an H100 (docs/benchmarks.md)."""
    import torch

    torch.backends.cuda.enable_cudnn_sdp(False)


# ------------------------------------------------------------------------------ per stage


def for_training(tr: TrainSettings, cuda: bool | None = None) -> Runtime:
    """Backend, precision and optimizer for a training run; every user error before a model loads."""
    cuda = cuda_available() if cuda is None else cuda
    backend = choose_backend(tr.backend, cuda)
    check_trl_on_cpu(cuda)
    return Runtime(backend, choose_precision(tr.precisao, cuda), cuda, choose_optim(tr.optim, cuda))


def for_prediction(backend: str, precisao: str = "auto", cuda: bool | None = None) -> Runtime:
    """Backend and precision for generation: training's rule, except that a CPU always runs fp32.

    A CPU is where a GPU-trained adapter gets tried out; half precision there is slow or unsupported, so
    ``precisao`` (bf16/fp16) applies on CUDA only and the CPU falls back to fp32 with an info line.
    """
    cuda = cuda_available() if cuda is None else cuda
    chosen = choose_backend(backend, cuda)
    if not cuda:
        if (precisao or "auto") not in ("auto", "fp32"):
            log.info("treinamento.precisao %s: predicting in fp32 on CPU", precisao)
        return Runtime(chosen, "fp32", cuda, "")
    return Runtime(chosen, choose_precision(precisao, cuda), cuda, "")
