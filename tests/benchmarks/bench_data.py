"""Benchmark of the data stages (not a test): 100k pairs of ~2 KB through pair → decrypt → split.

    .venv/bin/python tests/benchmarks/bench_data.py [--n 100000] [--keep DIR]

Generates, in a temporary folder, an encrypted input dataframe (id_peca, texto as Fernet tokens) and one
expected-answer file per record (JSON, a third of them in ```json fences), then runs each stage through the
library in a fresh process and prints its wall time and peak RSS (the stage's own process, so one
stage's memory does not hide another's). Target: under 60 s in total and under 2 GB on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

WORDS = (
    "processo réu autor decisão juiz sentença recurso prazo valor contrato multa cidade data "
    "audiência perícia laudo testemunha acórdão tribunal petição despacho"
).split()
KEY_VAR = "AFINAR_BENCH_KEY"


def config(root: Path) -> dict:
    return {
        "entrada": {
            "pasta": "",
            "mascara": "*.txt",
            "dataframe": str(root / "textos.parquet"),
            "dataframe_col": "texto",
            "dataframe_id": "id_peca",
        },
        "predicao": {"pasta": str(root / "saidas"), "mascara": "*.txt"},
        "validacao": {"exigir_json_valido": True, "skip_invalidos": False},
        "formatos": {"tipo_entrada": "pastas", "formato_saida": "json"},
        "divisao": {
            "arquivo": "",
            "proporcao": {"treino": 0.7, "validacao": 0.1, "teste": 0.2},
            "seed": 42,
            "validar_ids": True,
        },
    }


def generate(root: Path, n: int, key: str) -> None:
    """Write the encrypted dataframe, the answer files and a prompt template under ``root``."""
    import pandas as pd

    from afinar.data.crypto import encrypt_texts

    rng = random.Random(1)
    ids = [f"{i:012d}.{i % 7}.{i % 3}" for i in range(n)]
    texts = []
    (root / "saidas").mkdir(parents=True)
    for rid in ids:
        words = rng.choices(WORDS, k=260)  # ~2 KB of text
        texts.append(" ".join(words))
        answer = json.dumps(
            {"id": rid, "tipo": words[0], "valor": rng.randint(1, 10**6)}, ensure_ascii=False, indent=2
        )
        if rng.random() < 0.33:
            answer = f"```json\n{answer}\n```"
        (root / "saidas" / f"{rid}.txt").write_text(answer, encoding="utf-8")
    pd.DataFrame({"id_peca": ids, "texto": encrypt_texts(texts, key)}).to_parquet(
        root / "textos.parquet", index=False
    )
    (root / "prompt.txt").write_text("Extraia os campos do documento:\n<<--TEXTO-->>\n", encoding="utf-8")


def run_stage(stage: str, root: Path, key: str) -> dict:
    """Run one stage in this process (called in a child) and return its seconds and peak RSS.

    The key travels in the environment, never on a command line where ``ps`` would show it."""
    from afinar.data.crypto import run_decrypt
    from afinar.data.pairing import run_pair
    from afinar.data.splits import SplitOutputs, run_split

    cfg, data = config(root), root / "results" / "data"
    start = time.perf_counter()
    if stage == "pair":
        run_pair(
            cfg["entrada"],
            cfg["predicao"],
            cfg["validacao"],
            cfg["formatos"],
            data / "pairs.parquet",
            data / "pareamento.json",
        )
    elif stage == "decrypt":
        run_decrypt(
            data / "pairs.parquet", data / "pairs.plain.parquet", KEY_VAR, False, True, {KEY_VAR: key}, None
        )
    else:
        run_split(
            data / "pairs.plain.parquet",
            SplitOutputs.in_folder(data),
            cfg["divisao"],
            root / "prompt.txt",
            "<<--TEXTO-->>",
            data / "pareamento.json",
            data / "pairs.parquet",
        )
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"stage": stage, "seconds": round(seconds, 2), "peak_rss_mb": round(peak_mb)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, help="generate here and keep the files (default: a temp dir)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.root, os.environ[KEY_VAR])))
        return

    from afinar.data.crypto import generate_key

    key = generate_key()
    with tempfile.TemporaryDirectory(prefix="afinar-bench-") as tmp:
        root = args.keep or Path(tmp)
        t0 = time.perf_counter()
        generate(root, args.n, key)
        size_mb = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20
        print(f"generated {args.n} pairs ({size_mb:.0f} MB) in {time.perf_counter() - t0:.1f} s")
        total = 0.0
        for stage in ("pair", "decrypt", "split"):
            out = subprocess.run(
                [sys.executable, __file__, "--stage", stage, "--root", str(root)],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, KEY_VAR: key},
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            total += result["seconds"]
            print(f"{stage:8s} {result['seconds']:7.2f} s   peak RSS {result['peak_rss_mb']:5d} MB")
        print(f"total    {total:7.2f} s")


if __name__ == "__main__":
    main()
