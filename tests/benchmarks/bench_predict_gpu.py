"""Prediction throughput on a GPU, in one run: a naive loop, the old predict path and the new one.

    python3 tests/benchmarks/bench_predict_gpu.py [--prompts 1024] [--old 256] [--naive 8] [--lora] [--four-bit]

Builds a ~1B-parameter Llama-shaped model locally (random bf16 weights, hidden 2048, 16 layers, GQA 32/8
heads, MLP 8192; the tokenizer is a small BPE trained here, so the vocabulary is 4k instead of 128k)
and chat prompts of 30-400 words (~40-600 tokens). Nothing is downloaded. Paths:

- naive loop: one ``generate`` per prompt (batch 1), on the first ``--naive`` prompts;
- old path: ``generate_predictions(engine="generate", batch_size=64)`` — the predict rule before the static
  decoder (length-sorted, left-padded ``generate`` batches), on the first ``--old`` prompts;
- new path: ``generate_predictions()`` as the rule runs it now (``batch_size: auto``, the static KV cache and
  CUDA-graph decoder), on all ``--prompts`` prompts (its first ``--old`` are compared with the old path).

Reported per path: generated tokens/s (tokens up to and including the stop token), peak GPU memory
(``torch.cuda.max_memory_allocated``), and the share of the memory-bandwidth limit:

    limit seconds = (ceil(N / 256) * max_new_tokens * weight_bytes + sum_i sum_{t < T_i} (P_i + t) * kv_bytes) / BW

i.e. the time to read the weights once per decode step at batch 256 plus each live row's KV cache once per
step, for the same N prompts (P_i prompt tokens, T_i generated tokens), at the GPU's HBM bandwidth BW
(H200: 4.8 TB/s, vendor data sheet); share = limit seconds / measured seconds. Greedy agreement: how many
of the common prompts get the identical answer from the old and the new path (bf16: batch shapes change
rounding, so a near-tie can flip a token). ``--lora`` adds a random LoRA (all linear layers) and compares
merged with unmerged predictions; ``--four-bit`` compares the old 4-bit path (bitsandbytes NF4 base +
unmerged adapter + ``generate``) with the new one (de-quantised base, merged, static decoder).
``--unsloth`` also times Unsloth's inference mode (``FastLanguageModel.for_inference`` + its ``generate``)
on the old path's prompts, at the old path's batch and at 256.
"""

from __future__ import annotations

import argparse
import json
import math
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
LIMIT_BATCH = 256


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


def generated(p, max_new: int) -> int:
    """Tokens a prediction cost the GPU: the answer plus its stop token (when one came)."""
    return min(p.tokens_saida + (0 if p.limite_atingido else 1), max_new)


def naive_loop(model, tokenizer, records, max_new_tokens: int):
    """One ``generate`` per example, batch 1: (prompt lengths, generated tokens per prompt, seconds, answers)."""
    import torch

    from afinar.predict.generation import eos_token_ids

    stop = set(eos_token_ids(model, tokenizer))
    lengths, made, texts = [], [], []
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
            lengths.append(ids.shape[1])
            made.append(out.shape[1] - ids.shape[1])
            row = out[0, ids.shape[1] :].tolist()
            cut = next((i for i, t in enumerate(row) if t in stop), len(row))
            texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    torch.cuda.synchronize()
    return lengths, made, time.perf_counter() - start, texts


def predict(model, tokenizer, records, max_new: int, engine: str, batch_size: int | None):
    """``generate_predictions`` as the rule calls it: (predictions, seconds)."""
    import torch

    from afinar.predict.generation import GenerationSettings, generate_predictions

    settings = GenerationSettings(batch_size=batch_size, max_new_tokens=max_new, max_seq_length=4096)
    torch.cuda.synchronize()
    start = time.perf_counter()
    predictions = generate_predictions(
        model,
        tokenizer,
        records,
        settings,
        desc=getattr(engine, "name", engine),
        progress=False,
        engine=engine,
    )
    torch.cuda.synchronize()
    return predictions, time.perf_counter() - start


