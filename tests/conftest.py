"""Shared test helpers: a copy of the workflow in a temporary folder and a real `snakemake` runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORKFLOW_ENTRIES = ["Snakefile", "rules", "scripts", "config", "resources", "envs", "profiles"]


def offline_env(**extra: str) -> dict[str, str]:
    """The environment every subprocess of the tests gets: offline, deterministic, the venv first on PATH."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONHASHSEED="0",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(REPO / "scripts"),
    )
    env.update(extra)
    return env


def copy_workflow(dest: Path) -> Path:
    """Copy the workflow (not results, not the venv) into ``dest`` so a test can run and edit it freely."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_ENTRIES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def run_snakemake(
    workdir: Path, *args: str, timeout: int = 1200, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the real snakemake of this venv in ``workdir``; output is captured as text."""
    cmd = [str(BIN / "snakemake"), "--cores", "2", *args]
    return subprocess.run(
        cmd, cwd=workdir, env=env or offline_env(), capture_output=True, text=True, timeout=timeout
    )


def run_afinar(
    workdir: Path, *args: str, timeout: int = 600, input: str | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m afinar`` in ``workdir``."""
    return subprocess.run(
        [sys.executable, "-m", "afinar", *args],
        cwd=workdir,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )


@pytest.fixture
def workflow_copy(tmp_path: Path) -> Path:
    """A fresh copy of the workflow in a temporary folder."""
    return copy_workflow(tmp_path / "wf")


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as a plain HF folder, converted once per test session from the packaged GGUF
    (the smollm2_model rule's job; ~20 s of CPU). Tests that need the real model share this copy."""
    from afinar.train import smollm2

    return smollm2.convert(tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct")


def place_model(model_dir: Path, dest: Path) -> Path:
    """Give a workflow copy an already built model folder (hard links: no copy, no rebuild by its rule)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(model_dir, dest, copy_function=os.link)
    return dest


def cache_hub_model(hf_home: Path, repo_id: str, revision: str = "0" * 40) -> Path:
    """Put a (tiny, untrained) model under ``repo_id`` in a Hugging Face cache at ``hf_home``, laid out as
    ``hf download`` leaves it (refs/main → snapshots/<revision>/), so the libraries find it offline."""
    from transformers import Qwen2Config

    repo = Path(hf_home) / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    Qwen2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    ).save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot
