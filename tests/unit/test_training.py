"""Real training runs on CPU with the tiny model: learning, determinism, resume, outputs and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from afinar.config.settings import Experiment, experiment_from_partial
from afinar.errors import AfinarError
from afinar.io import read_jsonl
from afinar.train import chat, models
from afinar.train.callbacks import StopAfterSteps
from afinar.train.training import (
    GPU_PAD_MULTIPLE,
    TrainPaths,
    choose_optim,
    choose_precision,
    pad_multiple_option,
    padding_free_option,
    resolve_steps,
    train,
)

# Only what these tests mean; every other key comes from config/schema.yaml, as in the workflow.
BASE_TREINAMENTO = {
    "batch_size": 4,
    "grad_batch_size": 1,
    "max_seq_length": 256,
    "learning_rate": 3e-3,
    "warmup_steps": 1,
    "eval_steps": "50%",
    "nbits": 0,  # no quantization: these runs are on CPU
    "seed": 11,
    "weight_decay": 0.0,
    "gradient_checkpointing": False,
}
BASE_LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}


def experiment(model_dir, **treinamento) -> Experiment:
    tr = {**BASE_TREINAMENTO, **treinamento}
    lora = {**BASE_LORA, **tr.pop("lora", {})}
    return experiment_from_partial({"modelo": {"base": str(model_dir)}, "treinamento": tr, "lora": lora})


def paths_for(splits, name) -> TrainPaths:
    return TrainPaths.for_experiment(splits["treino"].parents[1], name)


def split_loss(model, tokenizer, test_parquet) -> float:
    """Mean loss on the assistant tokens of the test split (what the model is trained to produce)."""
    import pandas as pd

    markers = chat.derive_markers(tokenizer)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for msgs in pd.read_parquet(test_parquet)["messages"]:
            enc = chat.tokenize_conversation(tokenizer, [dict(m) for m in msgs], markers)
            ids, labels = torch.tensor([enc["input_ids"]]), torch.tensor([enc["labels"]])
            n = int((labels[:, 1:] != -100).sum())
            total += model(input_ids=ids, labels=labels).loss.item() * n
            count += n
    return total / count


def test_training_beats_the_untrained_model_and_writes_every_output(tiny_model_dir, task_splits):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    paths = paths_for(task_splits, "demo")
    summary = train(experiment(tiny_model_dir, max_steps=14, limpar_checkpoints=True), paths)

    tok = AutoTokenizer.from_pretrained(paths.adapter)
    before = split_loss(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok, task_splits["teste"])
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), paths.adapter)
    after = split_loss(tuned, tok, task_splits["teste"])
    assert after < before - 1.5, (before, after)

    assert (paths.adapter / "adapter_model.safetensors").is_file() and (
        paths.adapter / "tokenizer.json"
    ).is_file()
    assert json.loads((paths.adapter / "adapter_config.json").read_text())["r"] == 8
    saved = json.loads(paths.metrics_summary.read_text())
    assert saved == json.loads(json.dumps(summary, default=str))
    assert saved["global_step"] == 14 and saved["backend"] == "transformers" and saved["precisao"] == "fp32"
    assert saved["final_eval"]["eval_loss"] > 0  # B11: the final evaluation is saved
    assert 0.3 < saved["fracao_mascarada"] < 0.95
    assert saved["ds_train_len"] == 48 and saved["ds_eval_len"] == 8
    events = [r["event"] for r in read_jsonl(paths.training_metrics)]
    assert (
        events[0] == "train_begin" and "train_end" in events and events[-1] == "evaluate"
    )  # final evaluation
    assert events.count("evaluate") >= 3
    assert len([r for r in read_jsonl(paths.metrics_stream) if "loss" in r]) == 14
    assert {r["fase"] for r in read_jsonl(paths.hardware_metrics)} >= {"train_begin", "eval", "train_end"}
    assert not paths.checkpoints.exists()  # limpar_checkpoints
    assert sorted(p.name for p in paths.adapter.parent.iterdir() if p.name.startswith(".")) == []


def test_same_seed_same_adapter_and_continuing_an_adapter(tiny_model_dir, task_splits):
    exp = experiment(tiny_model_dir, max_steps=3, eval_steps=0, save_checkpoints=False)
    a, b = paths_for(task_splits, "a"), paths_for(task_splits, "b")
    train(exp, a)
    train(exp, b)
    wa, wb = (
        load_file(a.adapter / "adapter_model.safetensors"),
        load_file(b.adapter / "adapter_model.safetensors"),
    )
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

    cont = experiment(
        tiny_model_dir, max_steps=2, eval_steps=0, save_checkpoints=False, continuar_de=str(a.adapter)
    )
    c = paths_for(task_splits, "c")
    summary = train(cont, c)
    assert summary["continuar_de"] == str(a.adapter)
    wc = load_file(c.adapter / "adapter_model.safetensors")
    assert wc.keys() == wa.keys() and any(not torch.equal(wa[k], wc[k]) for k in wa)


def test_resume_after_interruption_appends_metrics(tiny_model_dir, task_splits):
    """Ctrl-C right after the checkpoint of step 4; the newest checkpoint is then damaged (a kill while
    saving); the next run resumes from step 2, continues the step count and appends to the metrics."""
    exp = experiment(tiny_model_dir, max_steps=6, eval_steps=2)
    paths = paths_for(task_splits, "resume")
    with pytest.raises(KeyboardInterrupt):
        train(exp, paths, extra_callbacks=[StopAfterSteps(4)])
    assert not paths.adapter.exists() and not paths.metrics_summary.exists()
    assert [c.name for c in sorted(paths.checkpoints.glob("checkpoint-*"))] == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    # the newest checkpoint's weights were cut short (a kill or a full disk): resume falls back to the
    # previous one instead of crashing in the safetensors loader
    weights = paths.checkpoints / "checkpoint-4" / "adapter_model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)

    summary = train(exp, paths)
    assert summary["retomado_de"].endswith("checkpoint-2") and summary["global_step"] == 6
    assert [c.name for c in sorted(paths.checkpoints.glob("checkpoint-*"))] == [
        "checkpoint-4",
        "checkpoint-6",
    ]
    rows = read_jsonl(paths.training_metrics)
    begins = [r for r in rows if r["event"] == "train_begin"]
    assert [(b["resumed"], b["step"]) for b in begins] == [(False, 0), (True, 2)]
    steps = [r["step"] for r in read_jsonl(paths.metrics_stream) if "loss" in r]
    assert steps[:4] == [1, 2, 3, 4] and steps[4:] == [3, 4, 5, 6]  # history kept, run continued at step 3


def test_placement_keys_do_not_block_resuming(tiny_model_dir, task_splits, caplog):
    """checkpoint_minutos and embedding_na_cpu change where or how often, not what a checkpoint holds: a
    run interrupted before they changed resumes; a learning-rate change starts over."""
    exp = experiment(tiny_model_dir, max_steps=4, eval_steps=2)
    paths = paths_for(task_splits, "placement")
    with pytest.raises(KeyboardInterrupt):
        train(exp, paths, extra_callbacks=[StopAfterSteps(2)])
    moved = experiment(tiny_model_dir, max_steps=4, eval_steps=2, embedding_na_cpu=True, checkpoint_minutos=5)
    caplog.set_level("INFO", logger="afinar.train.models")
    summary = train(moved, paths)
    assert summary["retomado_de"].endswith("checkpoint-2") and summary["global_step"] == 4
    assert summary["embedding_na_cpu_gb"] == 0  # the transformers backend on CPU: nothing moves
    assert "embedding_na_cpu ignored on the transformers backend" in caplog.text  # the user is told

    other = paths_for(task_splits, "placement-lr")
    with pytest.raises(KeyboardInterrupt):
        train(exp, other, extra_callbacks=[StopAfterSteps(2)])
    changed = experiment(tiny_model_dir, max_steps=4, eval_steps=2, learning_rate=1e-4)
    assert train(changed, other)["retomado_de"] is None


def test_kill_at_a_controlled_point_then_resume(tiny_model_dir, task_splits):
    """The mechanism tests/gpu/test_train_gpu.py's resume test uses, on CPU: the child blocks right after
    the checkpoint of step 4 and says so in a marker file; it is SIGKILLed there (no timing involved) and a
    new run resumes from checkpoint-4."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    exp = experiment(tiny_model_dir, max_steps=6, eval_steps=2)
    paths = paths_for(task_splits, "killed")
    marker = paths.checkpoints.parent / "saved.step"
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(Path(models.__file__).parents[2])!r})
        from pathlib import Path
        from afinar.train.callbacks import BlockAfterSave
        from afinar.train.training import TrainPaths, train
        train(json.loads({json.dumps(json.dumps(exp.sections()))}), TrainPaths.for_experiment({str(task_splits["treino"].parents[1])!r}, "killed"),
              extra_callbacks=[BlockAfterSave(4, Path({str(marker)!r}))], threads=1)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    try:
        while not marker.exists():  # a condition written by the child, not a guess at its speed
            assert child.poll() is None, child.stderr.read()[-3000:]
            time.sleep(0.1)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert marker.read_text() == "4" and child.returncode == -signal.SIGKILL
    assert (paths.checkpoints / "checkpoint-4" / "trainer_state.json").is_file()
    assert not paths.adapter.exists()

    summary = train(exp, paths)
    assert summary["retomado_de"].endswith("checkpoint-4") and summary["global_step"] == 6


