"""Bad input to the data stages: one clear line naming the file/key/record, no outputs, user files untouched.

Each case builds a small real project (text files, parquet, CSV) under ``user/``, breaks one thing and runs
the stages pair → decrypt → split through the library, as the rule scripts do.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from afinar.data.crypto import encrypt_frame, generate_key, run_decrypt
from afinar.data.dataset_mode import run_dataset_split
from afinar.data.pairing import run_pair
from afinar.data.splits import SplitOutputs, run_split
from afinar.errors import AfinarError

KEY = generate_key()
IDS = ["001", "002", "010", "a.b", "2024.1.0", "7", "8", "9", "11", "12"]


def project(tmp: Path) -> dict:
    """A valid project under tmp/user and its normalized config sections."""
    user = tmp / "user"
    (user / "entrada").mkdir(parents=True)
    (user / "saidas").mkdir()
    for i, rid in enumerate(IDS):
        (user / "entrada" / f"{rid}.txt").write_text(f"Documento {rid} de Recife.", encoding="utf-8")
        fence = "```json\n{}\n```" if i % 2 else "{}"
        (user / "saidas" / f"{rid}.txt").write_text(
            fence.replace("{}", json.dumps({"id": rid, "cidade": "Recife"}))
        )
    (user / "prompt.txt").write_text("Extraia:\n<<--TEXTO-->>", encoding="utf-8")
    return {
        "formatos": {"tipo_entrada": "pastas", "formato_saida": "json"},
        "misc": {"log_level": "INFO", "env_chave_criptografia": ""},
        "pastas": {
            "predicao": {"pasta": str(user / "saidas"), "mascara": "*.txt"},
            "entrada": {
                "pasta": str(user / "entrada"),
                "mascara": "*.txt",
                "prompt_template": str(user / "prompt.txt"),
                "tag_texto": "<<--TEXTO-->>",
                "dataframe": "",
                "dataframe_col": "",
                "dataframe_id": "",
            },
            "divisao": {
                "arquivo": "",
                "proporcao": {"treino": 0.6, "validacao": 0.2, "teste": 0.2},
                "seed": 1,
                "validar_ids": True,
            },
            "validacao": {"exigir_json_valido": True, "skip_invalidos": False},
        },
        "dataset": {
            "train_file": "",
            "eval_file": "",
            "test_file": "",
            "train_prompt_col": "messages",
            "eval_prompt_col": "",
            "prompt_template": "",
            "tag_texto": "",
            "hf_dataset": "",
        },
    }


def use_dataframe(tmp: Path, cfg: dict, encrypted: bool = False, ids=None) -> Path:
    user = tmp / "user"
    frame = pd.DataFrame({"id_peca": ids if ids is not None else IDS, "texto": [f"Texto {i}" for i in IDS]})
    if encrypted:
        frame = encrypt_frame(frame, "texto", KEY)
        cfg["misc"]["env_chave_criptografia"] = "CHAVE_TESTE"
    frame.to_parquet(user / "textos.parquet")
    cfg["pastas"]["entrada"].update(
        pasta="", dataframe=str(user / "textos.parquet"), dataframe_col="texto", dataframe_id="id_peca"
    )
    return user / "textos.parquet"


def run_stages(tmp: Path, cfg: dict, environ: dict | None = None) -> SplitOutputs:
    """pair → decrypt → split (or the dataset split), exactly as the three rule scripts call the library."""
    data = tmp / "results" / "data"
    outputs = SplitOutputs.in_folder(data)
    if cfg["formatos"]["tipo_entrada"] == "dataset":
        run_dataset_split(cfg["dataset"], cfg["pastas"]["divisao"], outputs)
        return outputs
    p = cfg["pastas"]
    run_pair(
        p["entrada"],
        p["predicao"],
        p["validacao"],
        cfg["formatos"],
        data / "pairs.parquet",
        data / "pareamento.json",
    )
    run_decrypt(
        data / "pairs.parquet",
        data / "pairs.plain.parquet",
        cfg["misc"]["env_chave_criptografia"],
        p["validacao"]["skip_invalidos"],
        bool(p["entrada"]["dataframe"]),
        {"CHAVE_TESTE": KEY} if environ is None else environ,
        dotenv_path=tmp / "no.env",
    )
    run_split(
        data / "pairs.plain.parquet",
        outputs,
        p["divisao"],
        p["entrada"]["prompt_template"] or None,
        p["entrada"]["tag_texto"],
        data / "pareamento.json",
        data / "pairs.parquet",
    )
    return outputs


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mode of every user file."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@dataclass
class Case:
    name: str
    setup: Callable[[Path, dict], dict | None]  # returns the environ for decrypt, or None for the default
    expect: str
    stage: str  # the stage that must fail: pair, decrypt or split


def _rm(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def _csv(tmp: Path, cfg: dict, text: str) -> None:
    (tmp / "user" / "div.csv").write_text(text, encoding="utf-8")
    cfg["pastas"]["divisao"]["arquivo"] = str(tmp / "user" / "div.csv")


def _set(section: str, sub: str, **values):
    def setup(tmp, cfg):
        cfg[section][sub].update(values)

    return setup


def _dataset(tmp: Path, cfg: dict, name: str, content: bytes | str) -> None:
    path = tmp / "user" / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    cfg["formatos"]["tipo_entrada"] = "dataset"
    cfg["dataset"]["train_file"] = str(path)


CSV_OK = "id_arquivo,alvo\n" + "".join(
    f"{rid},{'teste' if i < 3 else 'treino'}\n" for i, rid in enumerate(IDS)
)

CASES = [
    Case(
        "missing input folder",
        lambda t, c: _rm(t / "user" / "entrada"),
        "pastas.entrada.pasta: '{user}/entrada' does not exist",
        "pair",
    ),
    Case(
        "missing answers folder",
        lambda t, c: _rm(t / "user" / "saidas"),
        "pastas.predicao.pasta: '{user}/saidas' does not exist",
        "pair",
    ),
    Case(
        "empty answers folder",
        lambda t, c: [p.unlink() for p in (t / "user" / "saidas").iterdir()],
        "pastas.predicao.pasta '{user}/saidas': no file matches mask '*.txt' (it is empty)",
        "pair",
    ),
    Case(
        "mask matches nothing",
        _set("pastas", "predicao", mascara="*.json"),
        "no file matches mask '*.json' (it holds other files, e.g. 001.txt",
        "pair",
    ),
    Case(
        "regex mask",
        _set("pastas", "entrada", mascara="^doc_[0-9]+$"),
        "pastas.entrada.mascara: mask '^doc_[0-9]+$' looks like a regular expression",
        "pair",
    ),
    Case(
        "zero pairs",
        lambda t, c: [p.rename(p.with_name("x" + p.name)) for p in (t / "user" / "entrada").iterdir()],
        "no pairs: none of the 10 ids of pastas.entrada.pasta",
        "pair",
    ),
    Case(
        "zero pairs from integer ids",
        lambda t, c: use_dataframe(t, c, ids=[1, 2, 10, 3, 4, 5, 6, 13, 14, 15]) and None,
        "differ only in leading zeros",
        "pair",
    ),
    Case(
        "two files give one id",
        lambda t, c: (
            (t / "user" / "saidas" / "001.json").write_text("{}"),
            c["pastas"]["predicao"].update(mascara="*"),
        )[1],
        "several files give the same id: 001.json/001.txt",
        "pair",
    ),
    Case(
        "dataframe: true",
        _set("pastas", "entrada", dataframe=True),
        "pastas.entrada.dataframe: True is not a path",
        "pair",
    ),
    Case(
        "duplicate ids in dataframe",
        lambda t, c: use_dataframe(t, c, ids=IDS[:-1] + ["001"]) and None,
        "1 id(s) appear more than once in column 'id_peca': 001",
        "pair",
    ),
    Case(
        "missing dataframe column",
        lambda t, c: (use_dataframe(t, c), c["pastas"]["entrada"].update(dataframe_col="txt"))[1],
        "column(s) 'txt' not found (columns: id_peca, texto)",
        "pair",
    ),
    Case(
        "corrupt parquet",
        lambda t, c: (use_dataframe(t, c).write_bytes(b"PAR1 not really"), None)[1],
        "textos.parquet': not a readable parquet file",
        "pair",
    ),
    Case(
        "invalid JSON answer",
        lambda t, c: (t / "user" / "saidas" / "a.b.txt").write_text('{"x": '),
        "1 of 10 pairs are invalid: {user}/saidas/a.b.txt (not valid JSON",
        "pair",
    ),
    Case(
        "Error: answer",
        lambda t, c: (t / "user" / "saidas" / "002.txt").write_text("Error: quota exceeded"),
        "{user}/saidas/002.txt (failed extraction ('Error: quota exceeded'))",
        "pair",
    ),
    Case(
        "all answers invalid while skipping",
        lambda t, c: (
            [p.write_text("Error: x") for p in (t / "user" / "saidas").iterdir()],
            c["pastas"]["validacao"].update(skip_invalidos=True),
        )[1],
        "all 10 pairs are invalid",
        "pair",
    ),
    Case(
        "missing key variable",
        lambda t, c: (use_dataframe(t, c, encrypted=True), {})[1],
        "misc.env_chave_criptografia: the variable 'CHAVE_TESTE' is not set",
        "decrypt",
    ),
    Case(
        "wrong key",
        lambda t, c: (use_dataframe(t, c, encrypted=True), {"CHAVE_TESTE": generate_key()})[1],
        "10 of 10 texts could not be decrypted (ids 001, 002, 010, 11, 12, 2024.1.0, 7, 8, 9, a.b)",
        "decrypt",
    ),
    Case(
        "malformed key",
        lambda t, c: (use_dataframe(t, c, encrypted=True), {"CHAVE_TESTE": "abc"})[1],
        "'CHAVE_TESTE' does not hold a valid Fernet key",
        "decrypt",
    ),
    Case(
        "CSV with unknown ids",
        lambda t, c: _csv(t, c, CSV_OK + "999,treino\n"),
        "1 id(s) of the file are not among the pairs: 999",
        "split",
    ),
    Case(
        "CSV missing ids",
        lambda t, c: _csv(t, c, CSV_OK.replace("a.b,treino\n", "")),
        "1 paired id(s) are missing from the file: a.b — delete",
        "split",
    ),
    Case(
        "CSV unknown label",
        lambda t, c: _csv(t, c, CSV_OK.replace("a.b,treino", "a.b,descartar")),
        "unknown alvo value(s) 'descartar'",
        "split",
    ),
    Case(
        "CSV missing column",
        lambda t, c: _csv(t, c, CSV_OK.replace("alvo", "split")),
        "column(s) alvo missing (found: id_arquivo, split)",
        "split",
    ),
    Case(
        "CSV duplicate ids",
        lambda t, c: _csv(t, c, CSV_OK + "001,teste\n"),
        "id(s) listed more than once: 001",
        "split",
    ),
    Case(
        "missing template",
        lambda t, c: (t / "user" / "prompt.txt").unlink(),
        "pastas.entrada.prompt_template: file '{user}/prompt.txt' does not exist",
        "split",
    ),
    Case(
        "empty test split",
        _set("pastas", "divisao", proporcao={"treino": 0.99, "validacao": 0.0, "teste": 0.01}),
        "the teste split is empty (10 records, proporcao teste: 0.01)",
        "split",
    ),
    Case(
        "dataset: missing train file",
        lambda t, c: c.update(formatos={"tipo_entrada": "dataset"}),
        "dataset.train_file: not set",
        "split",
    ),
    Case(
        "dataset: unknown format",
        lambda t, c: _dataset(t, c, "d.csv", "a,b\n"),
        "unknown format '.csv'",
        "split",
    ),
    Case(
        "dataset: corrupt parquet",
        lambda t, c: _dataset(t, c, "d.parquet", b"garbage"),
        "d.parquet': not a readable parquet file",
        "split",
    ),
    Case(
        "dataset: bad row",
        lambda t, c: _dataset(t, c, "d.jsonl", '{"messages": [{"role": "user", "content": "x"}]}\n'),
        "d.jsonl' row 1: the last message must be a non-empty assistant answer",
        "split",
    ),
]

STAGE_OUTPUTS = {
    "pair": ["pairs.parquet", "pareamento.json"],
    "decrypt": ["pairs.plain.parquet"],
    "split": ["treino.parquet", "validacao.parquet", "teste.parquet", "divisao.csv", "divisao.json"],
}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(tmp_path, case):
    cfg = project(tmp_path)
    environ = case.setup(tmp_path, cfg)
    user = tmp_path / "user"
    before = snapshot(user)
    with pytest.raises(AfinarError) as info:
        run_stages(tmp_path, cfg, environ)
    message = str(info.value)
    assert "\n" not in message
    assert case.expect.format(user=user) in message
    assert " — " in message or "refusing" in message  # says what to do
    assert KEY not in message
    assert snapshot(user) == before
    data = tmp_path / "results" / "data"
    for name in STAGE_OUTPUTS[case.stage]:
        assert not (data / name).exists(), name
    assert not list(data.glob(".*.tmp")) if data.exists() else True


def test_ids_round_trip_and_migrated_csv_leaves_user_file_untouched(tmp_path):
    cfg = project(tmp_path)
    (tmp_path / "user" / "entrada" / "010.txt").write_bytes("Ação em São Luís.".encode("latin-1"))
    csv = "id_arquivo,alvo\n" + "".join(
        f"{rid},{lab}\n"
        for rid, lab in zip(
            IDS,
            [
                "test",
                "eval",
                "avaliação",
                "train",
                "treino",
                "train",
                "train",
                "Training",
                "teste",
                "validation",
            ],
            strict=True,
        )
    )
    _csv(tmp_path, cfg, csv)
    before = snapshot(tmp_path / "user")
    outputs = run_stages(tmp_path, cfg)
    assert snapshot(tmp_path / "user") == before
    ids = {
        s: pq.read_table(outputs.split_path(s)).column("id").to_pylist()
        for s in ("treino", "validacao", "teste")
    }
    assert ids == {
        "treino": ["2024.1.0", "7", "8", "9", "a.b"],
        "validacao": ["002", "010", "12"],
        "teste": ["001", "11"],
    }
    summary = json.loads((tmp_path / "results" / "data" / "pareamento.json").read_text())
    assert summary["latin1"] == [str(tmp_path / "user" / "entrada" / "010.txt")]
    teste = pq.read_table(outputs.teste).to_pylist()
    assert teste[0]["messages"][0]["content"] == "Extraia:\nDocumento 001 de Recife."
    assert json.loads(teste[0]["messages"][1]["content"]) == {"id": "001", "cidade": "Recife"}
    migrated = pd.read_csv(outputs.divisao_csv, dtype=str)
    assert set(migrated["alvo"]) == {"treino", "validacao", "teste"} and "001" in set(migrated["id_arquivo"])


def test_encrypted_dataframe_end_to_end(tmp_path):
    cfg = project(tmp_path)
    use_dataframe(tmp_path, cfg, encrypted=True)
    outputs = run_stages(tmp_path, cfg)
    raw = pq.read_table(tmp_path / "results" / "data" / "pairs.parquet").column("texto").to_pylist()
    assert all(t.startswith("gAAAAA") for t in raw)
    rows = [
        r for s in ("treino", "validacao", "teste") for r in pq.read_table(outputs.split_path(s)).to_pylist()
    ]
    assert sorted(r["messages"][0]["content"] for r in rows) == sorted(f"Extraia:\nTexto {i}" for i in IDS)
