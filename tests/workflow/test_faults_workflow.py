"""Faults around a real run (issue #16): an encrypted source run from another directory, the privacy of
everything it writes (also `snakemake --report`), and recovery after `kill -9` during `--forcerun train`.

One small encrypted run (4 training steps, 3 predictions) is shared by the tests of this module. The
workflow lives in one folder and the user's project in another, and snakemake is started in the project
with `-s <workflow>/Snakefile`: the workflow finds its own files (templates, the demo corpus, profiles)
from its base directory.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import os
import re
import signal
import stat
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from cryptography.fernet import Fernet

from tests.conftest import BIN, copy_workflow, offline_env

pytestmark = pytest.mark.workflow


def _env(project: Path, **extra: str) -> dict[str, str]:
    return offline_env(AFINAR_TEST_KEY=(project / "chave.txt").read_text(), **extra)


def _cmd(project: Path, *args: str) -> list[str]:
    snakefile = project.parent / "afinar" / "Snakefile"
    return [str(BIN / "snakemake"), "-s", str(snakefile), "--cores", "2", *args, "--configfile", "cfg.yaml"]


def _run(project: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        _cmd(project, *args),
        cwd=project,
        env=_env(project, **extra),
        capture_output=True,
        text=True,
        timeout=1800,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workflow in ``afinar/``, the user's encrypted project in ``projeto/``, run once from there."""
    root = tmp_path_factory.mktemp("faults")
    wf = copy_workflow(root / "afinar")
    proj = root / "projeto"
    proj.mkdir()
    key = Fernet.generate_key()
    (proj / "chave.txt").write_text(key.decode())
    fernet = Fernet(key)
    inputs = sorted((wf / "resources/example/entrada").glob("*.txt"))[:40]
    rows = [{"id": p.stem, "texto": fernet.encrypt(p.read_bytes()).decode()} for p in inputs]
    pd.DataFrame(rows).to_parquet(proj / "textos.parquet", index=False)
    (proj / "saidas").mkdir()
    for p in inputs:
        (proj / "saidas" / p.name).write_bytes((wf / "resources/example/saidas" / p.name).read_bytes())
    (proj / "prompt.txt").write_bytes((wf / "resources/example/prompt.txt").read_bytes())
    cfg = yaml.safe_load((wf / "config/config.yaml").read_text())
    cfg["misc"]["env_chave_criptografia"] = "AFINAR_TEST_KEY"
    entrada = cfg["pastas"]["entrada"]
    entrada.pop("pasta", None)
    entrada.update(
        dataframe="textos.parquet", dataframe_col="texto", dataframe_id="id", prompt_template="prompt.txt"
    )
    cfg["pastas"]["predicao"]["pasta"] = "saidas"
    cfg["treinamento"].update(max_steps=4, eval_steps=2, batch_size=4)
    cfg["predicao"].update(n_exemplos=3, max_new_tokens=8, comparar_base=False)
    cfg["relatorio"] = {"mostrar_exemplos": True}  # decrypted excerpts in the report, as asked
    (proj / "cfg.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False))
    proc = _run(proj)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proj


def test_a_run_from_another_directory_writes_only_into_the_project(project: Path) -> None:
    assert (project / "results/demo/relatorio.md").is_file()
    assert (project / "results/demo/adapter/adapter_model.safetensors").is_file()
    assert not (project.parent / "afinar" / "results").exists()


def _texts(path: Path) -> str:
    """A file's bytes as text, plus every base64 payload inside it decoded (the --report HTML embeds
    the results as base64 data URIs)."""
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    if path.suffix == ".html":
        for blob in re.findall(r"[A-Za-z0-9+/]{200,}={0,2}", text):
            try:
                text += base64.b64decode(blob + "=" * (-len(blob) % 4)).decode("utf-8", errors="replace")
            except (binascii.Error, ValueError):
                continue
    return text


def test_everything_an_encrypted_run_writes_is_private(project: Path) -> None:
    """Every file under results/ and .snakemake/ and the --report HTML: the files holding a decrypted
    sentence are found (so the search works) and none of them, nor any other, is readable by others."""
    proc = _run(project, "--report", "report.html")
    assert proc.returncode == 0, proc.stderr[-3000:]
    inputs = sorted((project.parent / "afinar/resources/example/entrada").glob("*.txt"))[:40]
    sentences = [p.read_text(encoding="utf-8").split(".")[0] for p in inputs]
    key = (project / "chave.txt").read_text()
    files = [p for d in ("results", ".snakemake") for p in (project / d).rglob("*") if p.is_file()]
    files.append(project / "report.html")
    holding = set()
    for path in files:
        text = _texts(path)
        assert key not in text, path
        if any(s in text for s in sentences):
            holding.add(path.relative_to(project).as_posix())
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.parts[len(project.parts)] == ".snakemake":
            # Snakemake gives its metadata records group rw (0660) whatever the umask: .snakemake/ is 0700
            assert mode & 0o007 == 0, (path, oct(mode))
        else:
            assert mode & 0o077 == 0, (path, oct(mode))
    assert {"results/demo/relatorio.md", "report.html"} <= holding, holding
    for folder in (project / ".snakemake", project / "results", *(project / "results").rglob("*")):
        if folder.is_dir():
            assert stat.S_IMODE(folder.stat().st_mode) & 0o077 == 0, folder


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def test_recovery_after_kill_during_forcerun_train(project: Path, tmp_path: Path) -> None:
    """`kill -9` of snakemake (and its job) while `--forcerun train` runs: Snakemake has already deleted
    the adapter. The next run stops on the stale lock and says so; `--unlock` (README) clears it, and the
    plain rerun then trains again and remakes everything downstream.

    The kill lands at a known point, whatever the machine's speed: the train job waits for a GPU slot that
    this test holds (two fake GPU ids, their locks taken here) and the test kills once the job says so.
    """
    locks = tmp_path / "locks"
    locks.mkdir()
    held = []
    for gpu in ("7", "8"):
        handle = open(locks / f"gpu-{gpu}.lock", "a+")  # noqa: SIM115 (kept open while held)
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.append(handle)
    gpu_env = {"CUDA_VISIBLE_DEVICES": "7,8", "AFINAR_GPU_LOCK_DIR": str(locks)}
    train_log = project / "results/logs/train/demo.log"  # Snakemake deletes it when the job starts
    out = open(tmp_path / "forcerun.out", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        _cmd(project, "--forcerun", "train"),
        cwd=project,
        env=_env(project, **gpu_env),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 900
        while b"GPUs are free: waiting" not in _read(train_log):  # the first run's log has no such line
            assert proc.poll() is None, (tmp_path / "forcerun.out").read_text()[-3000:]
            assert time.monotonic() < deadline, "the train job never reached its GPU wait"
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # snakemake and its job, as a crash or `kill -9 -PGID` does
        proc.wait()
        for handle in held:
            handle.close()
    assert not (project / "results/demo/adapter").exists()  # Snakemake removed it when the job started

    locked = _run(project, **gpu_env)
    assert locked.returncode != 0 and "cannot be locked" in locked.stdout + locked.stderr
    assert _run(project, "--unlock").returncode == 0
    rerun = _run(project, **gpu_env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Nothing to be done" not in rerun.stdout + rerun.stderr
    adapter = project / "results/demo/adapter/adapter_model.safetensors"
    assert adapter.is_file()
    for product in ("predicoes/teste.jsonl", "avaliacao/metricas.json", "relatorio.md"):
        assert (project / "results/demo" / product).stat().st_mtime >= adapter.stat().st_mtime, product
    assert not list((project / "results").rglob(".*.tmp"))
