"""One training in two processes (torchrun, gloo on the CPU) through the real train rule (issue 12).

The demo workflow with ``treinamento.distribuido.gpus: 2`` (``backend: transformers``, the CPU path): the
train rule starts two training processes under torchrun. Proven on the job's own files: the loss falls,
the optimizer steps are those of the global batch (per-device batch × accumulation × 2 processes), one
adapter that plain PEFT loads, the metric files written by rank 0 only. Then a kill of one rank mid-run:
the job fails with one line naming the rank, no training process survives, no partial output is left,
and the next snakemake run resumes from the last checkpoint and finishes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import BIN, copy_workflow, offline_env, run_snakemake
from tests.unit.conftest import tiny_model_dir  # noqa: F401 (the fixture)

pytestmark = pytest.mark.workflow

TARGET = "results/demo/metrics_summary.json"


def distributed_config(wf: Path) -> str:
    cfg = yaml.safe_load((wf / "config" / "config.yaml").read_text())
    cfg["treinamento"].update({"epochs": 1, "distribuido": {"gpus": 2}})
    cfg["predicao"]["comparar_base"] = False
    (wf / "config" / "dist.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return "config/dist.yaml"


def training_processes(root: int) -> dict[int, dict[str, str]]:
    """Descendants of ``root`` that are training workers or torchrun, with their environment."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            todo.append(child)
            try:
                cmd = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                env = (Path("/proc") / str(child) / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if "afinar.train.distributed" in cmd or "torch.distributed.run" in cmd:
                found[child] = dict(e.decode(errors="replace").split("=", 1) for e in env if b"=" in e)
    return found


def alive(pid: int) -> bool:
    """A process that still runs (a zombie waiting for its parent's wait() does not count)."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def log_steps(path: Path) -> list[dict]:
    """Rows of training_metrics.jsonl after the last train_begin (the last run of the job)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    last = max(i for i, r in enumerate(rows) if r["event"] == "train_begin")
    return rows[last:]


def test_two_process_training_killed_rank_and_resume(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    cfg = distributed_config(wf)
    checkpoints = wf / "results" / "demo" / "checkpoints"
    cmd = [str(BIN / "snakemake"), "--cores", "2", TARGET, "--configfile", cfg]
    # output to a file, not a pipe: nobody reads a pipe until the kill, and a full one blocks snakemake
    out_file = tmp_path / "first-run.out"
    with open(out_file, "w") as sink:
        job = subprocess.Popen(cmd, cwd=wf, env=offline_env(), stdout=sink, stderr=subprocess.STDOUT)
    try:
        # 1. once the first checkpoint is complete, kill rank 1 (SIGKILL: it cannot clean up after itself)
        deadline = time.monotonic() + 2400  # a guard against a hang, not a speed check
        while not list(checkpoints.glob("checkpoint-*/scheduler.pt")):
            assert job.poll() is None and time.monotonic() < deadline, "training ended before a checkpoint"
            time.sleep(0.2)
        procs = training_processes(job.pid)
        ranks = {int(env["RANK"]): pid for pid, env in procs.items() if "RANK" in env}
        assert sorted(ranks) == [0, 1], procs  # two training processes under torchrun
        os.kill(ranks[1], signal.SIGKILL)
        job.wait(timeout=600)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode != 0
    out = out_file.read_text()
    errors = [line for line in out.splitlines() if line.startswith("afinar: error:")]
    assert len(errors) == 1 and "rank 1 was killed by SIGKILL" in errors[0], out[-3000:]
    assert not any(alive(pid) for pid in procs), "a training process outlived the failed job"
    assert not (wf / "results" / "demo" / "adapter").exists()  # no partial output
    assert not list((wf / "results" / "demo").glob(".distribuido-*"))

    # 2. the rerun resumes from the checkpoint and finishes
    proc = run_snakemake(wf, TARGET, "--configfile", cfg)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = (wf / "results" / "logs" / "train" / "demo.log").read_text()
    assert "resuming from results/demo/checkpoints/checkpoint-" in log
    assert "2 process(es)" in log and "backend gloo" in log
    summary = json.loads((wf / TARGET).read_text())
    assert summary["retomado_de"]
    import pandas as pd

    rows = len(pd.read_parquet(wf / "results" / "data" / "treino.parquet"))
    per_device, accum = 8, 1  # config/config.yaml: batch_size 8, grad_batch_size 1
    assert summary["distribuido"] == {
        "processos": 2,
        "estrategia": "ddp",
        "batch_por_dispositivo": per_device,
        "acumulacao": accum,
        "batch_efetivo": per_device * accum * 2,
    }
    assert "effective batch: 8 per device x 1 accumulation x 2 process(es) = 16" in log
    assert summary["global_step"] == math.ceil(rows / (per_device * accum * 2))  # one epoch

    # metric files by rank 0 only: every step of the resumed run logged once; the loss fell
    last_run = log_steps(wf / "results" / "demo" / "treinamento" / "training_metrics.jsonl")
    steps = [r["step"] for r in last_run if r["event"] == "log" and "train_loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == summary["global_step"]
    all_rows = [
        json.loads(line)
        for line in (wf / "results" / "demo" / "treinamento" / "training_metrics.jsonl")
        .read_text()
        .splitlines()
    ]
    losses = [r["train_loss"] for r in all_rows if "train_loss" in r]
    assert losses[-1] < 0.6 * losses[0], losses

    # one adapter, loadable by plain PEFT on the base model
    adapter = wf / "results" / "demo" / "adapter"
    assert sorted(p.name for p in adapter.glob("adapter_model*")) == ["adapter_model.safetensors"]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(wf / "results" / "demo" / "modelo-base")
    model = PeftModel.from_pretrained(base, adapter)
    assert any("lora_A" in name for name, _ in model.named_parameters())
    assert not list((wf / "results" / "demo").glob(".adapter.*"))


def test_two_processes_same_seed_same_adapter(tiny_model_dir, tmp_path):  # noqa: F811
    """Seed reproducibility under torchrun: two real 2-process (gloo) trainings with the same seed write
    bit-identical adapters; a third with another seed does not."""
    from dataclasses import asdict

    from safetensors.torch import load_file

    from afinar.train import distributed
    from afinar.train.training import TrainPaths
    from tests.unit.conftest import task_rows, write_split
    from tests.unit.test_training import BASE_LORA, BASE_TREINAMENTO

    def run(name: str, seed: int) -> dict:
        results = tmp_path / name / "results"
        write_split(results / "data" / "treino.parquet", task_rows(32, seed=1))
        write_split(results / "data" / "validacao.parquet", task_rows(4, seed=2))
        tr = {**BASE_TREINAMENTO, "backend": "transformers", "max_steps": 3, "seed": seed}
        tr["distribuido"] = {"gpus": 2, "nos": 1, "estrategia": "ddp", "batch_global": None}
        exp = {
            "modelo": {"base": str(tiny_model_dir), "saida": ""},
            "treinamento": tr,
            "lora": dict(BASE_LORA),
        }
        paths = TrainPaths.for_experiment(results, "exp")
        spec = {
            "exp": exp,
            "paths": {k: str(v) if v is not None else None for k, v in asdict(paths).items()},
            "threads_per_process": 1,
            "log": str(results / "train.log"),
            "log_level": "INFO",
        }
        distributed.launch(
            spec, distributed.settings(tr), on_gpu=False, threads=2, run_parent=results / "exp"
        )
        assert sorted(p.name for p in paths.adapter.glob("adapter_model*")) == ["adapter_model.safetensors"]
        return load_file(paths.adapter / "adapter_model.safetensors")

    first, second, other = run("a", seed=5), run("b", seed=5), run("c", seed=6)
    assert first.keys() == second.keys() and all(first[k].equal(second[k]) for k in first)
    assert not all(first[k].equal(other[k]) for k in first)
