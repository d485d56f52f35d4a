"""Training throughput on one GPU: Afinar's train path vs a plain transformers + PEFT + TRL script.

Issue 6's performance target. Same GPU, same random-initialised ~1.1B Llama-shaped model built here,
same 1,600 chats of 54-665 tokens (mean ≈ 355), same LoRA settings. The baseline is written the way a
user would: padded batches in random order, gradient checkpointing on, TRL's SFTTrainer on the messages.
Each variant runs in its own process (Unsloth patches transformers/TRL on import, which must not leak into
the baseline), under one overall time budget: variants that no longer fit are reported as skipped.

Measured the same way for every variant (``Throughput`` below): a forward pre-hook on the model counts the
real (non-padding) tokens of every micro-batch it is given (attention mask, else packed sequence lengths,
else every position of a padding-free row), and ``on_step_end`` takes a timestamp after
``torch.cuda.synchronize()``. Tokens/s = tokens of the steps after ``--warmup`` / their wall time. Also:
peak GPU memory (max reserved, GB) and MFU = 6 x parameters x tokens/s / the GPU's dense bf16 peak
(parameters counted from the config, so 4-bit models are not undercounted).

    export PYTHONPATH=/tmp/site:$PWD/scripts HF_HUB_OFFLINE=1
    python tests/benchmarks/bench_train_gpu.py --out $OUT/bench.json      # default variants, < 9 min on H100
    python tests/benchmarks/bench_train_gpu.py --variants baseline-bf16,ours-bf16 --steps 40
    python tests/benchmarks/bench_train_gpu.py --variants ours-bf16 --profile ours-bf16   # where a step goes
    .venv/bin/python tests/benchmarks/bench_train_gpu.py --cpu-smoke       # plumbing check: tiny model, CPU

Our variants (``OURS``) differ only in the ``treinamento`` keys they set; ``ours-4bit`` and ``ours-bf16*``
are compared with the baseline of the same precision, against the targets of issue 6 (bf16: >= 2.5x tokens/s
and <= 0.8x peak memory; 4-bit: <= 0.6x peak memory).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}
WORDS = (
    "processo autor réu contrato valor cidade data sentença recurso pedido documento cláusula pagamento "
    "prazo multa juiz tribunal decisão parte prova laudo exame paciente médico hospital diagnóstico "
    "tratamento receita alta consulta"
).split()
TARGETS = {"bf16": {"tokens_per_s_x": 2.5, "peak_memory_x": 0.8}, "4bit": {"peak_memory_x": 0.6}}

# Our train path: the treinamento keys each variant sets on top of ``ours_config`` (the train rule's
# defaults, batch 8 unless said); "env" is set for the variant's process only.
OURS: dict[str, dict] = {
    "ours-bf16": {"nbits": 0},  # the defaults: length-grouped padded batches rounded to 64 tokens
    "ours-bf16-bs16": {"nbits": 0, "batch_size": 16},
    "ours-4bit": {"nbits": 4},
    "ours-bf16-padfree": {"nbits": 0, "padding_free": True},
    "ours-bf16-packing": {"nbits": 0, "packing": True},
    "ours-bf16-random": {"nbits": 0, "agrupar_por_tamanho": False},
    "ours-bf16-pad1": {"nbits": 0, "pad_to_multiple_of": 1},  # no rounding: a new shape every step
    "ours-bf16-blockcompile": {"nbits": 0, "env": {"UNSLOTH_BLOCK_COMPILE": "1"}},  # Unsloth's own default
}
BASELINES = ("baseline-bf16", "baseline-4bit")
# Order matters: under the time budget the last ones are the first to be skipped.
DEFAULT_VARIANTS = [
    "baseline-bf16",
    "ours-bf16",
    "baseline-4bit",
    "ours-4bit",
    "ours-bf16-bs16",
    "ours-bf16-pad1",
    "ours-bf16-blockcompile",
]
PROFILED_STEPS = 3  # --profile: torch.profiler over this many steps after the measured ones
SMOKE_VARIANTS = ["baseline-bf16", "ours-bf16", "ours-bf16-packing"]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ data + model


def chat_length(tokenizer, msgs: list[dict]) -> int:
    """Tokens of one rendered chat (transformers 5 returns a BatchEncoding unless told otherwise)."""
    ids = tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=False)
    return len(ids)


def make_chats(tokenizer, n: int, lo: int, hi: int, seed: int) -> tuple[list[list[dict]], list[int]]:
    """``n`` chats whose rendered lengths spread from ``lo`` to ``hi`` tokens (triangular, mean ≈ middle).

    The words-per-token rate is measured on this tokenizer, then each chat's real length is checked."""
    rng = random.Random(seed)
    probe = " ".join(WORDS * 4)
    per_word = len(tokenizer(probe, add_special_tokens=False)["input_ids"]) / (len(WORDS) * 4)
    scaffold = chat_length(tokenizer, [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}])
    chats, lengths = [], []
    for _ in range(n):
        target = int(rng.triangular(lo, hi, (lo + hi) / 2))
        words = max(4, round((target - scaffold) / per_word))
        n_answer = max(2, words // 4)
        user = " ".join(rng.choice(WORDS) for _ in range(words - n_answer))
        answer = " ".join(rng.choice(WORDS) for _ in range(n_answer))
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        chats.append(msgs)
        lengths.append(chat_length(tokenizer, msgs))
    return chats, lengths


def count_parameters(model_dir: Path) -> int:
    """Parameters of the architecture (meta device: no memory, and not fooled by packed 4-bit weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters())


def prepare(workdir: Path, n: int, smoke: bool) -> dict:
    """Build the model and the data once; every variant process reuses them."""
    import pandas as pd
    from transformers import AutoTokenizer

    from afinar.train.demo_model import LlamaSpec, build_llama_model

    spec = LlamaSpec()
    name = "llama-1b"
    if smoke:  # a few hundred thousand parameters: CPU steps in well under a second
        spec = LlamaSpec(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
        )
        name = "llama-tiny"
    model_dir = workdir / name
    if not (model_dir / "config.json").is_file():
        log(f"building the random Llama-shaped model {name}")
        corpus = [" ".join(WORDS)] * 50 + ["user assistant system"] * 10
        build_llama_model(model_dir, corpus, spec)
    tok = AutoTokenizer.from_pretrained(model_dir)
    chats, lengths = make_chats(tok, n, 54, 665, seed=0)
    data = workdir / f"data-{name}"
    data.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": [str(i) for i in range(n)], "messages": chats}).to_parquet(data / "treino.parquet")
    pd.DataFrame({"id": ["v0"], "messages": chats[:1]}).to_parquet(data / "validacao.parquet")
    stats = {
        "n": n,
        "min": min(lengths),
        "max": max(lengths),
        "mean": round(sum(lengths) / n, 1),
        "total_tokens": sum(lengths),
    }
    log(f"data (tokens per chat): {stats}")
    return {
        "model": str(model_dir),
        "data": str(data),
        "lengths": stats,
        "params": count_parameters(model_dir),
    }


# ------------------------------------------------------------------------------------------ measurement


def real_tokens(inputs: dict) -> int:
    """Non-padding tokens of one micro-batch as the model receives it.

    Padded batches carry an attention mask; Unsloth's packed / padding-free batches carry the sequence
    lengths instead; a plain padding-free row (TRL) has no padding at all."""
    mask = inputs.get("attention_mask")
    if mask is not None and getattr(mask, "dim", lambda: 0)() == 2:
        return int(mask.sum())
    lengths = inputs.get("packed_seq_lengths")
    if lengths is None:
        lengths = inputs.get("seq_lengths")
    if lengths is not None and hasattr(lengths, "sum"):
        return int(lengths.sum())
    cu = inputs.get("cu_seq_lens_q")
    if cu is not None:
        return int(cu[-1])
    ids = inputs.get("input_ids")
    return int(ids.numel()) if ids is not None else 0


def throughput_callback(warmup: int, last: int | None = None):
    """Tokens and wall time per optimizer step, identical for our path and the baseline.

    Why not TRL's logged ``num_tokens``: Unsloth replaces ``SFTTrainer.compute_loss`` (which is where TRL
    counts them), so that metric never appears on our path. Two independent counters instead: a forward
    pre-hook on the model (every micro-batch the model is given; gradient checkpointing recomputes layers,
    never the top-level forward, so nothing is counted twice) and a wrapper around the training
    dataloader's collate function (the first ``step x accumulation`` batches belong to steps 1..step, even
    though the loader prefetches). The hook's count is used; the collate count cross-checks it and stands
    in if the hook saw nothing."""
    import torch
    from transformers import TrainerCallback

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    class Throughput(TrainerCallback):
        def __init__(self):
            self.tokens = 0
            self.forwards = 0
            self.batch_tokens: list[int] = []
            self.accum = 1
            self.points: list[tuple[int, float, int]] = []  # (global_step, time, hook tokens so far)
            self.handle = None
            self.hooked = ""

        def _count(self, module, args, kwargs):
            if not module.training:  # evaluation forwards are not training throughput
                return
            inputs = dict(kwargs)
            if args and "input_ids" not in inputs:
                inputs["input_ids"] = args[0]
            self.tokens += real_tokens(inputs)
            self.forwards += 1

        def _wrap_collate(self, loader) -> None:
            loader = getattr(loader, "base_dataloader", loader)  # accelerate's DataLoaderShard
            collate = getattr(loader, "collate_fn", None)
            if collate is None or getattr(collate, "_bench_counting", False):
                return

            def counting(examples):
                batch = collate(examples)
                self.batch_tokens.append(real_tokens(batch))
                return batch

            counting._bench_counting = True
            loader.collate_fn = counting

        def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
            self.accum = max(1, int(args.gradient_accumulation_steps))
            if model is not None and self.handle is None:
                self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)
                self.hooked = type(model).__name__
            if train_dataloader is not None:
                self._wrap_collate(train_dataloader)
            sync()
            self.points.append((state.global_step, time.perf_counter(), self.tokens))

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.points.append((state.global_step, time.perf_counter(), self.tokens))

        def on_train_end(self, args, state, control, **kwargs):
            if self.handle is not None:
                self.handle.remove()
                self.handle = None

        def _collated_through(self, step: int) -> int | None:
            n = step * self.accum
            return sum(self.batch_tokens[:n]) if len(self.batch_tokens) >= n else None

        def result(self) -> dict:
            pts = [p for p in self.points if p[0] >= warmup and (last is None or p[0] <= last)]
            diag = {
                "steps_seen": max((p[0] for p in self.points), default=0),
                "forwards": self.forwards,
                "batches_collated": len(self.batch_tokens),
            }
            if len(pts) < 2:
                return {"error": f"too few steps after warm-up {warmup}: {diag} (hook on {self.hooked!r})"}
            (s0, t0, n0), (s1, t1, n1) = pts[0], pts[-1]
            c0, c1 = self._collated_through(s0), self._collated_through(s1)
            collated = c1 - c0 if c0 is not None and c1 is not None else None
            tokens, counted_by = n1 - n0, "forward hook"
            if tokens <= 0 and collated:
                tokens, counted_by = collated, "collate"
            if tokens <= 0:
                return {"error": f"no tokens counted after warm-up: {diag} (hook on {self.hooked!r})"}
            step_s = sorted(b[1] - a[1] for a, b in zip(pts, pts[1:], strict=False))
            return {
                "steps_measured": s1 - s0,
                "seconds": round(t1 - t0, 2),
                "real_tokens": tokens,
                "real_tokens_collated": collated,
                "counted_by": counted_by,
                "tokens_per_s": round(tokens / (t1 - t0), 1),
                "tokens_per_step": round(tokens / max(s1 - s0, 1), 1),
                "step_s_median": round(step_s[len(step_s) // 2], 3),
                "step_s_max": round(step_s[-1], 3),
                **diag,
            }

    return Throughput()


def step_profiler(start: int, n: int):
    """torch.profiler over ``n`` optimizer steps from ``start``: where a step's time goes.

    Reports the wall time per step, the GPU kernel time per step (the sum of every kernel's own time, so
    wall minus kernels is GPU idle time: launch overhead, host work, synchronisation), the number of kernel
    launches per step, and the top operators by GPU and by CPU time."""
    import torch
    from torch.autograd import DeviceType
    from transformers import TrainerCallback

    class StepProfiler(TrainerCallback):
        def __init__(self):
            self.prof = None
            self.t0 = 0.0
            self.summary: dict = {}

        def on_step_begin(self, args, state, control, **kwargs):
            if self.prof is None and not self.summary and state.global_step == start:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                    torch.cuda.synchronize()
                self.prof = torch.profiler.profile(activities=activities)
                self.prof.__enter__()
                self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self.prof is None or state.global_step < start + n:
                return
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall = time.perf_counter() - self.t0
            self.prof.__exit__(None, None, None)
            kernels = [e for e in self.prof.events() if e.device_type == DeviceType.CUDA]
            averages = self.prof.key_averages()
            kernel_us = sum(e.self_device_time_total for e in kernels)
            self.summary = {
                "steps": n,
                "wall_ms_per_step": round(1000 * wall / n, 1),
                "gpu_kernel_ms_per_step": round(kernel_us / 1000 / n, 1),
                "gpu_busy_%": round(100 * kernel_us / 1e6 / wall, 1),
                "kernels_per_step": round(len(kernels) / n),
                "top_gpu": averages.table(
                    sort_by="self_device_time_total", row_limit=25, max_name_column_width=70
                ),
                "top_cpu": averages.table(
                    sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70
                ),
            }
            self.prof = None

    return StepProfiler()


def device_info(smoke: bool) -> dict:
    import torch

    if smoke or not torch.cuda.is_available():
        return {"gpu": "cpu", "peak_bf16_tflops": None}
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    return {"gpu": name, "peak_bf16_tflops": peak}


# ------------------------------------------------------------------------------------------ the two paths


def ours_config(prep: dict, settings: dict, steps: int, batch: int, smoke: bool) -> dict:
    """The experiment our train rule would get, with the variant's ``treinamento`` keys on top."""
    tr = {
        "backend": "transformers" if smoke else "unsloth",
        "epochs": 1,
        "batch_size": batch,
        "grad_batch_size": 1,
        "max_seq_length": 1024,
        "learning_rate": 2e-4,
        "warmup_steps": 5,
        "eval_steps": 0,
        "save_checkpoints": False,
        "resume_from_checkpoint": False,
        "nbits": 0,
        "seed": 3407,
        "train_on_responses_only": True,
        "paciencia": None,
        "max_grad_norm": 1.0,
        "precisao": "fp32" if smoke else "bf16",
        "report_to": [],
        "packing": False,
        "save_total_limit": 1,
        "limpar_checkpoints": True,
        "continuar_de": "",
        "weight_decay": 0.0,
        "optim": "adamw_torch" if smoke else "adamw_8bit",
        "lr_scheduler_type": "linear",
        "gradient_checkpointing": True,
        "max_steps": steps,
        "filtro_tokens": {},
        "agrupar_por_tamanho": True,
        "padding_free": None,
        "pad_to_multiple_of": None,
        **settings,
    }
    lora = {
        "r": 16,
        "alpha": 32,
        "dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    }
    return {"modelo": {"base": prep["model"], "saida": ""}, "treinamento": tr, "lora": lora}


def run_ours(
    prep: dict, variant: str, steps: int, batch: int, warmup: int, smoke: bool, profile: bool = False
) -> dict:
    from afinar.train.training import TrainPaths, import_unsloth, train

    if not smoke:
        import_unsloth()  # before transformers/trl (patched on import), with the train rule's settings

    settings = dict(OURS[variant])
    settings.pop("env", None)  # applied to the process by run_variant
    batch = int(settings.pop("batch_size", batch))
    work = Path(prep["data"]).parent / f"run-{variant}"
    paths = TrainPaths.for_experiment(work, "bench")
    paths.train.parent.mkdir(parents=True, exist_ok=True)
    for name in ("treino", "validacao"):
        target = paths.train.parent / f"{name}.parquet"
        if target.is_symlink() or target.exists():
            target.unlink()
        os.symlink(Path(prep["data"]) / f"{name}.parquet", target)
    # profiled steps come after the measured ones, so that the profiler's overhead is not timed
    timing = throughput_callback(warmup, last=steps)
    callbacks = [timing]
    if profile:
        callbacks.append(step_profiler(steps, PROFILED_STEPS))
    exp = ours_config(prep, settings, steps + (PROFILED_STEPS if profile else 0), batch, smoke)
    summary = train(exp, paths, extra_callbacks=callbacks, threads=2 if smoke else None)
    return {
        **timing.result(),
        **({"profile": callbacks[1].summary} if profile else {}),
        "batch": batch,
        "settings": {
            k: exp["treinamento"][k]
            for k in ("agrupar_por_tamanho", "packing", "padding_free", "pad_to_multiple_of")
        },
        "masked": summary["fracao_mascarada"],
        "global_step": summary.get("global_step"),
    }


def run_baseline(
    prep: dict, variant: str, steps: int, batch: int, warmup: int, smoke: bool, profile: bool = False
) -> dict:
    """The plain script a user would write (kept deliberately ordinary)."""
    import pandas as pd
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    if smoke:
        torch.set_num_threads(2)
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
        prep["model"],
        dtype=torch.float32 if smoke else torch.bfloat16,
        quantization_config=quant,
        device_map=None if smoke else {"": 0},
    )
    if quant is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
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
        max_steps=steps + (PROFILED_STEPS if profile else 0),
        learning_rate=2e-4,
        warmup_steps=5,
        logging_steps=1,
        bf16=not smoke,
        gradient_checkpointing=True,
        max_length=1024,
        assistant_only_loss=True,
        optim="adamw_torch" if smoke else "adamw_8bit",
        save_strategy="no",
        report_to="none",
        seed=3407,
        use_cpu=smoke,
        disable_tqdm=True,
    )
    timing = throughput_callback(warmup, last=steps)
    callbacks = [timing, step_profiler(steps, PROFILED_STEPS)] if profile else [timing]
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=callbacks)
    trainer.train()
    return {**timing.result(), **({"profile": callbacks[1].summary} if profile else {}), "batch": batch}