def test_full_finetuning_with_packing(tiny_model_dir, task_splits):
    exp = experiment(
        tiny_model_dir, max_steps=2, eval_steps=0, save_checkpoints=False, packing=True, lora={"r": 0}
    )
    paths = paths_for(task_splits, "full")
    summary = train(exp, paths)
    assert (paths.adapter / "model.safetensors").is_file() and not (
        paths.adapter / "adapter_config.json"
    ).exists()
    assert summary["modelo_info"]["percentual"] == 100.0


def test_bad_input_fails_before_anything_is_written(tiny_model_dir, task_splits, tmp_path):
    from conftest import write_split

    paths = paths_for(task_splits, "bad")
    with pytest.raises(AfinarError, match="4-bit loading needs a CUDA GPU"):
        train(experiment(tiny_model_dir, nbits=4), paths)
    with pytest.raises(AfinarError, match="above the limit"):
        train(experiment(tiny_model_dir, max_seq_length=100000), paths)
    with pytest.raises(AfinarError, match="not found"):
        train(experiment(tmp_path / "no-model"), paths)
    with pytest.raises(AfinarError, match="unsloth cannot be used"):
        train(experiment(tiny_model_dir, backend="unsloth"), paths)
    empty = dict(task_splits)
    write_split(empty["treino"], [])
    with pytest.raises(AfinarError, match="zero records"):
        train(experiment(tiny_model_dir), paths)
    assert not paths.adapter.exists() and not paths.metrics_summary.exists()


def test_settings_resolution():
    assert resolve_steps("25%", 40) == 10 and resolve_steps("1%", 10) == 1 and resolve_steps(7, 40) == 7
    assert resolve_steps("12.5%", 80) == 10 and resolve_steps("0%", 10) == 0 and resolve_steps("3", 9) == 3
    with pytest.raises(AfinarError, match="eval_steps"):
        resolve_steps("abc", 10)
    with pytest.raises(AfinarError, match="eval_steps"):
        resolve_steps("150%", 10)
    assert choose_optim("adamw_8bit", cuda=False) == "adamw_torch"
    assert choose_optim("auto", cuda=False) == "adamw_torch"
    assert choose_optim("adafactor", cuda=False) == "adafactor"
    assert choose_precision("auto", cuda=False) == "fp32"
    with pytest.raises(AfinarError, match="fp16 needs a CUDA GPU"):
        choose_precision("fp16", cuda=False)


def test_batch_shape_settings():
    # null padding_free = padded rows (measured faster on an H100); packing is always padding-free
    assert padding_free_option(None) == {"padding_free": False}
    assert padding_free_option("auto", packing=True) == {}
    assert padding_free_option(True) == {"padding_free": True}
    with pytest.raises(AfinarError, match="padding_free"):
        padding_free_option("sometimes")
    padded = {"padding_free": False}
    assert pad_multiple_option(None, padded, packing=False, cuda=True) == {
        "pad_to_multiple_of": GPU_PAD_MULTIPLE
    }
    assert pad_multiple_option(None, padded, packing=False, cuda=False) == {}
    # rounding 1000 up to 1024 would pass a 1000-position model: no automatic rounding there
    assert pad_multiple_option(None, padded, False, True, max_len=1000, model_limit=1000) == {}
    assert pad_multiple_option(None, padded, False, True, max_len=1000, model_limit=4096) == {
        "pad_to_multiple_of": GPU_PAD_MULTIPLE
    }
    assert pad_multiple_option(1, padded, packing=False, cuda=True) == {}
    assert pad_multiple_option(32, padded, packing=False, cuda=False) == {"pad_to_multiple_of": 32}
    # padding-free rows: rounded only when asked (one width for compiled attention kernels)
    assert pad_multiple_option(None, {"padding_free": True}, packing=False, cuda=True) == {}
    assert pad_multiple_option(32, {"padding_free": True}, packing=False, cuda=True) == {
        "pad_to_multiple_of": 32
    }
    assert pad_multiple_option(32, {}, packing=True, cuda=True) == {}


class _BatchWidths:
    """Records the width of every training micro-batch the model is given (a forward pre-hook)."""

    def __init__(self):
        self.widths: list[int] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def hook(module, args_, kwargs_):
            if module.training:
                self.widths.append(int(kwargs_["input_ids"].shape[1]))

        model.register_forward_pre_hook(hook, with_kwargs=True)

    def __getattr__(self, name):  # every other TrainerCallback event: nothing to do
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)


