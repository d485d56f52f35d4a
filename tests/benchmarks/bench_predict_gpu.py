"""Prediction throughput on a GPU: a naive loop (one ``generate`` per example) vs Afinar's predict path.

    .venv/bin/python tests/benchmarks/bench_predict_gpu.py [--prompts 256] [--batch-size 64] [--json out.json]

Builds a ~1B-parameter Llama-shaped model locally (random bf16 weights, hidden 2048, 16 layers, GQA 32/8
heads, MLP 8192; the tokenizer is a small BPE trained here, so the vocabulary is 4k instead of 128k)
and the same chat prompts of mixed length for both paths. Nothing is downloaded.

Reported per path: output tokens/s, and the fraction of the memory-bandwidth limit reached: a decoding
step must read every weight once, so at most ``HBM bandwidth / model bytes`` steps per second are
possible; the fraction is the achieved steps/s times model bytes over the bandwidth (KV-cache reads are
ignored, so this slightly understates real use). The naive loop runs on the first ``--naive`` prompts
only (it is slow; a rate on a subset of the same prompts is a fair comparison). Target: >= 10x.
Runs in about 2 minutes on an H100.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

#: HBM bandwidth in bytes/s by GPU name (vendor data sheets); matched in order, first hit wins.
HBM_BANDWIDTH = [
    ("H200", 4.8e12),
    ("H100 PCIe", 2.0e12),
    ("H100 NVL", 3.9e12),
    ("H100", 3.35e12),  # SXM5 (HBM3)
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),
    ("L40S", 0.864e12),
    ("A10", 0.6e12),
]
WORDS = (
    "o réu autor processo juiz sentença recurso prazo nome idade cidade valor ação parte autos "
    "contrato pagamento data multa acordo tribunal decisão pedido documento prova testemunha"
).split()


def bandwidth_for(name: str, override_tbs: float | None) -> float | None:
    if override_tbs:
        return override_tbs * 1e12
    for key, value in HBM_BANDWIDTH:
        if key.lower() in name.lower():
            return value
    return None


def build(hidden: int, layers: int, seed: int):
    """Tokenizer (ChatML, trained on a synthetic corpus) and a random bf16 Llama model on the GPU."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from afinar.train.demo_model import IM_END, train_tokenizer

    rng = random.Random(seed)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60))) for _ in range(3000)]
    tokenizer = train_tokenizer(corpus, vocab_size=4096)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 256),
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.eval()
    return model, tokenizer


def make_records(n: int, seed: int):
    from afinar.predict.generation import TestRecord

    rng = random.Random(seed + 1)
    records = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 400)))
        messages = [{"role": "user", "content": f"Extraia os campos em JSON.\n{words}"}]
        records.append(TestRecord(f"p{i:04d}", messages, "{}"))
    return records


def naive_loop(model, tokenizer, records, max_new_tokens: int) -> tuple[int, int, float]:
    """One ``generate`` per example, batch 1: (output tokens, decoding steps, seconds)."""
    import torch

    tokens = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for record in records:
            text = tokenizer.apply_chat_template(record.messages, add_generation_prompt=True, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to("cuda")
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            tokens += out.shape[1] - ids.shape[1]
    torch.cuda.synchronize()
    return tokens, tokens, time.perf_counter() - start


def predict_path(model, tokenizer, records, batch_size: int, max_new_tokens: int) -> tuple[int, int, float]:
    """Afinar's ``generate_predictions``: (output tokens, decoding steps, seconds)."""
    import torch

    from afinar.predict.generation import (
        GenerationSettings,
        encode_prompts,
        generate_predictions,
        length_sorted_batches,
        render_prompts,
    )

    settings = GenerationSettings(batch_size=batch_size, max_new_tokens=max_new_tokens, max_seq_length=4096)
    torch.cuda.synchronize()
    start = time.perf_counter()
    predictions = generate_predictions(model, tokenizer, records, settings, desc="afinar", progress=False)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    # count what the GPU did: a batch runs until its longest answer ends (the stop token is a step too)
    produced = [min(p.tokens_saida + (0 if p.limite_atingido else 1), max_new_tokens) for p in predictions]
    prompts = encode_prompts(
        tokenizer, render_prompts(tokenizer, records), [r.id for r in records], settings.max_prompt_tokens
    )
    steps = sum(max(produced[p.index] for p in batch) for batch in length_sorted_batches(prompts, batch_size))
    return sum(produced), steps, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256, help="prompts for the predict path")
    parser.add_argument(
        "--naive", type=int, default=16, help="first N of the same prompts for the naive loop"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument(
        "--hbm-tbs", type=float, default=None, help="HBM bandwidth in TB/s (default: by GPU name)"
    )
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import logging

    import torch

    if not torch.cuda.is_available():
        print("bench_predict_gpu: needs CUDA", file=sys.stderr)
        return 2
    logging.getLogger("afinar").setLevel(logging.WARNING)
    gpu = torch.cuda.get_device_name(0)
    bandwidth = bandwidth_for(gpu, args.hbm_tbs)
    model, tokenizer = build(args.hidden, args.layers, args.seed)
    params = sum(p.numel() for p in model.parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    records = make_records(args.prompts, args.seed)
    # warm-up: CUDA context, kernels, allocator
    predict_path(model, tokenizer, records[:2], 2, 8)
    naive_loop(model, tokenizer, records[:1], 8)

    results = {}
    for name, run in (
        (
            "naive loop (batch 1)",
            lambda: naive_loop(model, tokenizer, records[: args.naive], args.max_new_tokens),
        ),
        (
            f"afinar predict (batch {args.batch_size})",
            lambda: predict_path(model, tokenizer, records, args.batch_size, args.max_new_tokens),
        ),
    ):
        tokens, steps, seconds = run()
        row = {
            "tokens": tokens,
            "steps": steps,
            "seconds": round(seconds, 3),
            "tokens_per_s": tokens / seconds,
        }
        if bandwidth:
            row["bandwidth_fraction"] = steps / seconds * model_bytes / bandwidth
        results[name] = row
    naive, ours = results.values()
    speedup = ours["tokens_per_s"] / naive["tokens_per_s"]
    print(
        f"GPU: {gpu}; HBM bandwidth {bandwidth / 1e12:.2f} TB/s"
        if bandwidth
        else f"GPU: {gpu}; bandwidth unknown"
    )
    print(
        f"model: {params / 1e9:.2f}B parameters, {model_bytes / 1e9:.2f} GB bf16; {args.max_new_tokens} new tokens; "
        f"bandwidth limit {bandwidth / model_bytes:.0f} decoding steps/s"
        if bandwidth
        else ""
    )
    print(f"{'path':<28} {'prompts':>7} {'tokens':>8} {'seconds':>8} {'tokens/s':>9} {'BW limit':>9}")
    for name, row, n in ((*list(results.items())[0], args.naive), (*list(results.items())[1], args.prompts)):
        frac = f"{row['bandwidth_fraction']:.1%}" if "bandwidth_fraction" in row else "n/a"
        print(
            f"{name:<28} {n:>7} {row['tokens']:>8} {row['seconds']:>8.1f} {row['tokens_per_s']:>9.1f} {frac:>9}"
        )
    verdict = "meets" if speedup >= 10 else "BELOW"
    print(f"speedup: {speedup:.1f}x ({verdict} the 10x target)")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "gpu": gpu,
                    "params": params,
                    "model_bytes": model_bytes,
                    "hbm_bandwidth": bandwidth,
                    "args": vars(args),
                    "results": results,
                    "speedup": speedup,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
