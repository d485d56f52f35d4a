"""Every config in config/examples/ as a user meets it: `afinar validate`, then the data stages with the
real snakemake (pair → decrypt → split; no training), and the workflow's refusal before any job of a base
model it cannot get.

The examples name Hub models; no test downloads anything, so each base model is put in a Hugging Face
cache made for the test (a tiny config, as `hf download` lays it out): validate then reports it as cached.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, cache_hub_model, copy_workflow, offline_env, run_snakemake

pytestmark = pytest.mark.workflow
EXAMPLES = sorted((REPO / "config" / "examples").glob("*.yaml"))
SPLITS = [f"results/data/{s}.parquet" for s in ("treino", "validacao", "teste")]


def example_key() -> str:
    """The public key of the bundled encrypted example, printed by the generator as the README shows."""
    script = REPO / "resources" / "example" / "gerar_exemplo.py"
    return subprocess.check_output([sys.executable, str(script), "--chave-exemplo"], text=True).strip()


def base_models(config: Path) -> set[str]:
    raw = yaml.safe_load(config.read_text())
    modelo = raw.get("modelo") or {}
    bases = {str(modelo.get("base") or modelo.get("base_model_name"))}
    for override in (raw.get("experimentos") or {}).values():
        if (override or {}).get("modelo", {}).get("base"):
            bases.add(str(override["modelo"]["base"]))
    return bases


def test_every_example_is_covered() -> None:
    assert len(EXAMPLES) >= 5 and any(p.name == "seed-compat.yaml" for p in EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_validates_and_runs_the_data_stages(example: Path, tmp_path: Path) -> None:
    wf = copy_workflow(tmp_path / "wf")
    hf_home = tmp_path / "hf"
    for base in base_models(example):
        cache_hub_model(hf_home, base)
    env = offline_env(HF_HOME=str(hf_home), CHAVE_CRIPT=example_key())
    config = f"config/examples/{example.name}"

    proc = subprocess.run(
        [sys.executable, "-m", "afinar", "validate", config],
        cwd=wf,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Configuração válida!" in proc.stdout
    hub = {b for b in base_models(example) if "/" in b and not Path(b).exists()}
    builtin = base_models(example) - hub
    if hub:  # a Hub id: found in the (test's) local Hugging Face cache
        assert "in the local Hugging Face cache" in proc.stdout, proc.stdout[-2000:]
    if builtin == {"smollm2-135m-instruct"}:  # a built-in model: the rule that builds it is named
        assert "built by a rule of this workflow" in proc.stdout, proc.stdout[-2000:]

    proc = run_snakemake(wf, *SPLITS, "--configfile", config, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = {s: len(pd.read_parquet(wf / s)) for s in SPLITS}
    assert counts[SPLITS[0]] > 0, counts
    pairing = wf / "results" / "data" / "pareamento.json"
    if pairing.exists():  # pastas mode: every bundled record pairs
        assert json.loads(pairing.read_text())["n_pares"] == 360


def _qwen_example(wf: Path) -> str:
    return "config/examples/qwen2.5-1.5b-lora.yaml"


def test_offline_uncached_model_is_refused_before_any_job(tmp_path: Path) -> None:
    """Issue 13 item 3: a Hub id neither local nor cached, with HF_HUB_OFFLINE=1, stops in onstart."""
    wf = copy_workflow(tmp_path / "wf")
    env = offline_env(HF_HOME=str(tmp_path / "empty-hf"))
    proc = run_snakemake(wf, "--configfile", _qwen_example(wf), env=env)
    assert proc.returncode != 0
    assert "hf download Qwen/Qwen2.5-1.5B-Instruct" in proc.stderr and "HF_HUB_OFFLINE is set" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (wf / "results" / "data").exists()  # no job ran, not even the data stages

    # the data stages alone do not need the model: they run
    proc = run_snakemake(wf, *SPLITS, "--configfile", _qwen_example(wf), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_4bit_training_without_a_gpu_is_refused_before_any_job(tmp_path: Path) -> None:
    """The default nbits (4) on a machine without a GPU, run by the local executor: one line in onstart, not
    a failed train job after the data stages; a run that plans no training is not stopped."""
    wf = copy_workflow(tmp_path / "wf")
    env = offline_env(CUDA_VISIBLE_DEVICES="")  # no GPU for this run, whatever the machine has
    four_bit = ["--config", "treinamento={nbits: 4}"]
    proc = run_snakemake(wf, *four_bit, env=env)
    assert proc.returncode != 0
    line = next((x for x in proc.stderr.splitlines() if "afinar: error:" in x), "")
    assert "treinamento.nbits: 4 (4/8-bit loading, bitsandbytes) needs a CUDA GPU" in line, proc.stderr[
        -2000:
    ]
    assert "set treinamento.nbits: 0" in line and "Traceback" not in proc.stderr
    assert not (wf / "results").exists()  # no job ran, not even the demo model or the data stages

    proc = run_snakemake(wf, *SPLITS, *four_bit, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_unreachable_hub_is_refused_at_once(tmp_path: Path) -> None:
    """Without HF_HUB_OFFLINE, a Hub that cannot be reached is found out by one quick probe (not by the hub
    client's ~100 s of retries in the train job)."""
    with socket.socket() as sock:  # a port nobody listens on: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    wf = copy_workflow(tmp_path / "wf")
    env = offline_env(HF_HOME=str(tmp_path / "empty-hf"), HF_ENDPOINT=f"http://127.0.0.1:{port}")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(name)
    proc = run_snakemake(wf, "--configfile", _qwen_example(wf), env=env)
    assert proc.returncode != 0
    assert f"the Hub (http://127.0.0.1:{port}) is unreachable" in proc.stderr
    assert "hf download Qwen/Qwen2.5-1.5B-Instruct" in proc.stderr
    assert not (wf / "results" / "data").exists()
