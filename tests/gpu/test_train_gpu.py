"""The Unsloth backend on a real GPU: bf16 and 4-bit, response-only masking, resume after a kill.

Skipped without CUDA or Unsloth. On the device machine (see docs/benchmarks.md):
    export PYTHONPATH=/tmp/site:$PWD/scripts HF_HUB_OFFLINE=1
    python -m pytest tests/gpu/test_train_gpu.py -q
A small Llama-shaped model is built locally (no download); a few real training steps per test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="needs unsloth"),
]

SCRIPTS = str(Path(__file__).resolve().parents[2] / "scripts")
WORDS = "processo autor réu contrato valor cidade data sentença recurso pedido nome idade".split()


def chats(n: int, seed: int) -> list[list[dict]]:
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name, city = rng.choice(WORDS), rng.choice(WORDS)
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 120)))
        rows.append(
            [
                {"role": "user", "content": f"Extraia nome e cidade.\n{text} nome {name} cidade {city}"},
                {"role": "assistant", "content": json.dumps({"nome": name, "cidade": city})},
            ]
        )
    return rows


@pytest.fixture(scope="module")
def gpu_setup(tmp_path_factory):
    import pandas as pd

    from afinar.train.demo_model import LlamaSpec, build_llama_model

    root = tmp_path_factory.mktemp("gpu")
    spec = LlamaSpec(
        vocab_size=4096,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        initializer_range=0.05,
    )
    model = build_llama_model(
        root / "llama-small", [" ".join(WORDS)] * 50 + ["user assistant system"] * 10, spec
    )
    data = root / "results" / "data"
    data.mkdir(parents=True)
    for name, n, seed in (("treino", 96, 1), ("validacao", 16, 2)):
        rows = chats(n, seed)
        pd.DataFrame({"id": [str(i) for i in range(n)], "messages": rows}).to_parquet(
            data / f"{name}.parquet"
        )
    return {"model": model, "results": root / "results"}


def experiment(model, **tr):
    base = {
        "backend": "unsloth",
        "epochs": 1,
        "batch_size": 8,
        "grad_batch_size": 1,
        "max_seq_length": 512,
        "learning_rate": 1e-3,
        "warmup_steps": 2,
        "eval_steps": 5,
        "save_checkpoints": True,
        "resume_from_checkpoint": True,
        "nbits": 0,
        "seed": 3407,
        "train_on_responses_only": True,
        "paciencia": None,
        "max_grad_norm": 1.0,
        "precisao": "bf16",
        "report_to": [],
        "packing": False,
        "save_total_limit": 3,
        "limpar_checkpoints": False,
        "continuar_de": "",
        "weight_decay": 0.0,
        "optim": "auto",
        "lr_scheduler_type": "linear",
        "gradient_checkpointing": True,
        "max_steps": 10,
        "filtro_tokens": {},
    }
    base.update(tr)
    return {
        "modelo": {"base": str(model), "saida": ""},
        "treinamento": base,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
    }


def run_child(
    exp: dict, results: Path, name: str, stop_after: int | None = None
) -> subprocess.CompletedProcess:
    """Train in a fresh process (Unsloth patches libraries at import; a kill must hit a real process)."""
    stop = f"[StopAfterSteps({stop_after})]" if stop_after else "[]"
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {SCRIPTS!r})
        from afinar.train.callbacks import StopAfterSteps
        from afinar.train.training import TrainPaths, train
        s = train(json.loads({json.dumps(json.dumps(exp))}), TrainPaths.for_experiment({str(results)!r}, {name!r}),
                  extra_callbacks={stop})
        print("SUMMARY " + json.dumps(s, default=str))
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)


def summary_of(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("SUMMARY ")][-1]
    return json.loads(line[len("SUMMARY ") :])


@pytest.mark.parametrize("nbits", [0, 4])
def test_unsloth_trains_with_response_only_loss(gpu_setup, nbits):
    exp = experiment(gpu_setup["model"], nbits=nbits)
    s = summary_of(run_child(exp, gpu_setup["results"], f"unsloth-{nbits}"))
    assert s["backend"] == "unsloth" and s["global_step"] == 10 and s["precisao"] == "bf16"
    assert 0.5 < s["fracao_mascarada"] < 0.99  # the prompt is masked, the answer is not
    assert s["final_eval"]["eval_loss"] < 8.0
    adapter = gpu_setup["results"] / f"unsloth-{nbits}" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    metrics = adapter.parent / "treinamento" / "training_metrics.jsonl"
    losses = [
        r["train_loss"]
        for r in map(json.loads, open(metrics))
        if r.get("event") == "log" and "train_loss" in r
    ]
    assert len(losses) == 10 and losses[-1] < losses[0]


@pytest.mark.parametrize("nbits", [0, 4])  # 4-bit: with the input embedding in CPU memory (the default)
def test_resume_after_kill(gpu_setup, nbits):
    """Killed right after checkpoint-8 is saved, at a point the test controls: the child blocks in
    BlockAfterSave and writes a marker, so a fast GPU cannot finish (and rotate checkpoint-8 away) first."""
    results, name = gpu_setup["results"], f"unsloth-resume-{nbits}"
    exp = experiment(gpu_setup["model"], max_steps=20, eval_steps=4, nbits=nbits)
    ckpts = results / name / "checkpoints"
    marker = results / f"{name}.saved"
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {SCRIPTS!r})
        from afinar.train.callbacks import BlockAfterSave
        from afinar.train.training import TrainPaths, train
        train(json.loads({json.dumps(json.dumps(exp))}), TrainPaths.for_experiment({str(results)!r}, {name!r}),
              extra_callbacks=[BlockAfterSave(8, {str(marker)!r})])
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        while not marker.exists():  # written by the child once checkpoint-8 is complete; no timing involved
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # like an OOM kill or a SLURM time limit
    finally:
        proc.kill()
        proc.wait()
    assert marker.read_text() == "8" and (ckpts / "checkpoint-8" / "trainer_state.json").is_file()
    s = summary_of(run_child(exp, results, name))
    assert s["retomado_de"].endswith("checkpoint-8") and s["global_step"] == 20
    assert (s["embedding_na_cpu_gb"] > 0) == (nbits == 4)
    begins = [
        json.loads(ln)
        for ln in open(results / name / "treinamento" / "training_metrics.jsonl")
        if '"train_begin"' in ln
    ]
    assert len(begins) == 2 and begins[1]["resumed"] and begins[1]["step"] == 8


def test_4bit_counts_every_parameter(gpu_setup):
    """Issue 13 item 9: bitsandbytes packs two 4-bit weights per byte; the summary counts real parameters."""
    counts = {}
    for nbits in (0, 4):
        exp = experiment(gpu_setup["model"], nbits=nbits, max_steps=1, save_checkpoints=False)
        counts[nbits] = summary_of(run_child(exp, gpu_setup["results"], f"params-{nbits}"))["modelo_info"]
    assert counts[4]["treinaveis"] == counts[0]["treinaveis"] > 0
    assert counts[4]["total"] == counts[0]["total"]


def test_4bit_embedding_in_cpu_memory_trains_the_same(gpu_setup):
    """treinamento.embedding_na_cpu: null = the frozen input embedding of a 4-bit training stays in CPU
    memory; the looked-up rows are the same numbers, so the losses match the run that keeps it on the GPU."""
    runs = {}
    for name, value in (("emb-cpu", None), ("emb-gpu", False)):
        exp = experiment(gpu_setup["model"], nbits=4, max_steps=6, save_checkpoints=False)
        exp["treinamento"]["embedding_na_cpu"] = value
        s = summary_of(run_child(exp, gpu_setup["results"], name))
        metrics = gpu_setup["results"] / name / "treinamento" / "training_metrics.jsonl"
        losses = [r["train_loss"] for r in map(json.loads, open(metrics)) if "train_loss" in r]
        runs[name] = (s, losses)
        assert (gpu_setup["results"] / name / "adapter" / "adapter_model.safetensors").is_file()
    (cpu, cpu_losses), (gpu, gpu_losses) = runs["emb-cpu"], runs["emb-gpu"]
    table_gb = 4096 * 512 * 2 / 1e9  # vocab x hidden in bf16
    assert cpu["embedding_na_cpu_gb"] == pytest.approx(table_gb, abs=6e-4)  # rounded to 3 decimals
    assert gpu["embedding_na_cpu_gb"] == 0
    assert len(cpu_losses) == len(gpu_losses) == 6
    assert cpu_losses[0] == pytest.approx(gpu_losses[0], rel=1e-3)  # the first step: the same forward
    assert cpu_losses == pytest.approx(gpu_losses, rel=0.05)
