"""A two-process training as one SLURM job (issue 12): srun + torchrun with a rendezvous, 2 tasks recorded.

Uses the real one-node cluster of tests/slurm/start-local-slurm.sh (opt-in, see tests/workflow/test_slurm.py,
whose ``cluster`` fixture this file shares) and the SLURM profile's dry run for two nodes (no cluster).
"""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.conftest import copy_workflow
from tests.workflow.test_slurm import TEST_PROFILE, cluster, filled_slurm_profile, snakemake  # noqa: F401

pytestmark = pytest.mark.workflow


def test_two_node_job_plans_its_slurm_geometry(tmp_path):
    """profiles/slurm, 2 nodes × 4 GPUs: the train job asks for nodes, tasks per node and GPUs per node,
    and runs its own srun (mpi); a one-GPU experiment of the same config stays a plain one-GPU job."""
    wf = copy_workflow(tmp_path / "wf")
    profile = filled_slurm_profile(tmp_path / "profile")
    cfg = yaml.safe_load((wf / "config" / "config.yaml").read_text())
    cfg["treinamento"].update({"backend": "auto", "distribuido": {"gpus": 4, "nos": 2}})
    cfg["experimentos"] = {
        "grande": {},
        "pequeno": {"treinamento": {"distribuido": {"gpus": 1, "nos": 1}}},
        "cpu": {"treinamento": {"backend": "transformers", "distribuido": {"gpus": 2, "nos": 1}}},
    }
    (wf / "config" / "nodes.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = snakemake(
        wf,
        "-n",
        "--profile",
        str(profile),
        "--sdm",
        "env-modules",
        "--configfile",
        "config/nodes.yaml",
        timeout_s=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    jobs = re.findall(r"^rule train:\n(.*?)\n\n", proc.stdout, re.M | re.S)
    resources = {
        re.search(r"exp=(\S+)", job).group(1): re.search(r"resources: (.*)", job).group(1).split(", ")
        for job in jobs
    }
    threads = {
        re.search(r"exp=(\S+)", job).group(1): int(re.search(r"threads: (\d+)", job).group(1)) for job in jobs
    }
    big, small = resources["grande"], resources["pequeno"]
    for expected in (
        "nodes=2",
        "tasks_per_node=4",
        "gres=gpu:4",
        "mpi=srun",
        "tasks_per_gpu=0",
        "cpus_per_gpu=8",
    ):
        assert expected in big, big
    assert not any(r.startswith("gpu=") for r in big)  # --gpus would count the whole job, not per node
    assert "gpu=1" in small and not any(r.startswith(("nodes=", "tasks", "mpi=", "gres=")) for r in small)
    # GPU jobs take the profile's cpus_per_gpu, never cpus_per_task
    assert not any(r.startswith("cpus_per_task=") for r in big + small)
    # two gloo processes share the job's threads: N tasks must not ask N times the node's CPUs
    cpu = resources["cpu"]
    assert "tasks=2" in cpu and "gpu=0" in cpu, cpu
    assert f"cpus_per_task={max(1, threads['cpu'] // 2)}" in cpu, (threads["cpu"], cpu)


@pytest.mark.slurm
def test_two_process_training_is_one_slurm_job_with_two_tasks(cluster, tmp_path):  # noqa: F811
    wf = copy_workflow(tmp_path / "wf")
    cfg = yaml.safe_load((wf / "config" / "config.yaml").read_text())
    cfg["treinamento"].update({"max_steps": 4, "epochs": 1, "distribuido": {"gpus": 2}})
    (wf / "config" / "dist.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    # the test profile gives train a (fake) GPU; this job is the CPU one: two gloo processes
    proc = snakemake(
        wf,
        "--profile",
        str(TEST_PROFILE),
        "--set-resources",
        "train:gpu=0",
        "--until",
        "train",
        "--configfile",
        "config/dist.yaml",
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:]
    submitted = dict(re.findall(r"SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+?)/", out))
    train_id = next(job for job, rule in submitted.items() if rule == "train")
    record = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", train_id, "-O", "State:|,NumTasks:|,NumNodes:|"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    state, tasks, nodes = (field.strip() for field in record.split("|")[:3])
    assert (state, tasks, nodes) == ("COMPLETED", "2", "1"), record
    log = (wf / "results" / "logs" / "train" / "demo.log").read_text()
    assert "2 process(es) × 1 node(s), ddp, CPU (gloo), via srun" in log
    assert re.search(
        r"command: srun .*torch\.distributed\.run .*--rdzv-backend=c10d .*--rdzv-id=afinar-" + train_id, log
    )
    assert "[rank 0/2]" in log and "backend gloo" in log
    assert (wf / "results" / "demo" / "adapter" / "adapter_model.safetensors").is_file()
