"""Training throughput on one GPU: Afinar's train path vs a plain transformers + PEFT + TRL script.

Issue 6's performance target. Same GPU, same random-initialised ~1.1B Llama-shaped model built here,
same 1,600 chats of 54-665 tokens (mean ≈ 355), same LoRA settings. The baseline is written the way a
user would: padded batches, gradient checkpointing on, TRL's SFTTrainer on the messages. Each variant runs
in its own process (Unsloth patches transformers/TRL on import, which must not leak into the baseline).

Reported per variant: real (non-padding) tokens/s measured between step ``--warmup`` and the last step,
peak GPU memory (max reserved, GB), MFU = 6 x parameters x tokens/s / the GPU's dense bf16 peak.

    export PYTHONPATH=/tmp/site:$PWD/scripts HF_HUB_OFFLINE=1
    python tests/benchmarks/bench_train_gpu.py --out $OUT/bench.json             # all variants (~8 min on H100)
    python tests/benchmarks/bench_train_gpu.py --variants ours-bf16,baseline-bf16 --steps 40
Variants: baseline-bf16, baseline-4bit, ours-bf16, ours-4bit (our defaults: length-grouped batches),
ours-bf16-packing, ours-bf16-bs16 (length-grouped, batch 16).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}
WORDS = [
    "processo",
    "autor",
    "réu",
    "contrato",
    "valor",
    "cidade",
    "data",
    "sentença",
    "recurso",
    "pedido",
    "documento",
    "cláusula",
    "pagamento",
    "prazo",
    "multa",
    "juiz",
    "tribunal",
    "decisão",
    "parte",
    "prova",
    "laudo",
    "exame",
    "paciente",
    "médico",
    "hospital",
    "diagnóstico",
    "tratamento",
    "receita",
    "alta",
    "consulta",
]
ALL_VARIANTS = [
    "baseline-bf16",
    "ours-bf16",
    "baseline-4bit",
    "ours-4bit",
    "ours-bf16-packing",
    "ours-bf16-bs16",
]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ data + model


def make_chats(tokenizer, n: int, lo: int, hi: int, seed: int) -> tuple[list[list[dict]], list[int]]:
    """``n`` chats whose rendered lengths spread from ``lo`` to ``hi`` tokens (triangular, mean ≈ middle)."""
    rng = random.Random(seed)
    per_word = len(tokenizer(" ".join(WORDS * 4), add_special_tokens=False)["input_ids"]) / (len(WORDS) * 4)
    chats, lengths = [], []
    for _ in range(n):
        target = int(rng.triangular(lo, hi, (lo + hi) / 2))
        words = max(4, int((target - 12) / per_word))
        n_answer = max(2, words // 4)
        user = " ".join(rng.choice(WORDS) for _ in range(words - n_answer))
        answer = " ".join(rng.choice(WORDS) for _ in range(n_answer))
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        chats.append(msgs)
        lengths.append(len(tokenizer.apply_chat_template(msgs, tokenize=True)))
    return chats, lengths


def prepare(workdir: Path, n: int) -> dict:
    """Build the model and the data once; every variant process reuses them."""
    import pandas as pd
    from transformers import AutoTokenizer

    from afinar.demo_model import LlamaSpec, build_llama_model

    model_dir = workdir / "llama-1b"
    if not (model_dir / "config.json").is_file():
        log("building the random 1.1B Llama-shaped model")
        corpus = [" ".join(WORDS)] * 50 + ["user assistant system"] * 10
        build_llama_model(model_dir, corpus, LlamaSpec())
    tok = AutoTokenizer.from_pretrained(model_dir)
    chats, lengths = make_chats(tok, n, 54, 665, seed=0)
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": [str(i) for i in range(n)], "messages": chats}).to_parquet(data / "treino.parquet")
    pd.DataFrame({"id": ["v0"], "messages": chats[:1]}).to_parquet(data / "validacao.parquet")
    stats = {"n": n, "min": min(lengths), "max": max(lengths), "mean": round(sum(lengths) / n, 1)}
    log(f"data: {stats}")
    return {"model": str(model_dir), "data": str(data), "lengths": stats}


# ------------------------------------------------------------------------------------------ measurement


def timing_callback(warmup: int):
    """Record wall time and TRL's cumulative ``num_tokens`` (non-padding tokens) at every logged step."""
    from transformers import TrainerCallback

    class Timing(TrainerCallback):
        def __init__(self):
            self.points: list[tuple[int, float, float]] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "num_tokens" in logs:
                import torch

                torch.cuda.synchronize()
                self.points.append((state.global_step, time.perf_counter(), float(logs["num_tokens"])))

        def result(self) -> dict:
            pts = [p for p in self.points if p[0] >= warmup]
            if len(pts) < 2:
                return {"error": f"too few logged steps after warm-up ({len(self.points)})"}
            (s0, t0, n0), (s1, t1, n1) = pts[0], pts[-1]
            return {
                "steps_measured": s1 - s0,
                "seconds": round(t1 - t0, 2),
                "real_tokens": int(n1 - n0),
                "tokens_per_s": round((n1 - n0) / (t1 - t0), 1),
            }

    return Timing()


def gpu_info() -> dict:
    import torch

    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    return {"gpu": name, "peak_bf16_tflops": peak}


