"""A new user's first hour (issue 13): each dead end found by trying Afinar as a new user, reproduced.

The CLI runs as a real subprocess in a scratch working directory, on real files; Hugging Face caches are
real folders laid out as `hf download` leaves them; the "reachable Hub" is a real listening socket.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from afinar.config import load_config
from afinar.data.pairing import pair_records
from afinar.errors import AfinarError
from tests.conftest import REPO, cache_hub_model

QWEN = "Qwen/Qwen2.5-0.5B-Instruct"


def cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full = {
        **os.environ,
        "PYTHONPATH": str(REPO / "scripts"),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(cwd / "hf-home"),
        **env,
    }
    full = {k: v for k, v in full.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "afinar", *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_config(cwd: Path, name: str = "c.yaml", **changes: dict) -> str:
    """A copy of config/examples/qwen2.5-1.5b-lora.yaml pointed at ./in and ./out, with section changes."""
    cfg = yaml.safe_load((REPO / "config" / "examples" / "qwen2.5-1.5b-lora.yaml").read_text())
    cfg["pastas"]["entrada"] = {"pasta": "in"}
    cfg["pastas"]["predicao"] = {"pasta": "out"}
    cfg["modelo"]["base"] = "modelo-local"
    for section, values in changes.items():
        cfg.setdefault(section, {}).update(values)
    (cwd / name).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return name


@pytest.fixture()
def plain_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """50 inputs and 50 plain-text answers, and a local model folder."""
    monkeypatch.chdir(tmp_path)
    for folder in ("in", "out", "modelo-local"):
        (tmp_path / folder).mkdir()
    for i in range(50):
        (tmp_path / "in" / f"{i:03d}.txt").write_text(f"Documento número {i}.")
        (tmp_path / "out" / f"{i:03d}.txt").write_text(f"Resumo do documento {i} em texto livre.")
    return tmp_path


# ------------------------------------------------------------------------------- 1. plain-text answers


def test_plain_text_answers_validate_names_the_key(plain_text: Path) -> None:
    proc = cli("validate", write_config(plain_text), cwd=plain_text)
    assert proc.returncode == 1
    assert (
        "pastas.predicao: 50 of 50 answer files fail the JSON check — all answers are not JSON objects: "
        "if they are plain text, set formatos.formato_saida: texto" in proc.stdout
    )
    proc = cli("inspect", write_config(plain_text), cwd=plain_text)
    assert "✗ pastas.predicao: 50 of 50 answer files fail the JSON check" in proc.stdout


def test_plain_text_answers_pair_stage_hint_is_the_switch_not_skipping(plain_text: Path) -> None:
    cfg = load_config(yaml.safe_load((plain_text / write_config(plain_text)).read_text()))
    p = cfg["pastas"]
    with pytest.raises(AfinarError) as err:
        pair_records(p["entrada"], p["predicao"], p["validacao"], cfg["formatos"])
    assert "50 of 50 pairs are invalid" in str(err.value)
    assert "set formatos.formato_saida: texto" in str(err.value) and "skip_invalidos" not in str(err.value)
    # with skip_invalidos on, nothing is left: the hint is still the switch
    with pytest.raises(AfinarError, match="all 50 pairs are invalid .* formatos.formato_saida: texto"):
        pair_records(p["entrada"], p["predicao"], {**p["validacao"], "skip_invalidos": True}, cfg["formatos"])


def test_formato_saida_texto_is_the_one_switch(plain_text: Path) -> None:
    name = write_config(plain_text, formatos={"formato_saida": "texto"})
    proc = cli("validate", name, cwd=plain_text)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cfg = load_config(yaml.safe_load((plain_text / name).read_text()))
    assert cfg["pastas"]["validacao"]["exigir_json_valido"] is False
    p = cfg["pastas"]
    result = pair_records(p["entrada"], p["predicao"], p["validacao"], cfg["formatos"])
    assert len(result.ids) == 50 and result.answers[0] == "Resumo do documento 0 em texto livre."
    # asked explicitly, JSON is still required of texto answers, and the hint names that key
    name = write_config(
        plain_text,
        "explicit.yaml",
        formatos={"formato_saida": "texto"},
        pastas={"validacao": {"exigir_json_valido": True}},
    )
    proc = cli("validate", name, cwd=plain_text)
    assert proc.returncode == 1 and "set pastas.validacao.exigir_json_valido: false" in proc.stdout


def test_a_few_bad_answers_keep_the_skip_hint(plain_text: Path) -> None:
    for i in range(48):
        (plain_text / "out" / f"{i:03d}.txt").write_text(json.dumps({"n": i}))
    cfg = load_config(yaml.safe_load((plain_text / write_config(plain_text)).read_text()))
    p = cfg["pastas"]
    with pytest.raises(
        AfinarError, match="2 of 50 pairs are invalid.*set pastas.validacao.skip_invalidos: true"
    ):
        pair_records(p["entrada"], p["predicao"], p["validacao"], cfg["formatos"])
    assert cli("validate", "c.yaml", cwd=plain_text).returncode == 0  # a few bad files: pair lists them


# ------------------------------------------------------------------------------- 3. where the base model comes from


def test_validate_says_where_each_base_model_comes_from(plain_text: Path) -> None:
    name = write_config(plain_text, formatos={"formato_saida": "texto"}, modelo={"base": QWEN})
    proc = cli("validate", name, cwd=plain_text)
    assert proc.returncode == 1
    assert f"modelo.base: {QWEN} is neither a local folder nor in the Hugging Face cache" in proc.stdout
    assert f"HF_HUB_OFFLINE is set — download it first with `hf download {QWEN}`" in proc.stdout

    snapshot = cache_hub_model(plain_text / "hf-home", QWEN)
    proc = cli("validate", name, cwd=plain_text)
    assert proc.returncode == 0, proc.stdout
    assert f"modelo.base: {QWEN}, in the local Hugging Face cache ({snapshot})" in proc.stdout
    assert (
        f"✓ modelo.base: {QWEN}, in the local Hugging Face cache"
        in cli("inspect", name, cwd=plain_text).stdout
    )

    name = write_config(plain_text, "local.yaml", formatos={"formato_saida": "texto"})
    assert "modelo.base: local folder modelo-local" in cli("validate", name, cwd=plain_text).stdout


def test_uncached_model_with_a_reachable_hub_will_be_downloaded(plain_text: Path) -> None:
    name = write_config(plain_text, formatos={"formato_saida": "texto"}, modelo={"base": QWEN})
    with socket.socket() as hub:
        hub.bind(("127.0.0.1", 0))
        hub.listen()
        endpoint = f"http://127.0.0.1:{hub.getsockname()[1]}"
        proc = cli(
            "validate",
            name,
            cwd=plain_text,
            HF_HUB_OFFLINE=None,
            TRANSFORMERS_OFFLINE=None,
            HF_ENDPOINT=endpoint,
        )
    assert proc.returncode == 0, proc.stdout
    assert f"modelo.base: {QWEN}, not cached: will be downloaded from {endpoint}" in proc.stdout


# ------------------------------------------------------------------------------- 5. masks and counts


def test_mask_matching_no_file_fails_validate_and_inspect(plain_text: Path) -> None:
    name = write_config(plain_text, formatos={"formato_saida": "texto"})
    cfg = yaml.safe_load((plain_text / name).read_text())
    cfg["pastas"]["entrada"]["mascara"] = "*.md"
    (plain_text / name).write_text(yaml.safe_dump(cfg))
    proc = cli("validate", name, cwd=plain_text)
    assert proc.returncode == 1
    assert (
        f"pastas.entrada.mascara: '*.md' matches no file in 'in' (relative to {plain_text}) "
        "(it holds 50 other file(s), e.g. 000.txt, 001.txt, 002.txt) — fix the mask or the folder"
        in proc.stdout
    )
    out = cli("inspect", name, cwd=plain_text).stdout
    assert "✗ pastas.entrada.mascara: '*.md' matches no file" in out
    assert " (0 arquivo(s)" not in out and "✓ pastas.entrada.pasta" not in out


def test_list_files_count_agrees_with_pairing(plain_text: Path) -> None:
    for i in range(50):
        (plain_text / "out" / f"{i:03d}.txt").write_text(json.dumps({"n": i}))
    (plain_text / "out" / "007.txt").write_text("Error: extraction failed")
    (plain_text / "out" / "013.txt").write_text("{not json")
    name = write_config(plain_text)
    first = cli("list-files", name, cwd=plain_text).stdout.splitlines()[0]
    assert first.startswith(
        "48 par(es) | 50 entrada(s) | 50 resposta(s) esperada(s) | 50 ids nos dois lados, 2 inválido(s)"
    )
    cfg = load_config(yaml.safe_load((plain_text / name).read_text()))
    p = cfg["pastas"]
    kept = pair_records(
        p["entrada"], p["predicao"], {**p["validacao"], "skip_invalidos": True}, cfg["formatos"]
    )
    assert len(kept.ids) == 48


# ------------------------------------------------------------------------------- 7. relative paths


def test_missing_folders_name_the_directory_they_were_resolved_from(plain_text: Path) -> None:
    name = write_config(plain_text, formatos={"formato_saida": "texto"}, modelo={"base": "./modelos/qwen"})
    cfg = yaml.safe_load((plain_text / name).read_text())
    cfg["pastas"]["predicao"]["pasta"] = "saidas"
    (plain_text / name).write_text(yaml.safe_dump(cfg))
    proc = cli("validate", name, cwd=plain_text)
    assert f"pastas.predicao.pasta: folder 'saidas' (relative to {plain_text}) does not exist" in proc.stdout
    assert f"folder './modelos/qwen' does not exist (relative paths start at {plain_text})" in proc.stdout
    with pytest.raises(AfinarError, match=rf"'saidas' \(relative to {plain_text}\) does not exist"):
        from afinar.data.pairing import list_files

        list_files("saidas", "*.txt", "pastas.predicao")


def test_a_4bit_training_on_a_machine_without_gpu_is_refused_by_name() -> None:
    """nbits 4 is the default: a local run without a GPU is stopped before any job, naming the key."""
    from afinar.preflight import check_quantized_training_has_gpu

    exps = {"a": {"treinamento": {"nbits": 4}}, "b": {"treinamento": {"nbits": 0}}}
    with pytest.raises(AfinarError, match=r"^experiment a: treinamento.nbits: 4 .* set treinamento.nbits: 0"):
        check_quantized_training_has_gpu(exps, {"a", "b"}, has_gpu=False)
    check_quantized_training_has_gpu(exps, {"b"}, has_gpu=False)  # only the planned trainings count
    check_quantized_training_has_gpu(exps, {"a", "b"}, has_gpu=True)
    with pytest.raises(AfinarError, match=r"^treinamento.nbits: 8 "):
        check_quantized_training_has_gpu({"x": {"treinamento": {"nbits": 8}}}, {"x"}, has_gpu=False)
