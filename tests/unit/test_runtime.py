"""afinar.runtime: one rule for backend, precision, dtype and optimizer, for training and prediction."""

from __future__ import annotations

import pytest
import torch

from afinar import runtime
from afinar.config.settings import experiment_from_partial
from afinar.errors import AfinarError


def test_cpu_choices_for_training():
    tr = experiment_from_partial({"modelo": {"base": "m"}, "treinamento": {"nbits": 0}}).treinamento
    rt = runtime.for_training(tr, cuda=False)
    assert (rt.backend, rt.precision, rt.optim, rt.device) == ("transformers", "fp32", "adamw_torch", "cpu")
    assert rt.dtype is torch.float32
    with pytest.raises(AfinarError, match="unsloth cannot be used because there is no CUDA GPU"):
        runtime.choose_backend("unsloth", cuda=False)
    with pytest.raises(AfinarError, match="fp16 needs a CUDA GPU"):
        runtime.choose_precision("fp16", cuda=False)
    with pytest.raises(AfinarError, match="treinamento.backend: 'tpu'"):
        runtime.choose_backend("tpu", cuda=False)
    assert runtime.choose_precision("bf16", cuda=False) == "bf16"
    assert runtime.choose_optim("paged_adamw_8bit", cuda=False) == "adamw_torch"
    assert runtime.choose_optim("adafactor", cuda=True) == "adafactor"


def test_prediction_uses_the_same_rule_and_fp32_on_a_cpu():
    assert runtime.for_prediction("auto", "bf16", cuda=False).precision == "fp32"
    assert runtime.for_prediction("auto", "fp16", cuda=False).backend == "transformers"
    with pytest.raises(AfinarError, match="unsloth cannot be used"):
        runtime.for_prediction("unsloth", cuda=False)


def test_which_backends_want_a_gpu_slot():
    assert (
        runtime.wants_gpu("auto") and runtime.wants_gpu("unsloth") and not runtime.wants_gpu("transformers")
    )
