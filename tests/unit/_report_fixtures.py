"""Builders of the files the charts, report and compare stages read, in the shapes of docs/architecture.md.

Shared by tests/unit/test_{charts,report,compare}.py. Values are generated deterministically (seeded)
and realistically (a decaying loss with noise, a warm-up + linear learning-rate schedule, periodic
evaluations, hardware samples), so the charts drawn from them look like a real run's.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pandas as pd

NAMES = ["Ana Souza", "Bruno Lima", "Carla Dias", "Diego Alves", "Elisa Rocha", "Fabio Reis", "Gina Melo"]
CITIES = ["Recife", "Natal", "Belém", "Manaus", "Curitiba", "Goiânia"]
SECRET_WORD = "Confidencial"  # appears in every prompt: tests check it never leaks when encrypted


def _record(i: int, rng: random.Random) -> dict:
    name, city, age = rng.choice(NAMES), rng.choice(CITIES), rng.randint(18, 90)
    filler = " ".join(
        rng.choice(["o", "processo", "autos", "parte", "requerente", "fls"])
        for _ in range(rng.randint(5, 60))
    )
    prompt = (
        f"{SECRET_WORD}: extraia nome, idade e cidade. Texto: {name}, {age} anos, mora em {city}. {filler}"
    )
    answer = json.dumps({"nome": name, "idade": age, "cidade": city}, ensure_ascii=False)
    return {
        "id": f"doc{i:03d}",
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
    }


def write_data(root: Path, counts: tuple[int, int, int] = (28, 6, 8), seed: int = 0) -> dict[str, Path]:
    """results/data: the three split parquets, pareamento.json and divisao.json."""
    rng = random.Random(seed)
    data = root / "results" / "data"
    data.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    i = 0
    for split, n in zip(("treino", "validacao", "teste"), counts, strict=True):
        rows = []
        for _ in range(n):
            rows.append(_record(i, rng))
            i += 1
        paths[split] = data / f"{split}.parquet"
        pd.DataFrame(rows).to_parquet(paths[split], index=False)
    total = sum(counts)
    (data / "pareamento.json").write_text(
        json.dumps(
            {
                "n_pares": total,
                "entrada_sem_par": ["x1", "x2"],
                "predicao_sem_par": ["y1"],
                "invalidos": [{"id": "z9", "motivo": "answer is not valid JSON"}],
                "latin1": [],
            }
        )
    )
    (data / "divisao.json").write_text(
        json.dumps(
            {
                "proporcao_config": {"treino": 0.7, "validacao": 0.1, "teste": 0.2},
                "proporcao_efetiva": {
                    s: round(c / total, 4)
                    for s, c in zip(("treino", "validacao", "teste"), counts, strict=True)
                },
                "contagens": dict(zip(("treino", "validacao", "teste"), counts, strict=True)),
            }
        )
    )
    paths["pareamento"] = data / "pareamento.json"
    paths["divisao"] = data / "divisao.json"
    return paths


def write_training(
    exp_dir: Path,
    steps: int = 60,
    eval_every: int = 10,
    gpu: bool = True,
    seed: int = 0,
    runtime: float = 95.0,
    peak_gpu: float = 6.2,
    final_loss: float = 0.8,
) -> dict[str, Path]:
    """treinamento/training_metrics.jsonl, hardware_metrics.jsonl and metrics_summary.json of one run."""
    rng = random.Random(seed)
    tdir = exp_dir / "treinamento"
    tdir.mkdir(parents=True, exist_ok=True)
    t0 = 1_760_000_000.0
    events: list[dict] = [
        {
            "event": "train_begin",
            "timestamp": t0,
            "total_steps": steps,
            "num_epochs": 2,
            "batch_size": 2,
            "grad_accum_steps": 4,
        }
    ]
    losses: list[float] = []
    best = math.inf
    for step in range(1, steps + 1):
        loss = final_loss + 3.2 * math.exp(-step / 12) + rng.uniform(-0.25, 0.25)
        losses.append(loss)
        lr = 2e-4 * step / 5 if step <= 5 else 2e-4 * (steps - step) / (steps - 5)
        row = {
            "event": "log",
            "timestamp": t0 + step * runtime / steps,
            "step": step,
            "epoch": round(2 * step / steps, 4),
            "elapsed_seconds": round(step * runtime / steps, 2),
            "train_loss": round(loss, 6),
            "learning_rate": lr,
            "grad_norm": round(2.5 * math.exp(-step / 20) + rng.uniform(0, 0.6), 4),
            "progress_%": round(100 * step / steps, 2),
        }
        if len(losses) >= 10:
            row["train_loss_avg_10"] = round(sum(losses[-10:]) / 10, 6)
        if step % eval_every == 0:
            ev = final_loss + 0.15 + 3.0 * math.exp(-step / 14) + (0.08 if step > 45 else 0)
            row["eval_loss"] = round(ev, 6)
            if ev < best:
                best = ev
                row["is_best_eval"] = True
        events.append(row)
    events.append(
        {
            "event": "train_end",
            "timestamp": t0 + runtime,
            "total_steps": steps,
            "final_epoch": 2.0,
            "total_time_seconds": runtime,
            "total_time_formatted": "0h 1m 35s",
            "best_eval_loss": round(best, 6),
            "final_train_loss_avg": round(sum(losses[-10:]) / 10, 6),
        }
    )
    paths = {
        "training": tdir / "training_metrics.jsonl",
        "hardware": tdir / "hardware_metrics.jsonl",
        "summary": exp_dir / "metrics_summary.json",
    }
    paths["training"].write_text("".join(json.dumps(e) + "\n" for e in events))
    hw = []
    for k in range(int(runtime // 2) + 1):
        row = {
            "timestamp": t0 + 2 * k,
            "step": min(steps, int(k * 2 * steps / runtime)),
            "fase": "train",
            "cpu_uso_%": round(rng.uniform(55, 95), 1),
            "cpu_uso_processo_%": round(rng.uniform(90, 180), 1),
            "ram_usada_gb": round(5.5 + 1.5 * min(1, k / 8) + rng.uniform(-0.1, 0.1), 3),
            "ram_total_gb": 15.5,
            "ram_uso_%": 45.0,
            "ram_processo_gb": round(2.0 + 1.2 * min(1, k / 8), 3),
            "disco_uso_%": 61.0,
        }
        if gpu:
            alloc = round(peak_gpu * 0.7 * min(1, k / 5) + rng.uniform(0, 0.2), 3)
            row.update(
                {
                    "gpu0_alocada_gb": alloc,
                    "gpu0_reservada_gb": round(min(peak_gpu, alloc * 1.3 + 0.3), 3),
                    "gpu0_max_reservada_gb": round(peak_gpu * min(1, k / 5), 3),
                    "gpu_total_gb": 79.6,
                    "num_gpus": 1,
                }
            )
        hw.append(row)
    paths["hardware"].write_text("".join(json.dumps(r) + "\n" for r in hw))
    paths["summary"].write_text(
        json.dumps(
            {
                "train_runtime": runtime,
                "train_samples_per_second": 1.7,
                "train_loss": round(sum(losses) / len(losses), 4),
                "global_step": steps,
                "epoch": 2.0,
                "eval_loss": round(best, 4),
                "total_flos": 1.2e12,
                "modelo_info": {"treinaveis": 1_081_344, "total": 495_114_112, "percentual": 0.2184},
                "distribuido": {
                    "processos": 2,
                    "estrategia": "ddp",
                    "batch_por_dispositivo": 4,
                    "acumulacao": 2,
                    "batch_efetivo": 16,
                },
                "hardware": {"gpu_nome": "NVIDIA H100 80GB HBM3" if gpu else None},
            }
        )
    )
    return paths


def write_evaluation(
    exp_dir: Path, teste: Path, quality: float = 0.8, base: bool = True, seed: int = 0
) -> dict[str, Path]:
    """predicoes/teste.jsonl, avaliacao/metricas.json and avaliacao/por_registro.csv."""
    rng = random.Random(seed)
    frame = pd.read_parquet(teste)
    preds, per_record = [], []
    for rid, msgs in zip(frame["id"], frame["messages"], strict=True):
        prompt, expected = msgs[0]["content"], msgs[1]["content"]
        good = rng.random() < quality
        generated = expected if good else expected.replace('"cidade"', '"cidade_errada"')
        preds.append(
            {
                "id": rid,
                "prompt": prompt,
                "esperado": expected,
                "gerado": generated,
                "tokens_prompt": len(prompt.split()),
                "tokens_saida": len(generated.split()),
                "segundos": 0.4,
            }
        )
        per_record.append(
            {
                "id": rid,
                "exact_match": float(good),
                "rouge_l_f1": 1.0 if good else 0.72,
                "token_f1": 1.0 if good else 0.8,
            }
        )
    (exp_dir / "predicoes").mkdir(parents=True, exist_ok=True)
    (exp_dir / "avaliacao").mkdir(parents=True, exist_ok=True)
    paths = {
        "predicoes": exp_dir / "predicoes" / "teste.jsonl",
        "metricas": exp_dir / "avaliacao" / "metricas.json",
        "por_registro": exp_dir / "avaliacao" / "por_registro.csv",
    }
    paths["predicoes"].write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds))
    pd.DataFrame(per_record).to_csv(paths["por_registro"], index=False)
    em = sum(r["exact_match"] for r in per_record) / len(per_record)
    modelo = {
        "exact_match": em,
        "rouge_l_f1": 0.72 + 0.28 * em,
        "token_f1": 0.8 + 0.2 * em,
        "json_valido": 1.0,
        "campos_micro_f1": (2 + em) / 3,
        "campos_macro_f1": (2 + em) / 3 - 0.01,
    }
    base_m = (
        {
            "exact_match": 0.0,
            "rouge_l_f1": 0.21,
            "token_f1": 0.18,
            "json_valido": 0.25,
            "campos_micro_f1": 0.12,
            "campos_macro_f1": 0.1,
        }
        if base
        else None
    )
    por_campo = {
        "nome": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "suporte": len(preds)},
        "idade": {"precision": 0.95, "recall": 0.95, "f1": 0.95, "suporte": len(preds)},
        "cidade": {"precision": em, "recall": em, "f1": em, "suporte": len(preds)},
        "observacao_complementar_do_processo": {"precision": 0.5, "recall": 0.25, "f1": 0.333, "suporte": 4},
    }
    metricas = {
        "modelo": modelo,
        "base": base_m,
        "n": len(preds),
        "por_campo": por_campo,
        "ganho": {k: modelo[k] - base_m[k] for k in modelo} if base_m else {},
    }
    if base:
        metricas["base"]["por_campo"] = {
            k: {"precision": 0.2, "recall": 0.1, "f1": 0.13 if k != "nome" else 0.4, "suporte": v["suporte"]}
            for k, v in por_campo.items()
        }
    paths["metricas"].write_text(json.dumps(metricas))
    return paths


def write_tokenizer(folder: Path, corpus: list[str]) -> Path:
    """A tiny real fast tokenizer (word level, trained on ``corpus``) saved as an HF folder, with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        corpus, trainers.WordLevelTrainer(special_tokens=["<unk>", "<|im_start|>", "<|im_end|>"])
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>")
    fast.chat_template = (
        "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
        "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return folder


def corpus_of(paths: dict[str, Path]) -> list[str]:
    """Every message text of the split parquets (to train the tiny tokenizer on)."""
    texts = []
    for split in ("treino", "validacao", "teste"):
        for msgs in pd.read_parquet(paths[split])["messages"]:
            texts.extend(m["content"] for m in msgs)
    return texts