# ------------------------------------------------------------------------------------------ processes


def child(args) -> None:
    import torch

    prep = json.loads(Path(args.prep).read_text())
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    runner = run_ours if args.child in OURS else run_baseline
    result = runner(prep, args.child, args.steps, args.batch, args.warmup, args.cpu_smoke, args.profile_child)
    result.update(device_info(args.cpu_smoke))
    result["params"] = prep["params"]
    if cuda:
        result["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 1024**3, 2)
        result["peak_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
    else:  # CPU smoke: the process's peak RSS stands in for GPU memory (Linux reports KiB)
        result["peak_reserved_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)
        result["memory_kind"] = "peak RSS (CPU)"
    if result.get("peak_bf16_tflops") and result.get("tokens_per_s"):
        result["mfu_%"] = round(
            100 * 6 * prep["params"] * result["tokens_per_s"] / (result["peak_bf16_tflops"] * 1e12), 2
        )
    result["variant"] = args.child
    print("RESULT " + json.dumps(result), flush=True)


def run_variant(variant: str, args, prep_file: Path, timeout: float) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--prep",
        str(prep_file),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch",
        str(args.batch),
    ]
    if variant in args.profile.split(","):
        cmd.append("--profile-child")
    env = dict(os.environ)
    env.update(OURS.get(variant, {}).get("env", {}))
    env.setdefault("CUDA_VISIBLE_DEVICES", "0")  # one GPU (TRL refuses the DataParallel of several)
    if args.cpu_smoke:
        cmd.append("--cpu-smoke")
        env["CUDA_VISIBLE_DEVICES"] = ""
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-2000:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        log(f"{variant} stopped after {timeout:.0f} s (time budget):\n{tail}")
        return {"variant": variant, "error": f"stopped after {timeout:.0f} s (time budget)"}
    wall = round(time.perf_counter() - started, 1)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-3000:]
        log(f"{variant} failed (exit {proc.returncode}):\n{tail}")
        return {"variant": variant, "error": tail[-800:], "process_s": wall}
    result = json.loads(lines[-1][len("RESULT ") :])
    result["process_s"] = wall
    return result


def ratios(results: list[dict]) -> dict:
    """Each of our variants against the baseline of the same precision, with issue 6's targets."""
    by = {r["variant"]: r for r in results if "error" not in r}
    out = {}
    for ours, r in by.items():
        if ours not in OURS:
            continue
        kind = "4bit" if "4bit" in ours else "bf16"
        base = by.get(f"baseline-{kind}")
        if not base or not base.get("tokens_per_s") or not base.get("peak_reserved_gb"):
            continue
        entry = {
            "against": base["variant"],
            "tokens_per_s_x": round(r["tokens_per_s"] / base["tokens_per_s"], 2),
            "peak_memory_x": round(r["peak_reserved_gb"] / base["peak_reserved_gb"], 2),
        }
        target = TARGETS[kind]
        entry["meets_targets"] = all(
            entry[k] >= v if k == "tokens_per_s_x" else entry[k] <= v for k, v in target.items()
        )
        out[ours] = entry
    return out


def table(results: list[dict], rat: dict) -> str:
    rows = ["variant              tokens/s   x base  peak GB  x base  MFU %  batch  s/step  note"]
    for r in results:
        if "error" in r:
            rows.append(f"{r['variant']:20s} ERROR {r['error'].splitlines()[-1][:100] if r['error'] else ''}")
            continue
        q = rat.get(r["variant"], {})
        rows.append(
            f"{r['variant']:20s} {r['tokens_per_s']:9.1f} {q.get('tokens_per_s_x', 1.0):7.2f} "
            f"{r['peak_reserved_gb']:8.2f} {q.get('peak_memory_x', 1.0):7.2f} {r.get('mfu_%') or 0:6.2f} "
            f"{r.get('batch', ''):>6} {r.get('step_s_median', 0):7.3f}  "
            f"{'meets targets' if q.get('meets_targets') else ('misses targets' if q else '')}"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="", help=f"comma-separated; default {','.join(DEFAULT_VARIANTS)}")
    ap.add_argument("--steps", type=int, default=35, help="optimizer steps per variant")
    ap.add_argument("--warmup", type=int, default=5, help="steps excluded from the timing")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--n", type=int, default=1600, help="number of chats")
    ap.add_argument("--budget-s", type=float, default=510, help="wall-time budget of the whole run")
    ap.add_argument("--min-variant-s", type=float, default=70, help="skip a variant with less time left")
    ap.add_argument("--workdir", default="/tmp/afinar-bench")
    ap.add_argument("--out", default="")
    ap.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="plumbing check on CPU: tiny model, 3 steps, transformers backend, no Unsloth",
    )
    ap.add_argument(
        "--profile", default="", help="comma-separated variants to profile (torch.profiler, 3 steps)"
    )
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--profile-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prep", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    started = time.perf_counter()
    if args.cpu_smoke:
        args.steps, args.warmup, args.batch, args.n = 3, 1, 4, min(args.n, 64)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] or (
        SMOKE_VARIANTS if args.cpu_smoke else DEFAULT_VARIANTS
    )
    unknown = [v for v in variants if v not in OURS and v not in BASELINES]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {', '.join([*BASELINES, *OURS])}")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    prep = prepare(work, args.n, args.cpu_smoke)
    prep_file = work / ("prep-smoke.json" if args.cpu_smoke else "prep.json")
    prep_file.write_text(json.dumps(prep))
    results = []
    for variant in variants:
        left = args.budget_s - (time.perf_counter() - started)
        if left < args.min_variant_s:
            log(f"skipping {variant}: {left:.0f} s left of the {args.budget_s:.0f} s budget")
            results.append({"variant": variant, "error": f"skipped: {left:.0f} s left of the time budget"})
            continue
        log(f"running {variant}")
        results.append(run_variant(variant, args, prep_file, timeout=left))
        log(json.dumps(results[-1]))
    rat = ratios(results)
    report = {
        "data": prep["lengths"],
        "params": prep["params"],
        "steps": args.steps,
        "warmup": args.warmup,
        "wall_s": round(time.perf_counter() - started, 1),
        "results": results,
        "ratios": rat,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=2))
    for r in results:
        prof = r.get("profile")
        if prof:
            print(
                f"\n=== profile of {r['variant']}: "
                + json.dumps({k: v for k, v in prof.items() if not k.startswith("top")})
            )
            print(prof["top_gpu"])
            print(prof["top_cpu"])
    print(table(results, rat))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
