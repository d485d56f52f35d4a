"""The data stages with the real snakemake, in both input modes, plain and encrypted.

The encrypted variant is built here with a key generated for the test (no key is ever committed), and the
checks make sure neither the key nor any decrypted text reaches a log.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from cryptography.fernet import Fernet

from tests.conftest import offline_env, run_snakemake

pytestmark = pytest.mark.workflow
SPLIT_TARGETS = [f"results/data/{s}.parquet" for s in ("treino", "validacao", "teste")]


def _config(wf: Path) -> dict:
    return yaml.safe_load((wf / "config" / "config.yaml").read_text())


def _write(wf: Path, cfg: dict, name: str = "test.yaml") -> str:
    (wf / "config" / name).write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False))
    return f"config/{name}"


def _encrypted_variant(wf: Path, key: bytes) -> dict:
    """Config + parquet whose input texts are Fernet tokens, as the original tool's users had them."""
    entrada = wf / "resources" / "example" / "entrada"
    fernet = Fernet(key)
    rows = [
        {"id_peca": p.stem, "texto": fernet.encrypt(p.read_text(encoding="utf-8").encode()).decode()}
        for p in sorted(entrada.glob("*.txt"))
    ]
    pd.DataFrame(rows).to_parquet(wf / "textos_cifrados.parquet", index=False)
    cfg = _config(wf)
    cfg.setdefault("misc", {})["env_chave_criptografia"] = "AFINAR_TEST_KEY"
    ent = cfg["pastas"]["entrada"]
    ent.pop("pasta", None)
    ent.update(dataframe="textos_cifrados.parquet", dataframe_col="texto", dataframe_id="id_peca")
    return cfg


def test_plain_folders_to_splits(workflow_copy: Path) -> None:
    proc = run_snakemake(workflow_copy, *SPLIT_TARGETS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = workflow_copy / "results" / "data"
    summary = json.loads((data / "pareamento.json").read_text())
    assert summary["n_pares"] >= 300
    total = sum(len(pd.read_parquet(data / f"{s}.parquet")) for s in ("treino", "validacao", "teste"))
    assert total == summary["n_pares"] - len(summary.get("invalidos", []))


def test_encrypted_dataframe_is_decrypted_and_nothing_leaks(workflow_copy: Path) -> None:
    key = Fernet.generate_key()
    cfg_path = _write(workflow_copy, _encrypted_variant(workflow_copy, key))
    env = offline_env(AFINAR_TEST_KEY=key.decode())
    proc = run_snakemake(workflow_copy, *SPLIT_TARGETS, f"--configfile={cfg_path}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = workflow_copy / "results" / "data"
    plain = pd.read_parquet(data / "pairs.plain.parquet")
    assert oct((data / "pairs.plain.parquet").stat().st_mode & 0o777) == "0o600"
    assert not plain["texto"].str.startswith("gAAAA").any()
    first_text = plain["texto"].iloc[0]
    teste = pd.read_parquet(data / "teste.parquet")
    assert not teste["messages"].iloc[0][0]["content"].startswith("gAAAA")
    logs = "".join(p.read_text(errors="replace") for p in (workflow_copy / "results" / "logs").rglob("*.log"))
    for secret in (key.decode(), first_text[:40]):
        assert secret not in logs and secret not in proc.stdout + proc.stderr


@pytest.mark.parametrize("key", ["unset", "empty", "malformed", "wrong"])
def test_a_bad_key_stops_the_run_before_any_job(workflow_copy: Path, key: str) -> None:
    """Checked in onstart: not even pairs.parquet or pareamento.json is written (README: "before anything
    is written")."""
    cfg_path = _write(workflow_copy, _encrypted_variant(workflow_copy, Fernet.generate_key()))
    values = {"empty": "", "malformed": "not-a-key", "wrong": Fernet.generate_key().decode()}
    env = offline_env()
    env.pop("AFINAR_TEST_KEY", None)
    if key in values:
        env["AFINAR_TEST_KEY"] = values[key]
    proc = run_snakemake(workflow_copy, *SPLIT_TARGETS, f"--configfile={cfg_path}", env=env)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("afinar: error:")]
    assert len(errors) == 1 and "AFINAR_TEST_KEY" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (workflow_copy / "results" / "data").exists()
    assert "rule pair" not in proc.stdout + proc.stderr  # no job started


def test_dataset_mode_to_splits(workflow_copy: Path) -> None:
    cfg = _config(workflow_copy)
    cfg["formatos"]["tipo_entrada"] = "dataset"
    cfg.pop("pastas", None)
    cfg["dataset"] = {"train_file": "resources/example/dataset/treino.jsonl"}
    proc = run_snakemake(workflow_copy, *SPLIT_TARGETS, f"--configfile={_write(workflow_copy, cfg)}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    teste = pd.read_parquet(workflow_copy / "results" / "data" / "teste.parquet")
    assert len(teste) > 0 and teste["messages"].iloc[0][-1]["role"] == "assistant"
    assert not (workflow_copy / "results" / "data" / "pairs.parquet").exists()


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c: c["treinamento"].update(learnig_rate=1e-4), "learning_rate"),
        (lambda c: c["pastas"]["divisao"].update(proporcao=[0.7, 0.1, 0.1]), "proporcao"),
        (lambda c: c["pastas"]["predicao"].update(pasta="nao/existe"), "nao/existe"),
        (lambda c: c.update(experimentos={"..": {}}), "would write outside results/"),
        (lambda c: c.update(experimentos={"logs": {}}), "one of results/'s own folders"),
        (lambda c: c["predicao"].update(max_new_tokens=250), "predicao.max_new_tokens"),
    ],
)
def test_bad_config_is_one_line_before_any_job(workflow_copy: Path, edit, expected: str) -> None:
    cfg = _config(workflow_copy)
    edit(cfg)
    proc = run_snakemake(workflow_copy, "-n", "--configfile", _write(workflow_copy, cfg))
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("afinar: error:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (workflow_copy / "results").exists()


def test_duplicate_key_in_the_config_file_names_both_lines(workflow_copy: Path) -> None:
    relative = _write(workflow_copy, _config(workflow_copy))
    path = workflow_copy / relative
    path.write_text(path.read_text(encoding="utf-8") + "treinamento:\n  epochs: 9\n", encoding="utf-8")
    proc = run_snakemake(workflow_copy, "-n", "--configfile", relative)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("afinar: error:")]
    assert len(errors) == 1 and "key 'treinamento' repeats the one on line" in errors[0], proc.stderr[-2000:]


def test_gpu_only_backend_with_no_gpu_resources_is_one_line(workflow_copy: Path) -> None:
    cfg = _config(workflow_copy)
    cfg["treinamento"]["backend"] = "unsloth"
    proc = run_snakemake(
        workflow_copy, "-n", "--resources", "gpu=0", f"--configfile={_write(workflow_copy, cfg)}"
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("afinar: error:")]
    assert len(errors) == 1 and "gpu=0" in errors[0] and "unsloth" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
