"""GPU slots: CUDA_VISIBLE_DEVICES respected, one GPU per concurrent process, released at exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from afinar.errors import AfinarError
from afinar.gpu_slots import claim_gpu, machine_has_gpu, visible_gpus

REPO_SCRIPTS = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "scripts")


def test_machine_has_gpu_without_torch(tmp_path):
    dev = tmp_path / "dev"
    dev.mkdir()
    no_smi = {"PATH": str(tmp_path)}  # no nvidia-smi on this PATH
    assert not machine_has_gpu(no_smi, dev)
    assert not machine_has_gpu({**no_smi, "CUDA_VISIBLE_DEVICES": ""}, dev)  # GPUs hidden on purpose
    assert machine_has_gpu({**no_smi, "CUDA_VISIBLE_DEVICES": "1"}, dev)
    (dev / "nvidiactl").touch()  # the control device alone is not a GPU
    assert not machine_has_gpu(no_smi, dev)
    (dev / "nvidia0").touch()  # a container without nvidia-smi still has the device file
    assert machine_has_gpu(no_smi, dev)
    assert not machine_has_gpu({**no_smi, "CUDA_VISIBLE_DEVICES": "-1"}, dev)


def test_visible_gpus_from_env():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-aa11, GPU-bb22"}) == ["GPU-aa11", "GPU-bb22"]


def test_single_gpu_needs_no_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    slot = claim_gpu(["1"], tmp_path)
    assert slot.gpu == "1" and slot.lock_path is None
    assert claim_gpu([], tmp_path).gpu is None


def holder(lock_dir, gpus, seconds):
    code = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {REPO_SCRIPTS!r})
        from afinar.gpu_slots import claim_gpu
        slot = claim_gpu({gpus!r}, {str(lock_dir)!r})
        print(slot.gpu, os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
        time.sleep({seconds})
        """
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_two_processes_get_different_gpus_and_release_on_exit(tmp_path, monkeypatch):
    gpus = ["0", "1"]
    a = holder(tmp_path, gpus, 30)
    b = holder(tmp_path, gpus, 30)
    try:
        got_a, env_a = a.stdout.readline().split()
        got_b, env_b = b.stdout.readline().split()
        assert {got_a, got_b} == {"0", "1"} and env_a == got_a and env_b == got_b
        # both taken: a third claim fails with a clear message instead of hanging
        with pytest.raises(AfinarError, match="all in use"):
            claim_gpu(gpus, tmp_path, timeout_s=0.3, poll_s=0.1, set_env=False)
        a.kill()  # even a killed process gives its GPU back
        a.wait()
        deadline = time.time() + 10
        slot = None
        while slot is None and time.time() < deadline:
            try:
                slot = claim_gpu(gpus, tmp_path, timeout_s=0.2, poll_s=0.1, set_env=False)
            except AfinarError:
                pass
        assert slot is not None and slot.gpu == got_a
        slot.release()
    finally:
        for p in (a, b):
            p.kill()
            p.wait()


def test_n_gpu_jobs_never_share_a_card(tmp_path):
    """Two 2-GPU jobs on a 4-GPU machine (fake GPU ids, real processes and locks) get disjoint pairs;
    a third waits for (here: fails without) two free cards; a killed job gives both back."""
    from afinar.gpu_slots import claim_gpus

    gpus = ["0", "1", "2", "3"]
    code = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {REPO_SCRIPTS!r})
        from afinar.gpu_slots import claim_gpus
        slot = claim_gpus(2, {gpus!r}, {str(tmp_path)!r})
        print(",".join(slot.gpus), os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
        time.sleep(60)
        """
    )
    jobs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    try:
        claimed = [job.stdout.readline().split() for job in jobs]
        sets = [set(got.split(",")) for got, _ in claimed]
        assert all(len(s) == 2 for s in sets) and not sets[0] & sets[1] and sets[0] | sets[1] == set(gpus)
        assert all(env == got for got, env in claimed)  # the job's processes inherit exactly its pair
        with pytest.raises(AfinarError, match="fewer than 2 free"):
            claim_gpus(2, gpus, tmp_path, timeout_s=0.3, poll_s=0.1, set_env=False)
        jobs[0].kill()
        jobs[0].wait()
        deadline = time.time() + 10
        slot = None
        while slot is None and time.time() < deadline:
            try:
                slot = claim_gpus(2, gpus, tmp_path, timeout_s=0.2, poll_s=0.1, set_env=False)
            except AfinarError:
                pass
        assert slot is not None and set(slot.gpus) == sets[0]
        slot.release()
    finally:
        for job in jobs:
            job.kill()
            job.wait()


def test_more_gpus_than_visible_is_one_line(tmp_path):
    from afinar.gpu_slots import claim_gpus

    with pytest.raises(AfinarError, match="distribuido.gpus: 4 GPUs asked for but this job sees only 2"):
        claim_gpus(4, ["0", "1"], tmp_path, set_env=False)
    assert claim_gpus(2, ["5", "7"], tmp_path, set_env=False).gpus == ["5", "7"]  # all of them: no lock
    assert claim_gpus(2, [], tmp_path, set_env=False).gpus == []  # no GPU: CPU processes
