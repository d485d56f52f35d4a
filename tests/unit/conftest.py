"""Fixtures shared by unit tests: the tiny offline model (built once per session) and a small chat task.

``tiny_model_dir`` is a real Qwen2 model folder (tokenizer trained on the bundled example corpus plus a
synthetic extraction task, random weights) built by ``afinar.train.demo_model``; tests that train, predict
or export use it instead of downloading anything.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

# One torch thread per test process: on a machine shared by several test runs, torch's default (one
# thread per core) spins and makes tiny CPU training runs ten times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "resources" / "example"

_NAMES = [
    "Ana",
    "Bruno",
    "Carla",
    "Diego",
    "Elisa",
    "Fabio",
    "Gabriela",
    "Hugo",
    "Iris",
    "Joao",
    "Karen",
    "Lucas",
]
_SURNAMES = ["Silva", "Souza", "Costa", "Lima", "Rocha", "Alves", "Pereira", "Gomes"]
_CITIES = ["Recife", "Natal", "Belem", "Manaus", "Curitiba", "Salvador", "Fortaleza", "Vitoria"]


def task_rows(n: int, seed: int = 0) -> list[list[dict]]:
    """``n`` conversations of a small extraction task (free text in, JSON out) a tiny model can learn."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name = f"{rng.choice(_NAMES)} {rng.choice(_SURNAMES)}"
        age, city = rng.randint(18, 90), rng.choice(_CITIES)
        text = f"Cadastro recebido. Nome: {name}. Idade: {age} anos. Cidade: {city}."
        answer = json.dumps({"nome": name, "idade": age, "cidade": city}, ensure_ascii=False)
        rows.append(
            [
                {"role": "user", "content": f"Extraia nome, idade e cidade em JSON.\n{text}"},
                {"role": "assistant", "content": answer},
            ]
        )
    return rows


def write_split(path: Path, rows: list[list[dict]]) -> Path:
    """Write a split parquet with the contract's columns (``id``, ``messages``)."""
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": [str(i) for i in range(len(rows))], "messages": rows}).to_parquet(path, index=False)
    return path


def tiny_corpus() -> list[str]:
    """Text for the tiny tokenizer: the bundled example files (when present) and the synthetic task."""
    from afinar.train.demo_model import demo_texts, read_corpus

    texts = read_corpus([EXAMPLE]) if EXAMPLE.is_dir() else []
    for msgs in task_rows(300, seed=123):
        texts.extend(m["content"] for m in msgs)
    return demo_texts(texts)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2 model + tokenizer folder, built once per test session."""
    from afinar.train.demo_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "modelo-base", tiny_corpus(), seed=0)


@pytest.fixture()
def task_splits(tmp_path) -> dict[str, Path]:
    """treino/validacao/teste parquets of the synthetic task under ``tmp_path/results/data``."""
    data = tmp_path / "results" / "data"
    return {
        "treino": write_split(data / "treino.parquet", task_rows(48, seed=1)),
        "validacao": write_split(data / "validacao.parquet", task_rows(8, seed=2)),
        "teste": write_split(data / "teste.parquet", task_rows(16, seed=3)),
    }
