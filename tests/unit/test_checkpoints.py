"""Checkpoint discovery: newest complete one wins, incomplete ones are skipped, stale runs are cleared."""

from __future__ import annotations

import json

from afinar.train import checkpoints


def make_ckpt(folder, step, complete=True):
    c = folder / f"checkpoint-{step}"
    c.mkdir(parents=True)
    (c / "adapter_model.safetensors").write_bytes(b"w" * 10)
    (c / "optimizer.pt").write_bytes(b"o")
    (c / "scheduler.pt").write_bytes(b"s")
    state = json.dumps({"global_step": step})
    (c / "trainer_state.json").write_text(state if complete else state[: len(state) // 2])
    return c


def test_newest_complete_wins_and_incomplete_falls_back(tmp_path):
    make_ckpt(tmp_path, 5)
    make_ckpt(tmp_path, 10)
    assert checkpoints.latest_complete(tmp_path).name == "checkpoint-10"
    make_ckpt(tmp_path, 15, complete=False)  # killed while writing its state
    assert checkpoints.latest_complete(tmp_path).name == "checkpoint-10"
    c20 = make_ckpt(tmp_path, 20)
    (c20 / "optimizer.pt").unlink()  # killed before the optimizer was saved
    assert checkpoints.latest_complete(tmp_path).name == "checkpoint-10"
    assert [c.name for c in checkpoints.list_checkpoints(tmp_path)] == [
        "checkpoint-5",
        "checkpoint-10",
        "checkpoint-15",
        "checkpoint-20",
    ]
    assert checkpoints.checkpoint_step(tmp_path / "checkpoint-10") == 10
    assert checkpoints.latest_complete(tmp_path / "none") is None


def test_step_order_is_numeric(tmp_path):
    make_ckpt(tmp_path, 9)
    make_ckpt(tmp_path, 100)
    assert checkpoints.latest_complete(tmp_path).name == "checkpoint-100"


def test_prepare_folder_resumes_only_the_same_run(tmp_path):
    data = tmp_path / "treino.parquet"
    data.write_bytes(b"v1")
    folder = tmp_path / "checkpoints"
    fp = checkpoints.run_fingerprint({"lr": 1}, [data])
    assert checkpoints.prepare_folder(folder, fp, resume=True) is None
    make_ckpt(folder, 4)
    (folder / "metrics_stream.jsonl").write_text("{}\n")
    assert checkpoints.prepare_folder(folder, fp, resume=True).name == "checkpoint-4"
    # resume off: start over, old checkpoints and live metrics removed
    assert checkpoints.prepare_folder(folder, fp, resume=False) is None
    assert checkpoints.list_checkpoints(folder) == [] and not (folder / "metrics_stream.jsonl").exists()
    make_ckpt(folder, 4)
    # other settings or other data: the checkpoints do not apply
    assert (
        checkpoints.prepare_folder(folder, checkpoints.run_fingerprint({"lr": 2}, [data]), resume=True)
        is None
    )
    assert checkpoints.list_checkpoints(folder) == []
    fp2 = checkpoints.run_fingerprint({"lr": 2}, [data])
    make_ckpt(folder, 4)
    data.write_bytes(b"v2")
    assert checkpoints.run_fingerprint({"lr": 2}, [data]) != fp2


def test_a_finished_run_is_not_resumed(tmp_path):
    data = tmp_path / "treino.parquet"
    data.write_bytes(b"v1")
    folder = tmp_path / "checkpoints"
    fp = checkpoints.run_fingerprint({"lr": 1}, [data])
    checkpoints.prepare_folder(folder, fp, resume=True)
    make_ckpt(folder, 8)
    checkpoints.mark_finished(folder)
    assert checkpoints.prepare_folder(folder, fp, resume=True) is None
    assert checkpoints.list_checkpoints(folder) == []
    make_ckpt(folder, 2)  # the new run's own checkpoints are resumable again
    assert checkpoints.prepare_folder(folder, fp, resume=True).name == "checkpoint-2"
