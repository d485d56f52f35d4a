"""``run_rule``: every failure lands in the rule's log, the console gets one line, stale temp files go.

Real failures, not raised stand-ins where it matters: a truncated safetensors file (what a damaged
checkpoint gave), a write to ``/dev/full`` (the kernel's always-full device: ENOSPC), temp files made
by ``tempfile`` exactly as our atomic writers make them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from afinar.errors import AfinarError, run_rule


def smk(tmp_path: Path, outputs=()) -> SimpleNamespace:
    """The attributes of Snakemake's injected ``snakemake`` object that run_rule reads."""
    return SimpleNamespace(log=[str(tmp_path / "logs" / "rule.log")], config={}, output=list(outputs))


def run(main, obj, capsys) -> tuple[list[str], str]:
    with pytest.raises(SystemExit) as exit_info:
        run_rule(main, obj)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line.strip()], Path(obj.log[0]).read_text()


def test_an_unexpected_error_is_one_console_line_and_a_traceback_in_the_log(tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "adapter_model.safetensors"
    save_file({"w": torch.zeros(64, 64)}, weights)
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)

    def main(_):
        load_file(weights)

    lines, log = run(main, smk(tmp_path), capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith("afinar: error: unexpected SafetensorError: ")
    assert lines[0].endswith(f"— the traceback is in {tmp_path / 'logs' / 'rule.log'}")
    assert "Traceback (most recent call last)" in log and "SafetensorError" in log and "load_file" in log


def test_a_user_error_is_the_same_line_on_the_console_and_in_the_log(tmp_path, capsys):
    def main(_):
        raise AfinarError("pastas.entrada.pasta 'x': folder not found — fix the path")

    lines, log = run(main, smk(tmp_path), capsys)
    assert lines == ["afinar: error: pastas.entrada.pasta 'x': folder not found — fix the path"]
    assert "ERROR afinar: afinar: error: pastas.entrada.pasta 'x': folder not found" in log
    assert "Traceback" not in log  # user errors: traceback only at DEBUG


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_is_said_as_such(tmp_path, capsys):
    def main(_):
        with open("/dev/full", "w") as fh:
            fh.write("x" * 10000)

    out = tmp_path / "results" / "data" / "pairs.parquet"
    out.parent.mkdir(parents=True)
    lines, log = run(main, smk(tmp_path, [out]), capsys)
    assert len(lines) == 1 and lines[0].startswith("afinar: error: no space left on "), lines
    assert " MB free)" in lines[0] and lines[0].endswith(f"(log: {tmp_path / 'logs' / 'rule.log'})")
    assert "no space left on" in log


def test_stale_temp_files_of_the_outputs_are_removed_at_rule_start(tmp_path, capsys):
    data = tmp_path / "results" / "data"
    data.mkdir(parents=True)
    pairs, adapter = data / "pairs.parquet", data / "adapter"
    # leftovers of a killed write, named exactly as afinar.io.atomic_path and the folder savers name them
    fd, stale_file = tempfile.mkstemp(prefix=".pairs.parquet.", suffix=".tmp", dir=data)
    os.close(fd)
    stale_dir = Path(tempfile.mkdtemp(prefix=".adapter.", dir=data))
    (stale_dir / "adapter_model.safetensors").write_bytes(b"partial")
    # not ours to remove: another output's temp file, a user's file with a similar name
    fd, other = tempfile.mkstemp(prefix=".teste.parquet.", suffix=".tmp", dir=data)
    os.close(fd)
    keep = data / ".pairs.parquet.notes"
    keep.write_text("mine")
    seen = {}

    def main(_):
        seen["left"] = sorted(p.name for p in data.iterdir())

    run_rule(main, smk(tmp_path, [pairs, adapter]))
    assert seen["left"] == sorted([".pairs.parquet.notes", Path(other).name])
    assert Path(other).exists() and keep.read_text() == "mine"
    assert "left by an interrupted earlier run" in (tmp_path / "logs" / "rule.log").read_text()
