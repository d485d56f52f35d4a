"""Checkpoint integrity: only a checkpoint whose manifest vouches for every file is resumed from.

The per-file cases use a real checkpoint written by a real (tiny, CPU) training run, so every file the
Trainer writes is covered, whatever the installed transformers version writes.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from conftest import task_rows, write_split

from afinar.train import checkpoints


def make_ckpt(folder, step, complete=True):
    """A checkpoint folder with the Trainer's file names; ``complete`` = its manifest was written."""
    c = folder / f"checkpoint-{step}"
    c.mkdir(parents=True)
    (c / "adapter_model.safetensors").write_bytes(b"w" * 10)
    (c / "optimizer.pt").write_bytes(b"o")
    (c / "scheduler.pt").write_bytes(b"s")
    (c / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if complete:
        checkpoints.write_manifest(c)
    return c


def test_newest_complete_wins_and_incomplete_falls_back(tmp_path, caplog):
    make_ckpt(tmp_path, 5)
    make_ckpt(tmp_path, 10)
    assert checkpoints.latest_complete(tmp_path).name == "checkpoint-10"
    make_ckpt(tmp_path, 15, complete=False)  # killed before the manifest was written
    with caplog.at_level(logging.WARNING, logger="afinar"):
        assert checkpoints.latest_complete(tmp_path).name == "checkpoint-10"
    assert "checkpoint-15 is broken (no afinar_manifest.json" in caplog.text
    c20 = make_ckpt(tmp_path, 20)
    (c20 / "optimizer.pt").write_bytes(b"x")  # same size, other bytes: the checksum catches it
    assert checkpoints.checkpoint_problem(c20) == "optimizer.pt does not match its checksum"
    assert checkpoints.latest_complete(tmp_path).name == "checkpoint-10"
    assert [c.name for c in checkpoints.list_checkpoints(tmp_path)] == [
        "checkpoint-5",
        "checkpoint-10",
        "checkpoint-15",
        "checkpoint-20",
    ]
    assert checkpoints.checkpoint_step(tmp_path / "checkpoint-10") == 10
    assert checkpoints.latest_complete(tmp_path / "none") is None
    # resuming removes the broken newer ones: the resumed run saves those steps again
    assert checkpoints.latest_complete(tmp_path, remove_broken=True).name == "checkpoint-10"
    assert [c.name for c in checkpoints.list_checkpoints(tmp_path)] == ["checkpoint-5", "checkpoint-10"]


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


@pytest.fixture(scope="module")
def real_checkpoints(tiny_model_dir, tmp_path_factory):
    """checkpoint-2 and checkpoint-4 of a real 4-step training run (saved every 2 steps)."""
    from test_training import experiment

    from afinar.train.training import TrainPaths, train

    root = tmp_path_factory.mktemp("ckpt")
    write_split(root / "data" / "treino.parquet", task_rows(16, seed=1))
    write_split(root / "data" / "validacao.parquet", task_rows(4, seed=2))
    paths = TrainPaths.for_experiment(root, "demo")
    train(experiment(tiny_model_dir, max_steps=4, eval_steps=2), paths)
    assert [c.name for c in checkpoints.list_checkpoints(paths.checkpoints)] == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    return paths.checkpoints


def _checkpoint_files(folder):
    ckpt = folder / "checkpoint-4"
    return sorted(
        p.relative_to(ckpt).as_posix()
        for p in ckpt.rglob("*")
        if p.is_file() and p.name != checkpoints.MANIFEST_FILE
    )


def test_every_file_of_a_real_checkpoint_truncated_or_deleted_is_caught(real_checkpoints, tmp_path, caplog):
    names = _checkpoint_files(real_checkpoints)
    # what a transformers checkpoint holds: weights, optimizer, scheduler, RNG and trainer state
    assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= set(names)
    assert checkpoints.latest_complete(real_checkpoints).name == "checkpoint-4"
    for name in [*names, checkpoints.MANIFEST_FILE]:
        for damage in ("truncated", "deleted"):
            folder = tmp_path / f"{damage}-{name.replace('/', '_')}"
            shutil.copytree(real_checkpoints, folder)
            target = folder / "checkpoint-4" / name
            if damage == "deleted":
                target.unlink()
            else:  # cut to a non-empty prefix, as a kill or a full disk leaves it
                size = target.stat().st_size
                with open(target, "r+b") as fh:
                    fh.truncate(max(1, size // 2))
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="afinar"):
                chosen = checkpoints.latest_complete(folder)
            assert chosen is not None and chosen.name == "checkpoint-2", (name, damage)
            assert f"{folder / 'checkpoint-4'} is broken" in caplog.text, (name, damage)
            assert checkpoints.is_complete(folder / "checkpoint-2")