def test_padded_batches_are_rounded_to_pad_to_multiple_of(tiny_model_dir, task_splits):
    widths = _BatchWidths()
    exp = experiment(tiny_model_dir, pad_to_multiple_of=24, max_steps=4, eval_steps=0, save_checkpoints=False)
    train(exp, paths_for(task_splits, "pad24"), extra_callbacks=[widths], threads=2)
    assert len(widths.widths) == 4 and all(w % 24 == 0 for w in widths.widths), widths.widths


def test_early_stopping_without_saved_checkpoints(tiny_model_dir, task_splits):
    """paciencia with save_checkpoints: false must not crash (B10) and must stop early."""
    exp = experiment(
        tiny_model_dir,
        max_steps=30,
        eval_steps=2,
        paciencia=1,
        save_checkpoints=False,
        learning_rate=1e-9,
        warmup_steps=0,
        lr_scheduler_type="constant",
    )
    paths = paths_for(task_splits, "early")
    summary = train(exp, paths)
    assert 4 <= summary["global_step"] < 30
    evals = [r for r in read_jsonl(paths.training_metrics) if r["event"] == "evaluate"]
    assert len(evals) >= 2


def test_training_applies_the_filter_tokens_decisions(tiny_model_dir, task_splits):
    """The rule's file decides: its dropped ids are left out even if they fit, truncated ones are cut."""
    from afinar.train import token_filter

    paths = paths_for(task_splits, "filtro")
    filtro = {"max_tokens": 200, "acao": "descartar"}
    exp = experiment(tiny_model_dir, max_steps=1, save_checkpoints=False, eval_steps=0, filtro_tokens=filtro)
    decision = {
        "treino": {"total": 48, "mantidos": 45, "descartados": ["0", "1", "2"], "truncados": []},
        "validacao": {"total": 8, "mantidos": 7, "descartados": ["5"], "truncados": []},
    }
    paths.token_filter.parent.mkdir(parents=True)
    paths.token_filter.write_text(json.dumps({"max_tokens": 200, "acao": "descartar", "splits": decision}))
    summary = train(exp, paths)
    assert summary["ds_train_len"] == 45 and summary["ds_eval_len"] == 7
    assert summary["tokens_treino"]["descartados_longos"] == 3 and summary["tokens_treino"]["registros"] == 48

    tok = models.load_tokenizer(str(tiny_model_dir))
    _, rows = token_filter.read_split_records(task_splits["treino"])
    kept = sum(token_filter.conversation_length(tok, m) for m in rows[3:])
    assert summary["tokens_treino"]["tokens"] == kept  # exactly the kept records were tokenized

    # a report made for other settings is refused before training
    filtro = {"max_tokens": 100, "acao": "descartar"}
    exp = experiment(tiny_model_dir, max_steps=1, save_checkpoints=False, eval_steps=0, filtro_tokens=filtro)
    with pytest.raises(AfinarError, match="rerun filter_tokens"):
        train(exp, paths)


def test_tensorboard_logs_and_a_missing_tracker(tiny_model_dir, task_splits):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    paths = paths_for(task_splits, "tb")
    exp = experiment(
        tiny_model_dir, report_to=["tensorboard"], max_steps=3, eval_steps=0, save_checkpoints=False
    )
    train(exp, paths, threads=2)
    runs = list((paths.adapter.parent / "tensorboard").glob("events.out.tfevents.*"))
    assert runs, "no TensorBoard event file in results/{exp}/tensorboard"
    events = EventAccumulator(str(runs[0].parent))
    events.Reload()
    assert len(events.Scalars("train/loss")) == 3

    paths = paths_for(task_splits, "wandb")
    with pytest.raises(AfinarError, match="report_to: wandb is not installed"):
        train(experiment(tiny_model_dir, report_to=["wandb"]), paths)
    assert not paths.adapter.exists()


def test_mask_description_holds_no_training_text(tiny_model_dir):
    """The DEBUG line about the first batch describes the loss mask without quoting the (private) text."""
    from afinar.train.training import describe_trainable

    tokenizer = models.load_tokenizer(str(tiny_model_dir))
    words = tokenizer("Carla mora em Recife", add_special_tokens=False)["input_ids"]
    end = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    labels = torch.tensor([-100, -100, *words, end, -100, words[0], end])
    line = describe_trainable(labels, tokenizer)
    assert (
        line
        == f"{len(words) + 3} trainable tokens in 2 span(s), ending with {tokenizer.eos_token}, {tokenizer.eos_token}"
    )
    assert "Carla" not in line and "Recife" not in line
    assert describe_trainable(torch.tensor([-100, words[0]]), tokenizer).endswith("ending with (text)")
