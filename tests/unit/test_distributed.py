"""afinar.train.distributed: config checks, the launch command, SLURM geometry, the failure line.

The real multi-process training (torchrun, gloo, kill and resume) runs in tests/workflow/test_distributed.py
and, through SLURM, in tests/workflow/test_slurm.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from afinar.errors import AfinarError
from afinar.train import distributed
from afinar.train.distributed import DistSettings


def tr(**kw):
    base = {"backend": "transformers", "nbits": 0, "batch_size": 4, "grad_batch_size": 2}
    base.update(kw)
    return base


def test_default_is_one_process_as_before():
    d = distributed.settings(tr())
    assert d == DistSettings(1, 1, "ddp", None) and not d.distributed
    launch = distributed.plan_launch(d, on_gpu=True, threads=4, env={})
    assert launch.mode == "in-process" and launch.command == []
    assert distributed.slurm_resources(tr()) == {}  # a one-GPU job is submitted exactly as before
    assert distributed.trainer_options(tr(), True) == {}
    assert distributed.grad_accumulation(tr()) == 2


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"distribuido": {"gpus": 2, "estrategia": "fsdp"}, "nbits": 4}, "fsdp cannot shard a 4-bit model"),
        (
            {"distribuido": {"gpus": 2, "estrategia": "fsdp"}, "backend": "unsloth"},
            "not supported by the unsloth",
        ),
        ({"distribuido": {"gpus": 1, "estrategia": "fsdp"}}, "fsdp with one GPU shards nothing"),
        ({"distribuido": {"gpus": 2, "batch_global": 12}}, "batch_global: 12 is not a multiple of"),
    ],
)
def test_impossible_combinations_are_one_line_naming_key_and_alternative(settings, expected):
    problems = distributed.config_problems(tr(**settings))
    assert len(problems) == 1 and expected in problems[0]
    assert problems[0].startswith("treinamento.distribuido.") and " — " in problems[0]
    with pytest.raises(AfinarError, match=expected):
        distributed.check(tr(**settings))


def test_config_loader_reports_the_combination(tmp_path):
    """The check runs with the other config checks (validate, workflow start), per experiment too."""
    import yaml

    from afinar.config import problems

    repo = Path(__file__).resolve().parents[2]
    cfg = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    cfg["treinamento"].update({"nbits": 4, "distribuido": {"gpus": 2, "estrategia": "fsdp"}})
    cfg["experimentos"] = {"big": {"treinamento": {"distribuido": {"gpus": 3, "batch_global": 16}}}}
    found = problems(cfg, base_dir=repo, paths=False, env=False)
    assert any(
        p.startswith("treinamento.distribuido.estrategia: fsdp cannot shard a 4-bit") for p in found
    ), found
    assert any(
        "big" in p and "batch_global: 16 is not a multiple of batch_size × gpus × nos = 24" in p
        for p in found
    )


def test_global_batch_derives_accumulation_and_backend_auto_under_fsdp():
    t = tr(batch_size=4, distribuido={"gpus": 2, "nos": 2, "batch_global": 64})
    assert distributed.grad_accumulation(t) == 4  # 64 / (4 × 2 × 2)
    assert distributed.grad_accumulation(t, world=2) == 8  # the same global batch on fewer processes
    assert distributed.requested_backend(
        tr(backend="auto", distribuido={"gpus": 2, "estrategia": "fsdp"})
    ) == ("transformers")
    assert distributed.requested_backend(tr(backend="auto", distribuido={"gpus": 2})) == "auto"


def test_strategy_options_for_the_trainer():
    ddp = distributed.trainer_options(tr(distribuido={"gpus": 2}), True)
    assert ddp == {"ddp_find_unused_parameters": False}
    fsdp = distributed.trainer_options(tr(distribuido={"gpus": 4, "estrategia": "fsdp"}), True)
    assert fsdp["fsdp"] is True and fsdp["fsdp_config"]["version"] == 2
    assert fsdp["fsdp_config"]["activation_checkpointing"] is True
    assert fsdp["fsdp_config"]["state_dict_type"] == "FULL_STATE_DICT"  # the adapter loads with plain PEFT


def test_ddp_checkpoints_resume_with_another_gpu_count_fsdp_ones_do_not():
    a = distributed.fingerprint_view(tr(distribuido={"gpus": 2, "nos": 1, "estrategia": "ddp"}))
    b = distributed.fingerprint_view(tr(distribuido={"gpus": 4, "nos": 2, "estrategia": "ddp"}))
    assert a == b
    c = distributed.fingerprint_view(tr(distribuido={"gpus": 2, "estrategia": "fsdp"}))
    d = distributed.fingerprint_view(tr(distribuido={"gpus": 4, "estrategia": "fsdp"}))
    assert c != d


def test_slurm_geometry():
    one_node = distributed.slurm_resources(tr(distribuido={"gpus": 4}))
    assert one_node == {"mpi": "srun", "nodes": 1, "tasks_per_gpu": 0, "tasks": 4}
    two_nodes = distributed.slurm_resources(tr(distribuido={"gpus": 4, "nos": 2}))
    assert two_nodes == {"mpi": "srun", "nodes": 2, "tasks_per_gpu": 0, "tasks_per_node": 4}
    one_gpu_each = distributed.slurm_resources(tr(distribuido={"gpus": 1, "nos": 3}))
    assert one_gpu_each["tasks"] == 3 and "tasks_per_node" not in one_gpu_each


def test_local_launch_is_a_standalone_torchrun(monkeypatch):
    monkeypatch.setattr(distributed.shutil, "which", lambda name: None)
    d = DistSettings(gpus=2)
    launch = distributed.plan_launch(d, on_gpu=False, threads=4, env={"PYTHONPATH": "/x"})
    assert launch.mode == "torchrun"
    cmd = launch.command
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--nproc-per-node=2"]
    assert (
        "--standalone" in cmd and "--max-restarts=0" in cmd and cmd[-2:] == ["-m", "afinar.train.distributed"]
    )
    assert launch.env["OMP_NUM_THREADS"] == "2"  # the job's threads shared by its processes
    assert launch.env["PYTHONPATH"].split(os.pathsep)[-1] == "/x"
    with pytest.raises(AfinarError, match="nos: 2 nodes need a SLURM job"):
        distributed.plan_launch(DistSettings(gpus=2, nos=2), on_gpu=True, threads=4, env={})


def test_slurm_launch_is_srun_plus_torchrun_with_a_rendezvous(monkeypatch):
    monkeypatch.setattr(distributed.shutil, "which", lambda name: f"/usr/bin/{name}")
    env = {
        "SLURM_JOB_ID": "77",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_CPUS_ON_NODE": "16",
        "SLURM_NTASKS": "8",
        "SLURM_CPUS_PER_GPU": "4",
        "SBATCH_PARTITION": "gpu",
    }
    launch = distributed.plan_launch(DistSettings(gpus=4, nos=2), on_gpu=True, threads=8, env=env, port=29555)
    cmd = launch.command
    assert launch.mode == "srun" and cmd[0] == "srun"
    for opt in ("--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--cpus-per-task=16", "--gpus-per-node=4"):
        assert opt in cmd
    host = distributed.socket.gethostname()
    for opt in ("--nnodes=2", "--nproc-per-node=4", "--rdzv-backend=c10d", f"--rdzv-endpoint={host}:29555"):
        assert opt in cmd
    assert "--rdzv-id=afinar-77" in cmd
    # the batch step's task/CPU settings would be read by srun as its own options: only the job id stays
    assert "SLURM_JOB_ID" in launch.env and "SLURM_NTASKS" not in launch.env
    assert "SLURM_CPUS_PER_GPU" not in launch.env and "SBATCH_PARTITION" not in launch.env
    with pytest.raises(AfinarError, match="this SLURM job has 2 node"):
        distributed.plan_launch(DistSettings(gpus=1, nos=3), on_gpu=True, threads=8, env=env)


ROOT_CAUSE = """Root Cause (first observed failure):
[0]:
  time      : 2026-12-02_08:34:03
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 28883)  (SIGKILL)
  error_file: <N/A>
