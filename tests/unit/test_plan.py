"""training.plan(): steps, intervals, padding and SFTConfig arguments computed without a model."""

from __future__ import annotations

from pathlib import Path

from afinar.config.settings import experiment_from_partial
from afinar.runtime import Runtime
from afinar.train.training import GPU_PAD_MULTIPLE, DataSizes, plan

CPU = Runtime(backend="transformers", precision="fp32", cuda=False, optim="adamw_torch")
GPU = Runtime(backend="unsloth", precision="bf16", cuda=True, optim="adamw_8bit")


def exp(**treinamento):
    return experiment_from_partial({"modelo": {"base": "org/m"}, "treinamento": treinamento})


def test_steps_and_intervals_follow_the_data_and_the_settings():
    e = exp(batch_size=4, grad_batch_size=2, epochs=3, eval_steps="25%")
    p = plan(e, CPU, DataSizes(train_rows=100, train_tokens=5000, eval_rows=10), Path("ck"))
    assert p.steps_per_epoch == 13 and p.total_steps == 39  # ceil(100 / 8) per epoch
    assert p.eval_every == 9 and p.save and p.save_every == 9 and p.load_best and p.patience is None
    a = p.sft_args
    assert a["output_dir"] == "ck" and a["num_train_epochs"] == 3.0 and a["eval_steps"] == 9
    assert a["eval_strategy"] == "steps" and a["metric_for_best_model"] == "eval_loss"
    assert a["optim"] == "adamw_torch" and not a["bf16"] and not a["fp16"] and a["use_cpu"]
    assert a["report_to"] == "none" and a["save_total_limit"] == 2 and a["max_length"] == 4096
    assert a["train_sampling_strategy"] == "group_by_length"


def test_max_steps_packing_and_no_validation():
    p = plan(exp(max_steps=7, packing=True, max_seq_length=100), CPU, DataSizes(50, 2000, 0), "ck")
    assert p.total_steps == 7 and p.steps_per_epoch == 2  # 2000 tokens packed into 20 rows of 100, / 10
    assert p.eval_every == 0 and p.sft_args["eval_strategy"] == "no" and not p.load_best
    assert p.sft_args["packing"] and "padding_free" not in p.sft_args
    assert p.sft_args["train_sampling_strategy"] == "random"


def test_early_stopping_forces_checkpoints_and_needs_evaluations():
    p = plan(exp(paciencia=2, save_checkpoints=False, eval_steps=5), CPU, DataSizes(100, 1, 10), "ck")
    assert p.patience == 2 and p.save and p.load_best and any("paciencia" in n for n in p.notes)
    p = plan(exp(paciencia=2, eval_steps=5), CPU, DataSizes(100, 1, 0), "ck")
    assert p.patience is None  # no validation records: nothing to stop on
    p = plan(exp(save_checkpoints=False, eval_steps=0), CPU, DataSizes(100, 1, 10), "ck")
    assert not p.save and p.sft_args["save_strategy"] == "no" and any("eval_steps is 0" in n for n in p.notes)


def test_padding_precision_and_gradient_checkpointing_depend_on_the_runtime():
    e = exp(max_seq_length=1000, report_to=["tensorboard", "wandb"])
    gpu = plan(e, GPU, DataSizes(10, 1, 0), "ck", model_limit=4096).sft_args
    assert gpu["pad_to_multiple_of"] == GPU_PAD_MULTIPLE and gpu["padding_free"] is False
    assert gpu["bf16"] and not gpu["use_cpu"] and gpu["optim"] == "adamw_8bit"
    assert gpu["report_to"] == ["wandb"]  # TensorBoard gets its own callback
    assert gpu["gradient_checkpointing"] is False  # Unsloth checkpoints its own way
    assert (
        plan(e, GPU, DataSizes(10, 1, 0), "ck", model_limit=1000).sft_args.get("pad_to_multiple_of") is None
    )
    cpu = plan(e, CPU, DataSizes(10, 1, 0), "ck").sft_args
    assert "pad_to_multiple_of" not in cpu and cpu["gradient_checkpointing"] is True  # the schema's default
    free = plan(exp(padding_free=True), CPU, DataSizes(10, 1, 0), "ck").sft_args
    assert free["padding_free"] is True and free["max_length"] is None
