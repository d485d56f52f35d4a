"""Two experiments train at once, each on its own GPU, under ``snakemake --resources gpu=2`` (issue 6, item 6).

Needs a machine with at least two CUDA GPUs and Unsloth (skipped otherwise). The real workflow: the demo
model rule, the data rules and two ``train`` jobs of the GPU demo config (Unsloth, bf16), each claiming a
GPU slot (``afinar.gpu_slots``). Proven from the jobs' own outputs: each train log names a different
``CUDA_VISIBLE_DEVICES``, the hardware samples of each job saw a GPU of its own in use, and the two
training windows (``train_begin`` → ``train_end`` in ``training_metrics.jsonl``) overlap in time.

    export PYTHONPATH=/tmp/site:$PWD/scripts HF_HUB_OFFLINE=1
    python -m pytest tests/gpu/test_multi_gpu.py -q
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_workflow

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs"
    ),
    pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="needs unsloth"),
]

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = {"gpu-a": {"lora": {"r": 16, "alpha": 32}}, "gpu-b": {"lora": {"r": 8, "alpha": 16}}}


def _events(path: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["event"]: r["timestamp"] for r in rows if r.get("event") in ("train_begin", "train_end")}


def test_two_experiments_train_at_once_on_two_gpus(tmp_path: Path) -> None:
    wf = copy_workflow(tmp_path / "wf")
    cfg = yaml.safe_load((REPO / "tests" / "gpu" / "gpu-demo.yaml").read_text())
    cfg["experimentos"] = EXPERIMENTS
    cfg["predicao"]["comparar_base"] = False
    cfg["treinamento"]["epochs"] = 6  # long enough that two jobs started together surely overlap
    (wf / "two-gpus.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(wf / "scripts"), env.get("PYTHONPATH", "")]),
        AFINAR_GPU_LOCK_DIR=str(tmp_path / "gpu-locks"),
    )
    env.pop("CUDA_VISIBLE_DEVICES", None)  # the slot allocator hands out the GPUs nvidia-smi lists
    targets = [f"results/{exp}/metrics_summary.json" for exp in EXPERIMENTS]
    cmd = [sys.executable, "-m", "snakemake", *targets, "--cores", "8", "--resources", "gpu=2"]
    proc = subprocess.run(
        [*cmd, "--configfile=two-gpus.yaml"], cwd=wf, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    devices, windows = {}, {}
    for exp in EXPERIMENTS:
        log_text = (wf / "results" / "logs" / "train" / f"{exp}.log").read_text()
        found = re.findall(r"CUDA_VISIBLE_DEVICES=(\S+)", log_text)
        assert found, f"{exp}: the train log does not say which GPU it used"
        devices[exp] = found[-1]
        assert "backend unsloth" in log_text
        windows[exp] = _events(wf / "results" / exp / "treinamento" / "training_metrics.jsonl")
        samples = [
            json.loads(line)
            for line in (wf / "results" / exp / "treinamento" / "hardware_metrics.jsonl")
            .read_text()
            .splitlines()
        ]
        # each job sees exactly one GPU (its own) and used memory on it
        gpu_keys = {k for s in samples for k in s if re.match(r"gpu\d+_", k)}
        assert gpu_keys and all(k.startswith("gpu0_") for k in gpu_keys), sorted(gpu_keys)
        assert {s["num_gpus"] for s in samples} == {1}
        assert max(s.get("gpu0_max_reservada_gb", 0.0) for s in samples) > 0
    assert sorted(devices.values()) == ["0", "1"], devices
    (a0, a1), (b0, b1) = ((w["train_begin"], w["train_end"]) for w in windows.values())
    overlap = min(a1, b1) - max(a0, b0)
    assert overlap > 0, f"the two trainings ran one after the other: {windows}"
    print(f"GPUs {devices}; training windows overlap {overlap:.1f} s of {max(a1, b1) - min(a0, b0):.1f} s")
