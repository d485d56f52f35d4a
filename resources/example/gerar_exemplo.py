"""Generate the bundled example: short Portuguese documents → JSON with the fields a model must extract.

Deterministic (seeded ``random.Random``): running it again rewrites byte-identical files. The task is
chosen so a tiny model learns it measurably in about a minute of CPU: ``tipo`` is cued by words of the
document (easy), ``nome``, ``cidade``, ``data`` and ``valor`` are copied from it (harder), and ``valor``
is ``null`` for documents that carry none.

    python resources/example/gerar_exemplo.py                 # rewrite entrada/, saidas/, textos.parquet, dataset/
    CHAVE=... python resources/example/gerar_exemplo.py --cifrar CHAVE --saida /tmp/textos_cifrados.parquet
    python resources/example/gerar_exemplo.py --chave-exemplo # print the example's (public) key

The second form writes an encrypted copy of textos.parquet with the Fernet key held by the variable
CHAVE. The bundled ``textos_cifrados.parquet`` (used by config/examples/seed-compat.yaml) was written
that way with the example key, which is derived from a public phrase and so protects nothing: it exists
only so the original tool's encrypted example runs as shipped. Never use it for real data.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20261125
N_NUMERIC = 320  # ids 001..320
N_DOTTED = 40  # ids like 202400000123.1.0 (the real corpus has dotted ids)
N_DATASET = 60
# Public, derived from a phrase: the bundled encrypted example is readable by anyone, on purpose.
EXAMPLE_KEY = base64.urlsafe_b64encode(
    hashlib.sha256(b"afinar: public example key, protects nothing").digest()
)

NOMES = [
    "Ana",
    "Bruno",
    "Carla",
    "Daniel",
    "Elisa",
    "Fábio",
    "Gabriela",
    "Heitor",
    "Isabel",
    "João",
    "Karina",
    "Lucas",
    "Marina",
    "Nuno",
    "Olga",
    "Paulo",
    "Renata",
    "Sérgio",
    "Tânia",
    "Vítor",
]
SOBRENOMES = ["Silva", "Souza", "Costa", "Lima", "Pereira", "Alves", "Rocha", "Gomes", "Ribeiro", "Martins"]
CIDADES = [
    "Campinas",
    "Recife",
    "Curitiba",
    "Belém",
    "Natal",
    "Santos",
    "Londrina",
    "Goiânia",
    "Manaus",
    "Olinda",
]

# Per tipo: sentence templates; {nome} {cidade} {data} {valor} are filled in, None means the field is absent.
TIPOS = {
    "recibo": [
        "Recibo emitido em {cidade} no dia {data}. Declaro que recebi de {nome} a quantia de R$ {valor} "
        "referente ao aluguel do mês. Dou plena quitação.",
        "Recebi de {nome} o valor de R$ {valor} pelo serviço prestado. {cidade}, {data}. Este recibo vale "
        "como comprovante de pagamento.",
    ],
    "contrato": [
        "Contrato de prestação de serviços firmado em {cidade}, em {data}, entre a empresa e {nome}. O "
        "contratante pagará R$ {valor} ao final de cada mês. As partes assinam este contrato.",
        "Pelo presente contrato, {nome} se obriga a entregar o material combinado. Valor total do contrato: "
        "R$ {valor}. Assinado em {cidade} no dia {data}.",
    ],
    "multa": [
        "Auto de infração lavrado em {cidade} no dia {data}. O condutor {nome} recebeu multa de R$ {valor} "
        "por estacionar em local proibido. Cabe recurso em 30 dias.",
        "Notificação de multa: {nome} excedeu o limite de velocidade em {cidade}, em {data}. Valor da multa: "
        "R$ {valor}. O pagamento pode ser feito em qualquer banco.",
    ],
    "reclamacao": [
        "Venho registrar minha reclamação. Eu, {nome}, morador de {cidade}, comprei um produto que chegou "
        "quebrado no dia {data}. Peço a troca imediata.",
        "Reclamação de {nome}: o atendimento da loja de {cidade} foi péssimo em {data}. Ninguém resolveu o "
        "problema e exijo uma resposta.",
    ],
    "convite": [
        "Convite: {nome} tem a alegria de convidar você para a festa de aniversário em {cidade}, no dia "
        "{data}. Sua presença é muito importante.",
        "Você está convidado! A formatura de {nome} será em {cidade} no dia {data}. Confirme sua presença "
        "até a véspera.",
    ],
}
SEM_VALOR = {"reclamacao", "convite"}


def make_record(rng: random.Random) -> tuple[str, dict]:
    """One synthetic document and the JSON answer extracted from it."""
    tipo = rng.choice(sorted(TIPOS))
    nome = f"{rng.choice(NOMES)} {rng.choice(SOBRENOMES)}"
    cidade = rng.choice(CIDADES)
    data = f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(2019, 2025)}"
    valor = (
        None
        if tipo in SEM_VALOR
        else f"{rng.randint(50, 9999):,}".replace(",", ".") + f",{rng.choice(['00', '50', '90'])}"
    )
    texto = rng.choice(TIPOS[tipo]).format(nome=nome, cidade=cidade, data=data, valor=valor)
    return texto, {"tipo": tipo, "nome": nome, "cidade": cidade, "data": data, "valor": valor}


def example_ids() -> list[str]:
    """Zero-padded numeric ids plus dotted ids, as in the real corpus."""
    return [f"{i:03d}" for i in range(1, N_NUMERIC + 1)] + [
        f"2024{i:08d}.{1 + i % 3}.{i % 2}" for i in range(1, N_DOTTED + 1)
    ]


def answer_file_text(answer: dict, fenced: bool) -> str:
    """The answer as an extraction pipeline writes it: indented JSON, sometimes inside a ```json fence."""
    body = json.dumps(answer, ensure_ascii=False, indent=2)
    return f"```json\n{body}\n```\n" if fenced else body + "\n"


def generate(dest: Path = HERE) -> None:
    """Write entrada/, saidas/, textos.parquet and dataset/treino.jsonl under ``dest``."""
    import pandas as pd

    rng = random.Random(SEED)
    entrada, saidas = dest / "entrada", dest / "saidas"
    for folder in (entrada, saidas, dest / "dataset"):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.txt"):
            old.unlink()
    ids, textos = [], []
    for rid in example_ids():
        texto, answer = make_record(rng)
        (entrada / f"{rid}.txt").write_text(texto + "\n", encoding="utf-8")
        (saidas / f"{rid}.txt").write_text(
            answer_file_text(answer, fenced=rng.random() < 0.3), encoding="utf-8"
        )
        ids.append(rid)
        textos.append(texto)
    pd.DataFrame({"id_peca": ids, "texto": textos}).to_parquet(dest / "textos.parquet", index=False)
    prompt = (dest / "prompt.txt").read_text(encoding="utf-8")
    with open(dest / "dataset" / "treino.jsonl", "w", encoding="utf-8") as fh:
        for n in range(1, N_DATASET + 1):
            texto, answer = make_record(rng)
            messages = [
                {"role": "user", "content": prompt.replace("<<--TEXTO-->>", texto)},
                {"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)},
            ]
            fh.write(json.dumps({"id": f"ds{n:03d}", "messages": messages}, ensure_ascii=False) + "\n")


def encrypt_copy(var_name: str, out: Path) -> None:
    """Write an encrypted copy of textos.parquet with the Fernet key in ``$var_name``."""
    import pandas as pd

    sys.path.insert(0, str(HERE.parents[1] / "scripts"))
    from afinar.data.crypto import encrypt_frame

    key = os.environ.get(var_name)
    if not key:
        sys.exit(f"gerar_exemplo: the variable {var_name} is not set — export it with a Fernet key")
    frame = pd.read_parquet(HERE / "textos.parquet")
    encrypt_frame(frame, "texto", key).to_parquet(out, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cifrar", metavar="VAR", help="write an encrypted textos.parquet with the key in $VAR"
    )
    parser.add_argument("--saida", type=Path, help="output path of the encrypted parquet (with --cifrar)")
    parser.add_argument(
        "--chave-exemplo", action="store_true", help="print the public key of the bundled encrypted example"
    )
    args = parser.parse_args()
    if args.chave_exemplo:
        print(EXAMPLE_KEY.decode())
    elif args.cifrar:
        if not args.saida:
            parser.error("--cifrar needs --saida")
        encrypt_copy(args.cifrar, args.saida)
    else:
        generate()


if __name__ == "__main__":
    main()