def limit_seconds(lengths, made, max_new: int, weight_bytes: int, kv_bytes: int, bandwidth: float) -> float:
    """Bandwidth-bound time of the same work at batch 256 (formula in the module docstring)."""
    steps = math.ceil(len(lengths) / LIMIT_BATCH) * max_new
    kv = sum(sum(p + t for t in range(n)) for p, n in zip(lengths, made, strict=True))
    return (steps * weight_bytes + kv * kv_bytes) / bandwidth


def measure(name, run, max_new, weight_bytes, kv_bytes, bandwidth, rows):
    """Run one path, record tokens/s, share of the limit and peak memory under ``rows[name]``."""
    import torch

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    lengths, made, seconds, extra = run()
    tokens = sum(made)
    row = {
        "prompts": len(lengths),
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
        **extra,
    }
    if bandwidth:
        row["bandwidth_share"] = (
            limit_seconds(lengths, made, max_new, weight_bytes, kv_bytes, bandwidth) / seconds
        )
    rows[name] = row
    print(
        f"{name:<34} {row['prompts']:>7} {tokens:>8} {seconds:>8.2f} {row['tokens_per_s']:>10,.0f} "
        f"{row.get('bandwidth_share', math.nan):>8.1%} {row['peak_gb']:>8.2f}",
        flush=True,
    )
    return row


def agreement(a, b) -> tuple[int, int]:
    """(identical answers, common prompts) between two prediction lists (matched by id)."""
    other = {p.id: p.gerado for p in b}
    common = [p for p in a if p.id in other]
    return sum(p.gerado == other[p.id] for p in common), len(common)


def prefix_share(a, b) -> float:
    """Mean share of the answers that is identical before their first difference (characters)."""
    import os

    other = {p.id: p.gerado for p in b}
    shares = [
        len(os.path.commonprefix([p.gerado, other[p.id]])) / max(len(p.gerado), 1) for p in a if p.id in other
    ]
    return sum(shares) / max(len(shares), 1)


def static_engine(model, tokenizer, max_new: int, **kw):
    """The new path's decoder, built here so that the benchmark can pick its attention or read its timings."""
    from afinar.predict.decoding import StaticDecoder
    from afinar.predict.generation import GenerationSettings, generation_config

    cfg = generation_config(model, tokenizer, GenerationSettings(max_new_tokens=max_new, max_seq_length=4096))
    return StaticDecoder(model, tokenizer.pad_token_id, cfg.eos_token_id or [], max_new, **kw)


def static_cache_generate(model, tokenizer, max_new: int):
    """transformers' own alternative: ``generate`` with ``cache_implementation="static"`` (no compile)."""
    from afinar.predict.generation import GenerationSettings, _GenerateEngine, generation_config

    cfg = generation_config(model, tokenizer, GenerationSettings(max_new_tokens=max_new, max_seq_length=4096))
    cfg.cache_implementation = "static"
    return _GenerateEngine(model, cfg, tokenizer.pad_token_id)


