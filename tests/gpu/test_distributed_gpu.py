"""One training on two GPUs through the real train rule (issue 12's GPU proof, run by issue 15).

Needs a machine with at least two CUDA GPUs (skipped otherwise). The GPU demo config with
``treinamento.distribuido.gpus: 2``:

* DDP (Unsloth, and the plain transformers backend): two processes under torchrun with NCCL, one adapter,
  the global batch's step count, and hardware samples for both GPUs of the job;
* FSDP2 (backend auto → transformers, bf16): rank 1 killed after the first checkpoint → one error line and
  no process left; the rerun resumes from the FSDP checkpoint (optimizer.bin) and finishes with an adapter
  that plain PEFT loads.

    export PYTHONPATH=/tmp/site:$PWD/scripts HF_HUB_OFFLINE=1
    python -m pytest tests/gpu/test_distributed_gpu.py -q
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_workflow
from tests.workflow.test_distributed import alive, training_processes

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs"
    ),
]

REPO = Path(__file__).resolve().parents[2]
TARGET = "results/demo/metrics_summary.json"


def workflow(tmp_path: Path, **treinamento) -> tuple[Path, dict[str, str], list[str]]:
    wf = copy_workflow(tmp_path / "wf")
    cfg = yaml.safe_load((REPO / "tests" / "gpu" / "gpu-demo.yaml").read_text())
    cfg["treinamento"].update({"epochs": 2, **treinamento})
    (wf / "dist.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(wf / "scripts"), env.get("PYTHONPATH", "")]),
        AFINAR_GPU_LOCK_DIR=str(tmp_path / "gpu-locks"),
    )
    env.pop("CUDA_VISIBLE_DEVICES", None)  # the slot allocator hands the job two of the machine's GPUs
    cmd = [sys.executable, "-m", "snakemake", TARGET, "--cores", "8", "--resources", "gpu=2"]
    return wf, env, [*cmd, "--configfile=dist.yaml"]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("backend", ["unsloth", "transformers"])
def test_ddp_on_two_gpus(tmp_path: Path, backend: str) -> None:
    if backend == "unsloth" and importlib.util.find_spec("unsloth") is None:
        pytest.skip("needs unsloth")
    wf, env, cmd = workflow(tmp_path, backend=backend, distribuido={"gpus": 2})
    proc = subprocess.run(cmd, cwd=wf, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = (wf / "results" / "logs" / "train" / "demo.log").read_text()
    assert "2 process(es) × 1 node(s), ddp, GPU" in log and "backend nccl" in log
    summary = json.loads((wf / TARGET).read_text())
    import pandas as pd

    n = len(pd.read_parquet(wf / "results" / "data" / "treino.parquet"))
    assert summary["distribuido"]["batch_efetivo"] == 16
    assert summary["global_step"] == 2 * math.ceil(n / 16)
    samples = rows(wf / "results" / "demo" / "treinamento" / "hardware_metrics.jsonl")
    assert max(s.get("gpu0_reservada_gb", 0) for s in samples) > 0
    assert max(s.get("gpu1_reservada_gb", 0) for s in samples) > 0  # the other rank's GPU is recorded too
    assert (wf / "results" / "demo" / "adapter" / "adapter_model.safetensors").is_file()


def test_fsdp_on_two_gpus_killed_rank_resumes(tmp_path: Path) -> None:
    wf, env, cmd = workflow(
        tmp_path, backend="auto", nbits=0, precisao="bf16", distribuido={"gpus": 2, "estrategia": "fsdp"}
    )
    checkpoints = wf / "results" / "demo" / "checkpoints"
    out_file = tmp_path / "first-run.out"  # a file, not a pipe that nobody reads until the kill
    with open(out_file, "w") as sink:
        job = subprocess.Popen(cmd, cwd=wf, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 1500
        while not list(checkpoints.glob("checkpoint-*/scheduler.pt")):
            assert job.poll() is None and time.monotonic() < deadline, "training ended before a checkpoint"
            time.sleep(0.2)
        procs = training_processes(job.pid)
        ranks = {int(e["RANK"]): pid for pid, e in procs.items() if "RANK" in e}
        assert sorted(ranks) == [0, 1], procs
        os.kill(ranks[1], signal.SIGKILL)
        job.wait(timeout=900)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode != 0
    out = out_file.read_text()
    errors = [line for line in out.splitlines() if line.startswith("afinar: error:")]
    assert len(errors) == 1 and "rank 1 was killed by SIGKILL" in errors[0], out[-3000:]
    assert not any(alive(pid) for pid in procs)
    assert any((c / "optimizer.bin").is_file() for c in checkpoints.glob("checkpoint-*"))  # FSDP's own files

    proc = subprocess.run(cmd, cwd=wf, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = (wf / "results" / "logs" / "train" / "demo.log").read_text()
    assert "2 process(es) × 1 node(s), fsdp, GPU" in log and "resuming from" in log
    assert "backend transformers" in log  # backend auto under FSDP
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(wf / "results" / "demo" / "modelo-base")
    PeftModel.from_pretrained(base, wf / "results" / "demo" / "adapter")
