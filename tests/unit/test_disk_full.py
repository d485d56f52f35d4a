"""A disk that fills up during training, for real: a small tmpfs in a private mount namespace.

Training runs through ``run_rule`` (as the Snakemake rule does) with its results, checkpoints and log on
a 64 MB tmpfs. Right after checkpoint-2 is saved, a callback fills the disk so that checkpoint-4's
weights still fit but its optimizer state does not: torch's zip writer then fails with its cryptic
"unexpected pos" error. Expected: one line naming the mount, the free space and the file, the error in the
rule's log, checkpoint-2 kept, the unfinished checkpoint-4 removed; once space is freed the rerun resumes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, task_rows, write_split

DRIVER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from types import SimpleNamespace

    sys.path[:0] = [{repo!r} + "/scripts", {repo!r} + "/tests/unit"]
    from test_training import experiment
    from transformers import TrainerCallback

    from afinar.errors import run_rule
    from afinar.train.training import TrainPaths, train

    disk = Path(sys.argv[1])
    paths = TrainPaths.for_experiment(disk / "results", "demo")


    class FillDisk(TrainerCallback):
        # After checkpoint-2: leave room for the weights of the next checkpoint, not its optimizer state.
        def on_save(self, args, state, control, **kwargs):
            if state.global_step != 2:
                return
            ckpt = Path(args.output_dir) / "checkpoint-2"
            need = sum(p.stat().st_size for p in ckpt.iterdir() if p.name != "optimizer.pt")
            need += (ckpt / "optimizer.pt").stat().st_size // 2
            st = os.statvfs(disk)
            with open(disk / "filler", "wb") as fh:
                fh.write(b"0" * max(0, st.f_bavail * st.f_frsize - need))


    def main(smk):
        extra = [FillDisk()] if sys.argv[2] == "fill" else []
        exp = experiment({model!r}, max_steps=6, eval_steps=2, save_total_limit=None)
        train(exp, paths, extra_callbacks=extra)


    outputs = [paths.adapter, paths.metrics_summary, paths.metrics_stream, paths.training_metrics]
    run_rule(main, SimpleNamespace(log=[str(disk / "results/logs/train/demo.log")], config={{}}, output=outputs))
    """
)


def _namespaces_work() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _namespaces_work(), reason="needs Linux user+mount namespaces (unshare -rm)")
def test_full_disk_during_training_is_one_line_and_keeps_the_last_good_checkpoint(tiny_model_dir, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(repo=str(REPO), model=str(tiny_model_dir)))
    script = f"""
        set -u
        mount -t tmpfs -o size=64m tmpfs {disk}
        cp -r {tmp_path}/data {disk}/results-data && mkdir -p {disk}/results && mv {disk}/results-data {disk}/results/data
        {sys.executable} {driver} {disk} fill > {tmp_path}/fill.out 2> {tmp_path}/fill.err
        echo $? > {tmp_path}/fill.rc
        cp {disk}/results/logs/train/demo.log {tmp_path}/fill.log
        ls {disk}/results/demo/checkpoints > {tmp_path}/after-fill.ls
        rm {disk}/filler
        {sys.executable} {driver} {disk} resume > {tmp_path}/resume.out 2> {tmp_path}/resume.err
        echo $? > {tmp_path}/resume.rc
        cp {disk}/results/demo/metrics_summary.json {tmp_path}/summary.json
    """
    write_split(tmp_path / "data" / "treino.parquet", task_rows(16, seed=1))
    write_split(tmp_path / "data" / "validacao.parquet", task_rows(4, seed=2))
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

    err = (tmp_path / "fill.err").read_text()
    assert (tmp_path / "fill.rc").read_text().strip() == "1", err[-3000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "afinar: error:" in line]
    assert len(errors) == 1, err[-3000:]
    line = errors[0]
    assert f"afinar: error: no space left on {disk} (" in line, line
    assert " MB free) while writing " in line and "checkpoint-4/optimizer.pt" in line, line
    assert line.rstrip().endswith(f"(training resumes from {disk}/results/demo/checkpoints/checkpoint-2)"), (
        line
    )
    assert line.split("afinar: error: ", 1)[1] in (tmp_path / "fill.log").read_text()  # in the rule's log too
    # the last good checkpoint is kept, the unfinished one removed (it held the space the log needed)
    left = (tmp_path / "after-fill.ls").read_text().split()
    assert "checkpoint-2" in left and "checkpoint-4" not in left, left

    assert (tmp_path / "resume.rc").read_text().strip() == "0", (tmp_path / "resume.err").read_text()[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["retomado_de"].endswith("checkpoint-2") and summary["global_step"] == 6