def random_lora(model, seed: int):
    """A PEFT LoRA (r 16, all linear layers) with random non-zero A and B, as a trained one would be."""
    import torch
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_((torch.randn(param.shape, generator=gen) * 0.02).to(param.dtype))
    return peft_model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1024, help="prompts for the new path")
    parser.add_argument("--old", type=int, default=256, help="first N prompts for the old path")
    parser.add_argument("--naive", type=int, default=8, help="first N prompts for the naive loop")
    parser.add_argument("--old-batch", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument(
        "--repeat", type=int, default=2, help="new-path runs (the spread between them is printed)"
    )
    parser.add_argument("--lora", action="store_true", help="also check merged vs unmerged LoRA predictions")
    parser.add_argument(
        "--variants", action="store_true", help="also time the alternatives the new path beat"
    )
    parser.add_argument(
        "--fp32", type=int, default=64, help="prompts for the float32 agreement check (0 = off)"
    )
    parser.add_argument("--four-bit", action="store_true", help="also compare the 4-bit adapter paths")
    parser.add_argument(
        "--hbm-tbs", type=float, default=None, help="HBM bandwidth in TB/s (default: by GPU name)"
    )
    parser.add_argument(
        "--unsloth",
        action="store_true",
        help="also time Unsloth's inference mode (FastLanguageModel.for_inference + generate) on the old prompts",
    )
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.unsloth:
        import unsloth  # noqa: F401  (first, so that it patches transformers before the model is built)

    import logging

    import torch

    if not torch.cuda.is_available():
        print("bench_predict_gpu: needs CUDA", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("afinar").setLevel(logging.INFO)
    from afinar.predict.batching import MemoryModel

    gpu = torch.cuda.get_device_name(0)
    bandwidth = bandwidth_for(gpu, args.hbm_tbs)
    model, tokenizer = build(args.hidden, args.layers, args.seed)
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_bytes = MemoryModel.of(model).kv_per_token
    records = make_records(args.prompts, args.seed)
    max_new = args.max_new_tokens
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {torch.__version__}")
    print(
        f"GPU: {gpu}; HBM bandwidth {bandwidth / 1e12:.2f} TB/s"
        if bandwidth
        else f"GPU: {gpu}; bandwidth unknown"
    )
    print(
        f"model: {params / 1e9:.2f}B parameters, {weight_bytes / 1e9:.2f} GB bf16, KV {kv_bytes / 1024:.0f} KiB/token; "
        f"{max_new} new tokens; limit = weights once per step at batch {LIMIT_BATCH} + live KV, at BW"
    )
    # warm-up: CUDA context, kernels, allocator (both engines)
    predict(model, tokenizer, records[:2], 8, "generate", 2)
    predict(model, tokenizer, records[:2], 8, "auto", None)

    rows: dict = {}
    print(
        f"{'path':<34} {'prompts':>7} {'tokens':>8} {'seconds':>8} {'tokens/s':>10} {'BW lim':>8} {'peak GB':>8}"
    )

    def run_naive():
        lengths, made, seconds, texts = naive_loop(model, tokenizer, records[: args.naive], max_new)
        outputs["naive"] = texts
        return lengths, made, seconds, {}

    def run_path(engine, batch, subset):
        def run():
            preds, seconds = predict(model, tokenizer, subset, max_new, engine, batch)
            outputs[engine] = preds
            return [p.tokens_prompt for p in preds], [generated(p, max_new) for p in preds], seconds, {}

        return run

    outputs: dict = {}
    measure("naive loop (batch 1)", run_naive, max_new, weight_bytes, kv_bytes, bandwidth, rows)
    old = measure(
        f"old path (generate, batch {args.old_batch})",
        run_path("generate", args.old_batch, records[: args.old]),
        max_new,
        weight_bytes,
        kv_bytes,
        bandwidth,
        rows,
    )
    new_rates = []
    engines = []
    for i in range(args.repeat):
        engine = static_engine(model, tokenizer, max_new, measure=True)
        engines.append(engine)
        new = measure(
            f"new path (static+graphs, auto) #{i + 1}",
            run_path(engine, None, records),
            max_new,
            weight_bytes,
            kv_bytes,
            bandwidth,
            rows,
        )
        new_rates.append(new["tokens_per_s"])
    timing = engines[-1].timings
    print(
        "new path, last run: prefill {prefill_s:.2f} s, graph captures {capture_s:.2f} s, decode {decode_s:.2f} s".format(
            **timing
        )
        + f" ({engines[-1].captures} captures)"
    )
    outputs["auto"] = outputs.pop(engines[-1])
    for engine in engines[:-1]:
        outputs.pop(engine, None)
    same, common = agreement(outputs["generate"], outputs["auto"])
    print(f"new path spread over {len(new_rates)} runs: {min(new_rates):,.0f}-{max(new_rates):,.0f} tokens/s")
    print(
        f"speed-up new/old: {max(new_rates) / old['tokens_per_s']:.1f}x (target >= 14x, >= 15,000 tokens/s)"
    )
    print(
        f"greedy agreement old vs new (bf16): {same}/{common} identical answers ({same / max(common, 1):.1%}); "
        f"identical share before the first difference {prefix_share(outputs['generate'], outputs['auto']):.0%}"
    )
    naive_ids = {r.id for r in records[: args.naive]}
    for name in ("generate", "auto"):
        subset = [p for p in outputs[name] if p.id in naive_ids]
        hits = sum(p.gerado == t for p, t in zip(subset, outputs["naive"], strict=True))
        print(f"  control: {name} vs the naive batch-1 loop on its {len(subset)} prompts: {hits} identical")
    summary = {"agreement": [same, common], "spread": [min(new_rates), max(new_rates)], "timings": timing}

    if args.variants:
        sdpa = static_engine(model, tokenizer, max_new, attention="sdpa")
        measure(
            "variant: static, transformers' SDPA",
            run_path(sdpa, None, records),
            max_new,
            weight_bytes,
            kv_bytes,
            bandwidth,
            rows,
        )
        outputs.pop(sdpa, None)
        measure(
            "variant: generate + StaticCache, b256",
            run_path(static_cache_generate(model, tokenizer, max_new), 256, records[: args.old]),
            max_new,
            weight_bytes,
            kv_bytes,
            bandwidth,
            rows,
        )

    if args.unsloth:
        summary["unsloth"] = unsloth_inference(args, model, tokenizer, records[: args.old], max_new, outputs)
        if "tokens_per_s" in summary["unsloth"]:
            print(
                f"Unsloth inference mode vs the new path: {summary['unsloth']['tokens_per_s'] / max(new_rates):.2f}x"
            )

    if args.fp32:
        import copy

        model32 = copy.deepcopy(model).float()
        subset = records[: args.fp32]
        old32, _ = predict(model32, tokenizer, subset, max_new, "generate", args.old_batch)
        new32, _ = predict(model32, tokenizer, subset, max_new, "auto", None)
        same32, common32 = agreement(old32, new32)
        print(f"greedy agreement old vs new in float32 (same model): {same32}/{common32} identical answers")
        summary["agreement_fp32"] = [same32, common32]
        del model32
        torch.cuda.empty_cache()

    if args.lora or args.four_bit:
        lora_model = random_lora(model, args.seed)
        subset = records[: min(args.old, 128)]
        if args.fp32:  # before the bf16 merge below, which changes lora_model in place
            import copy

            lora32 = copy.deepcopy(lora_model).float()
            small = subset[: args.fp32]
            un32, _ = predict(lora32, tokenizer, small, max_new, "generate", args.old_batch)
            me32, _ = predict(lora32.merge_and_unload(), tokenizer, small, max_new, "auto", None)
            s32, c32 = agreement(un32, me32)
            print(f"LoRA in float32: merged vs unmerged identical answers {s32}/{c32}")
            summary["lora_fp32_agreement"] = [s32, c32]
            del lora32
            torch.cuda.empty_cache()
        unmerged, t_unmerged = predict(lora_model, tokenizer, subset, max_new, "generate", args.old_batch)
        merged_model = lora_model.merge_and_unload()
        merged, t_merged = predict(merged_model, tokenizer, subset, max_new, "auto", None)
        same_l, common_l = agreement(unmerged, merged)
        tok_u = sum(generated(p, max_new) for p in unmerged)
        tok_m = sum(generated(p, max_new) for p in merged)
        print(
            f"LoRA: unmerged (generate, batch {args.old_batch}) {tok_u / t_unmerged:,.0f} tokens/s; merged (new path) "
            f"{tok_m / t_merged:,.0f} tokens/s; identical answers {same_l}/{common_l} (bf16)"
        )
        summary["lora"] = {
            "unmerged_tokens_per_s": tok_u / t_unmerged,
            "merged_tokens_per_s": tok_m / t_merged,
            "agreement": [same_l, common_l],
        }
        model = merged_model
    if args.four_bit:
        summary["four_bit"] = four_bit(args, model, tokenizer, records[: min(args.old, 128)], max_new)

    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "gpu": gpu,
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "params": params,
                    "weight_bytes": weight_bytes,
                    "hbm_bandwidth": bandwidth,
                    "args": vars(args),
                    "results": rows,
                    **summary,
                },
                indent=2,
            )
        )
    return 0