def run_ours(prep: dict, variant: str, steps: int, batch: int, warmup: int) -> dict:
    from afinar.training import TrainPaths, train

    work = Path(prep["data"]).parent / f"run-{variant}"
    paths = TrainPaths.for_experiment(work, "bench")
    paths.train.parent.mkdir(parents=True, exist_ok=True)
    for name in ("treino", "validacao"):
        target = paths.train.parent / f"{name}.parquet"
        if not target.exists():
            os.symlink(Path(prep["data"]) / f"{name}.parquet", target)
    tr = {
        "backend": "unsloth",
        "epochs": 1,
        "batch_size": batch,
        "grad_batch_size": 1,
        "max_seq_length": 1024,
        "learning_rate": 2e-4,
        "warmup_steps": 5,
        "eval_steps": 0,
        "save_checkpoints": False,
        "resume_from_checkpoint": False,
        "nbits": 4 if "4bit" in variant else 0,
        "seed": 3407,
        "train_on_responses_only": True,
        "paciencia": None,
        "max_grad_norm": 1.0,
        "precisao": "bf16",
        "report_to": [],
        "packing": "packing" in variant,
        "save_total_limit": 1,
        "limpar_checkpoints": True,
        "continuar_de": "",
        "weight_decay": 0.0,
        "optim": "adamw_8bit",
        "lr_scheduler_type": "linear",
        "gradient_checkpointing": True,
        "max_steps": steps,
        "filtro_tokens": {},
        "agrupar_por_tamanho": "packing" not in variant,
    }
    lora = {
        "r": 16,
        "alpha": 32,
        "dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    }
    timing = timing_callback(warmup)
    summary = train(
        {"modelo": {"base": prep["model"], "saida": ""}, "treinamento": tr, "lora": lora},
        paths,
        extra_callbacks=[timing],
    )
    return {
        **timing.result(),
        "params": summary["modelo_info"]["total"],
        "masked": summary["fracao_mascarada"],
    }


def run_baseline(prep: dict, variant: str, steps: int, batch: int, warmup: int) -> dict:
    """The plain script a user would write (kept deliberately ordinary)."""
    import pandas as pd
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(prep["model"])
    quant = None
    if "4bit" in variant:
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    model = AutoModelForCausalLM.from_pretrained(
        prep["model"], dtype=torch.bfloat16, quantization_config=quant, device_map={"": 0}
    )
    if quant is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    n_params = sum(p.numel() for p in model.parameters())
    model = get_peft_model(
        model,
        LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
    frame = pd.read_parquet(Path(prep["data"]) / "treino.parquet")
    ds = Dataset.from_dict({"messages": [[dict(m) for m in msgs] for msgs in frame["messages"]]})
    args = SFTConfig(
        output_dir=str(Path(prep["data"]).parent / f"run-{variant}"),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=2e-4,
        warmup_steps=5,
        logging_steps=1,
        bf16=True,
        gradient_checkpointing=True,
        max_length=1024,
        assistant_only_loss=True,
        optim="adamw_8bit",
        save_strategy="no",
        report_to="none",
        seed=3407,
    )
    timing = timing_callback(warmup)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[timing])
    trainer.train()
    return {**timing.result(), "params": n_params}


def child(args) -> None:
    import torch

    prep = json.loads(Path(args.prep).read_text())
    torch.cuda.reset_peak_memory_stats()
    runner = run_ours if args.child.startswith("ours") else run_baseline
    batch = 16 if args.child.endswith("bs16") else args.batch
    result = runner(prep, args.child, args.steps, batch, args.warmup)
    result.update(gpu_info())
    result["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 1024**3, 2)
    result["peak_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
    if result.get("peak_bf16_tflops") and result.get("tokens_per_s"):
        result["mfu_%"] = round(
            100 * 6 * result["params"] * result["tokens_per_s"] / (result["peak_bf16_tflops"] * 1e12), 2
        )
    result.update({"variant": args.child, "batch": batch})
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(ALL_VARIANTS[:4]))
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps per variant")
    ap.add_argument("--warmup", type=int, default=10, help="steps excluded from the timing")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--n", type=int, default=1600, help="number of chats")
    ap.add_argument("--workdir", default="/tmp/afinar-bench")
    ap.add_argument("--out", default="")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--prep", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    prep = prepare(work, args.n)
    (work / "prep.json").write_text(json.dumps(prep))
    results = []
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        log(f"running {variant}")
        cmd = [
            sys.executable,
            __file__,
            "--child",
            variant,
            "--prep",
            str(work / "prep.json"),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--batch",
            str(args.batch),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr or proc.stdout)[-3000:]
            log(f"{variant} failed (exit {proc.returncode}):\n{tail}")
            results.append({"variant": variant, "error": tail[-500:]})
            continue
        results.append(json.loads(lines[-1][len("RESULT ") :]))
        log(json.dumps(results[-1]))
    report = {"data": prep["lengths"], "results": results, "ratios": ratios(results)}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


def ratios(results: list[dict]) -> dict:
    """Our path against the baseline of the same precision: throughput and peak-memory ratios."""
    by = {r["variant"]: r for r in results if "error" not in r}
    out = {}
    for ours, base in (
        ("ours-bf16", "baseline-bf16"),
        ("ours-4bit", "baseline-4bit"),
        ("ours-bf16-packing", "baseline-bf16"),
        ("ours-bf16-bs16", "baseline-bf16"),
    ):
        if ours in by and base in by and by[base].get("tokens_per_s"):
            out[ours] = {
                "tokens_per_s_x": round(by[ours]["tokens_per_s"] / by[base]["tokens_per_s"], 2),
                "peak_memory_x": round(by[ours]["peak_reserved_gb"] / by[base]["peak_reserved_gb"], 2),
            }
    return out


if __name__ == "__main__":
    main()
