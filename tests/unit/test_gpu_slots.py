"""GPU slots: CUDA_VISIBLE_DEVICES respected, one GPU per concurrent process, released at exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from afinar.errors import AfinarError
from afinar.gpu_slots import claim_gpu, visible_gpus

REPO_SCRIPTS = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "scripts")


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