def unsloth_inference(args, model, tokenizer, records, max_new: int, outputs: dict) -> dict:
    """Issue 17's last lever: the same weights loaded by Unsloth, ``for_inference``, its ``generate``.

    Timed at the old path's batch and at 256 (Unsloth's own decoding is batch-size bound like ``generate``).
    """
    import tempfile

    import torch

    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            from unsloth import FastLanguageModel

            t0 = time.perf_counter()
            fast, _ = FastLanguageModel.from_pretrained(
                tmp, max_seq_length=4096, dtype=torch.bfloat16, load_in_4bit=False
            )
            FastLanguageModel.for_inference(fast)
            result["load_s"] = round(time.perf_counter() - t0, 2)
        except Exception as exc:  # a benchmark reports what failed and goes on
            print(f"Unsloth inference mode: could not load ({type(exc).__name__}: {exc})")
            return {"failed": f"{type(exc).__name__}: {exc}"}
    best = 0.0
    for batch in (args.old_batch, 256):
        try:
            preds, seconds = predict(fast, tokenizer, records, max_new, "generate", batch)
        except Exception as exc:
            print(f"Unsloth inference mode, batch {batch}: failed ({type(exc).__name__}: {exc})")
            result[f"batch_{batch}"] = {"failed": f"{type(exc).__name__}: {exc}"}
            continue
        tokens = sum(generated(p, max_new) for p in preds)
        same, common = agreement(outputs["generate"], preds)
        rate = tokens / seconds
        best = max(best, rate)
        result[f"batch_{batch}"] = {"tokens_per_s": rate, "seconds": seconds, "agreement_old": [same, common]}
        print(
            f"Unsloth inference mode (for_inference + generate, batch {batch}), {len(records)} prompts: "
            f"{rate:,.0f} tokens/s; identical to the old path {same}/{common}"
        )
    if best:
        result["tokens_per_s"] = best
    del fast
    torch.cuda.empty_cache()
    return result