""".splitlines()


def test_failure_line_from_whichever_rank_failed(tmp_path):
    assert "rank 1 was killed by SIGKILL" in distributed.failure_line(tmp_path, ROOT_CAUSE, 1)
    # the killed rank's peer saw a broken collective: that is a consequence, the root cause wins
    (tmp_path / "rank0.err").write_text("bug: RuntimeError: Connection closed by peer\n")
    assert "rank 1 was killed by SIGKILL" in distributed.failure_line(tmp_path, ROOT_CAUSE, 1)
    # a user error of any rank is the line, as it would be in one process
    (tmp_path / "rank1.err").write_text("user: treino.parquet: the training split has zero records — check\n")
    assert (
        distributed.failure_line(tmp_path, [], 1)
        == "treino.parquet: the training split has zero records — check"
    )
    (tmp_path / "rank1.err").unlink()
    line = distributed.failure_line(tmp_path, [], 1)
    assert line.startswith("distributed training: rank 0 failed: RuntimeError: Connection closed by peer")
    assert "\n" not in line


def test_hardware_files_of_other_nodes_are_merged_in_time_order(tmp_path, monkeypatch):
    path = tmp_path / "hardware_metrics.jsonl"
    monkeypatch.setenv("GROUP_RANK", "1")
    other = distributed.node_file(path)
    assert other.name == "hardware_metrics.no1.jsonl"
    path.write_text('{"timestamp": 1, "no": 0}\n{"timestamp": 3, "no": 0}\n')
    other.write_text('{"timestamp": 2, "no": 1}\n')
    distributed.merge_node_files(path)
    assert [line[-2] for line in path.read_text().splitlines()] == ["0", "1", "0"]
    assert not other.exists()


def test_fsdp_without_gpus_is_refused_before_any_process_starts(tmp_path):
    """accelerate shards only across GPUs: FSDP on CPU processes would silently be DDP."""
    d = DistSettings(gpus=2, estrategia="fsdp")
    with pytest.raises(AfinarError, match="fsdp shards only across GPUs and this job has none"):
        distributed.launch({}, d, on_gpu=False, threads=2, run_parent=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing started


def test_fsdp_checkpoints_count_as_complete(tmp_path):
    """FSDP (full state dict) writes optimizer.bin instead of optimizer.pt; its manifest makes it resumable."""
    import json

    from afinar.train import checkpoints

    ckpt = tmp_path / "checkpoint-4"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    for name in ("adapter_model.safetensors", "scheduler.pt", "optimizer.bin", "pytorch_model_fsdp.bin"):
        (ckpt / name).write_bytes(b"x")
    assert not checkpoints.is_complete(ckpt)  # no manifest yet: the save did not finish
    checkpoints.write_manifest(ckpt)
    assert checkpoints.is_complete(ckpt)


def test_node_sampler_finds_every_gpu_of_the_job_in_nvml():
    """The job's GPUs as NVML lookups (by index or UUID); unset = every GPU; MIG slices are skipped."""
    from afinar.monitor import hardware_snapshot, nvml_targets

    assert nvml_targets("2,3") == [("index", "2"), ("index", "3")]
    assert nvml_targets("GPU-aa11, 1") == [("uuid", "GPU-aa11"), ("index", "1")]
    assert nvml_targets(None) == [] and nvml_targets("MIG-x") == []
    row = hardware_snapshot(device_level=True)  # no GPU (or no NVML) here: the CPU fields, no crash
    assert "ram_usada_gb" in row and "cpu_uso_%" in row
