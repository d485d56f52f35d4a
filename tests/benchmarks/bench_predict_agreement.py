"""Greedy agreement of the old and the new predict path on a real model, on a GPU or a CPU.

    python3 tests/benchmarks/bench_predict_agreement.py --model results/modelos/smollm2-135m-instruct \
        [--adapter results/demo-real/adapter] [--split results/data/teste.parquet [--split ...]] [--n 64]
        [--dtype bf16]

``bench_predict_gpu.py`` measures speed on a random-weight model, whose next-token scores are nearly flat:
there, a changed batch shape flips near-ties in bf16 and the old and new paths agree on few answers. This
benchmark asks the question the ≥ 99 % target is about on a *real* model (e.g. SmolLM2-135M-Instruct, which
``make demo-real`` converts to ``results/modelos/smollm2-135m-instruct``, optionally with its trained adapter,
merged as the predict rule merges it): the same prompts through

- the old path: ``generate_predictions(engine="generate", batch_size=--old-batch)`` (length-sorted,
  left-padded ``generate`` batches, the predict rule before the static decoder), and
- the new path: ``generate_predictions(engine="static")`` (static KV cache, batches sized by ``auto``; on a
  GPU its decode step is a captured CUDA graph, on a CPU the same step runs eagerly),

and prints how many answers are identical, the mean share of an answer identical before its first
difference, and each path's time. ``--control-batch N`` also runs the old path at batch N: how many answers
a change of batch shape alone flips, with no change of decoder. Prompts come from a test split (``--split``, parquet or JSONL with
``messages``) or, without one, are synthetic extraction prompts. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_predict_gpu import agreement, generated, make_records, prefix_share  # noqa: E402


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def run_path(model, tokenizer, records, max_new: int, engine: str, batch: int | None, device: str):
    """(predictions, seconds, generated tokens) of one path over the records."""
    from afinar.predict.generation import GenerationSettings, generate_predictions

    settings = GenerationSettings(batch_size=batch, max_new_tokens=max_new, max_seq_length=4096)
    _sync(device)
    start = time.perf_counter()
    preds = generate_predictions(
        model, tokenizer, records, settings, desc=engine, progress=False, engine=engine
    )
    _sync(device)
    return preds, time.perf_counter() - start, sum(generated(p, max_new) for p in preds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a local model folder (Hugging Face format)")
    parser.add_argument(
        "--adapter", default=None, help="a trained adapter folder, merged as the predict rule does"
    )
    parser.add_argument(
        "--split",
        action="append",
        default=None,
        help="a split (parquet with id + messages); repeat for several (e.g. the test, validation and "
        "train splits: a sample large enough to read a 99 %% line); default synthetic prompts",
    )
    parser.add_argument("--n", type=int, default=64, help="prompts per split (0 = all)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--old-batch", type=int, default=64)
    parser.add_argument(
        "--control-batch",
        type=int,
        default=0,
        help="also run the old path at this batch size: how much a batch shape alone changes the answers",
    )
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    import logging

    import torch

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from afinar.predict.generation import load_for_inference, read_test_split
    from afinar.runtime import torch_dtype

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    loaded = load_for_inference(args.model, args.adapter, precisao=args.dtype)
    model = loaded.model.to(device=device, dtype=torch_dtype(args.dtype)).eval()
    tokenizer = loaded.tokenizer
    if args.split:
        records = [r for split in args.split for r in read_test_split(split, args.n)]
    else:
        records = make_records(args.n or 64, 0)
    where = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {torch.__version__}; {where}")
    print(
        f"model: {args.model}{' + ' + args.adapter + ' (merged)' if args.adapter else ''}; {args.dtype}; "
        f"{len(records)} prompts from {', '.join(args.split or ['synthetic records'])}; "
        f"{args.max_new_tokens} new tokens"
    )
    old, t_old, tok_old = run_path(
        model, tokenizer, records, args.max_new_tokens, "generate", args.old_batch, device
    )
    new, t_new, tok_new = run_path(model, tokenizer, records, args.max_new_tokens, "static", None, device)
    same, common = agreement(old, new)
    share = prefix_share(old, new)
    print(f"old path (generate, batch {args.old_batch}): {t_old:.1f} s, {tok_old / t_old:,.0f} tokens/s")
    print(f"new path (static decoder, auto batches): {t_new:.1f} s, {tok_new / t_new:,.0f} tokens/s")
    print(
        f"greedy agreement old vs new ({args.dtype}): {same}/{common} identical answers "
        f"({same / max(common, 1):.1%}); identical share before the first difference {share:.0%}"
    )
    control = None
    if args.control_batch:
        ctl, _, _ = run_path(
            model, tokenizer, records, args.max_new_tokens, "generate", args.control_batch, device
        )
        control = agreement(old, ctl)
        print(
            f"control: old path at batch {args.old_batch} vs batch {args.control_batch}: "
            f"{control[0]}/{control[1]} identical answers"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "device": where,
                    "args": vars(args),
                    "agreement": [same, common],
                    "prefix_share": share,
                    "control": control,
                    "old": {"seconds": t_old, "tokens": tok_old},
                    "new": {"seconds": t_new, "tokens": tok_new},
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