def four_bit(args, model, tokenizer, records, max_new: int) -> dict:
    """Old 4-bit path (NF4 base + unmerged adapter + generate) vs the new load_for_inference path."""
    import tempfile

    import torch

    from afinar.predict.generation import load_for_inference

    try:
        import bitsandbytes  # noqa: F401
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        print(f"4-bit: skipped ({exc})")
        return {"skipped": str(exc)}
    with tempfile.TemporaryDirectory() as tmp:
        base_dir, adapter_dir = Path(tmp) / "base", Path(tmp) / "adapter"
        model.save_pretrained(base_dir)
        tokenizer.save_pretrained(base_dir)
        del model
        torch.cuda.empty_cache()
        # the adapter: a random LoRA on the saved base (in bf16; its weights do not depend on the bits)
        loaded = load_for_inference(str(base_dir), None, nbits=0)
        cfg = LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        )
        peft_model = get_peft_model(loaded.model, cfg)
        gen = torch.Generator(device="cpu").manual_seed(args.seed)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.copy_((torch.randn(param.shape, generator=gen) * 0.02).to(param.dtype))
        peft_model.save_pretrained(adapter_dir)
        del peft_model, loaded
        torch.cuda.empty_cache()
        result = {}
        for name, engine, batch in (
            ("old", "generate", args.old_batch),
            ("new", "auto", None),
        ):
            t0 = time.perf_counter()
            if name == "old":
                from peft import PeftModel

                from afinar.train.models import load_causal_lm

                base = load_causal_lm(str(base_dir), torch.bfloat16, 4)
                m = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False).eval()
            else:
                m = load_for_inference(str(base_dir), adapter_dir, nbits=4).model
            load_s = time.perf_counter() - t0
            preds, seconds = predict(m, tokenizer, records, max_new, engine, batch)
            tokens = sum(generated(p, max_new) for p in preds)
            result[name] = {"load_s": round(load_s, 2), "tokens_per_s": tokens / seconds, "seconds": seconds}
            result[name + "_preds"] = preds
            del m
            torch.cuda.empty_cache()
        same, common = agreement(result.pop("old_preds"), result.pop("new_preds"))
        result["agreement"] = [same, common]
        ratio = result["new"]["tokens_per_s"] / result["old"]["tokens_per_s"]
        print(
            f"4-bit adapter, {len(records)} prompts: old (NF4 + unmerged + generate) {result['old']['tokens_per_s']:,.0f} "
            f"tokens/s; new (de-quantised, merged, static) {result['new']['tokens_per_s']:,.0f} tokens/s = {ratio:.1f}x "
            f"(target >= 5x); identical answers {same}/{common} (different weights: NF4 vs bf16)"
        )
        return result


if __name__ == "__main__":
    raise SystemExit(main())
