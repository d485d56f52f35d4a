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


def test_training_allocator_is_set_before_torch_and_never_over_the_users(monkeypatch):
    assert runtime.allocator_env({}) == {"PYTORCH_ALLOC_CONF": "expandable_segments:True"}
    assert runtime.allocator_env({"PYTORCH_ALLOC_CONF": ""}) == {}  # the user's, even empty, wins
    assert runtime.allocator_env({"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}) == {}
    for var in runtime.ALLOCATOR_VARS:
        monkeypatch.delenv(var, raising=False)
    # this test process imported torch already: the variable is set for child processes, and the log says so
    said = runtime.set_training_allocator()
    assert said.startswith("PYTORCH_ALLOC_CONF=expandable_segments:True") and "already started" in said
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "garbage_collection_threshold:0.6")
    monkeypatch.delenv("PYTORCH_ALLOC_CONF")
    assert runtime.set_training_allocator().startswith("PYTORCH_CUDA_ALLOC_CONF=garbage_collection_threshold")


def test_the_training_modules_import_no_ml_library():
    """Unsloth must be imported before transformers, peft and trl (it patches them on import; imported after,
    it warns that optimisations may be missed) and the allocator settings must be in place before torch
    starts: so importing the training code, as the train rule does before choosing its backend, imports
    none of them."""
    import subprocess
    import sys
    from pathlib import Path

    scripts = Path(__file__).resolve().parents[2] / "scripts"
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import afinar.train.training, afinar.train.distributed; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(scripts)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
