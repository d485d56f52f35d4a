"""Training throughput on one GPU: Afinar's train path vs a plain transformers + PEFT + TRL script.

Issue 11's measurement. Same GPU, same random-initialised Llama-shaped models built here (a ~1.1B one and an
8B one of Llama 3's shape), same chats of 54-665 tokens, same LoRA settings (r 16 on the seven projections).
The baseline is written the way a user would: padded batches of 8 in random order, gradient checkpointing,
TRL's SFTTrainer on the messages; ``baseline-bf16-gbl`` adds the one flag a careful user would add
(``train_sampling_strategy="group_by_length"``, transformers 5's spelling of ``group_by_length=True``).

What is timed, identically on both paths (``Throughput`` below):

- **a whole epoch** of the data set (every variant trains exactly one epoch unless ``--max-steps``), timed
  from the trainer's ``on_train_begin`` to ``on_train_end``, each after ``torch.cuda.synchronize()``;
- **steady state**: the same epoch after its first ``--warmup`` optimizer steps (synchronised there too);
  nothing synchronises in between, so the timing itself adds no host syncs;
- **end to end**: import (process start → the stack imported, Unsloth's patching included) + load (model,
  tokenizer, data, trainer set-up) + the epoch. Variants that share a process (``a+b`` in ``--variants``)
  share its import time; later ones find Triton/compile caches warm, so put the one whose end-to-end time
  matters first.

Real (non-padding) tokens are counted on the CPU from the examples of every collated batch (the lengths of
their ``input_ids``), so the count costs no GPU sync; the first ``warmup x accumulation`` batches belong to
the warm-up steps. Memory = peak reserved GPU memory of the variant.

MFU = 4 x N x real tokens/s / peak, N = the parameters that multiply every token (all of them minus the
input embedding, counted from the config so 4-bit weights are not undercounted). 4·N is LoRA's cost per
token: forward 2·N plus the backward's activation gradients 2·N (frozen weights get no weight gradients);
gradient checkpointing's recomputed forward (another 2·N) and attention's own FLOPs are not counted, so this
is the useful work, not what the GPU executed. Peaks: the datasheet's dense bf16 rate (989 TFLOP/s for the
H100/H200 SXM) and the rate of an 8192³ bf16 matrix product measured at the start of the run.

    export PYTHONPATH=/tmp/site:$PWD/scripts HF_HUB_OFFLINE=1
    python tests/benchmarks/bench_train_gpu.py --out $OUT/bench.json        # DEFAULT_VARIANTS, ~4.5 min on H200
    python tests/benchmarks/bench_train_gpu.py --variants baseline-bf16,ours-bf16+ours-bf16-t8k
    python tests/benchmarks/bench_train_gpu.py --variants ours-bf16 --profile ours-bf16   # where a step goes
    .venv/bin/python tests/benchmarks/bench_train_gpu.py --cpu-smoke         # plumbing check: tiny model, CPU

``--variants``: commas separate processes, ``+`` joins variants run one after the other in one process
(Unsloth patches transformers/TRL on import, so baselines never share a process with Unsloth variants).
"""

from __future__ import annotations

import argparse
import gc
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
# Issue 11's targets, each against the baseline of the same model and precision in the same run.
TARGETS = {
    "1b-bf16": {"tokens_per_s_x": 3.0, "peak_memory_x": 0.8, "gbl_x": 1.5, "e2e_x": 1.0},
    "8b-bf16": {"mfu_steady_%": 30.0},  # after the warm-up steps (the whole epoch's MFU is printed too)
    "8b-4bit": {"tokens_per_s_x": 2.0, "peak_memory_x": 0.5},
}
MODEL_SHAPES = {
    # ~1.1B, TinyLlama's shape
    "1b": {},
    # Llama 3 8B's shape (8.0B parameters); random weights, so only its cost is meaningful
    "8b": {
        "vocab_size": 128256,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 8192,
    },
    "tiny": {  # --cpu-smoke: steps in well under a second
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
    },
}

# Every variant: the model, the path (ours = afinar.train.training.train; baseline = the plain script), and
# for ours the treinamento keys set on top of the train rule's defaults (batch 8 unless said). "env" is set
# for the variant's process (only the first variant of a process can set it).
_BASE_VARIANTS: dict[str, dict] = {
    "baseline-bf16": {"path": "baseline", "nbits": 0},
    "baseline-bf16-gbl": {"path": "baseline", "nbits": 0, "group_by_length": True},
    "baseline-4bit": {"path": "baseline", "nbits": 4},
    "ours-bf16": {"path": "ours", "tr": {"nbits": 0}},  # the defaults: length-grouped, widths rounded to 64
    "ours-bf16-t4k": {"path": "ours", "tr": {"nbits": 0, "tokens_por_lote": 4096}},
    "ours-bf16-t8k": {"path": "ours", "tr": {"nbits": 0, "tokens_por_lote": 8192}},
    "ours-bf16-t16k": {"path": "ours", "tr": {"nbits": 0, "tokens_por_lote": 16384}},
    # our processes get the train rule's allocator settings before torch starts (afinar.runtime.allocator_env);
    # "-noalloc" = without them (an empty setting, which Unsloth's import then leaves alone): the A/B of 2026-12-03
    "ours-bf16-t8k-noalloc": {
        "path": "ours",
        "tr": {"nbits": 0, "tokens_por_lote": 8192},
        "env": {"PYTORCH_ALLOC_CONF": ""},
    },
    # no gradient checkpointing: 4·N FLOPs per token instead of 6·N (no recomputed forward), for more memory
    "ours-bf16-t8k-nogc": {
        "path": "ours",
        "tr": {"nbits": 0, "tokens_por_lote": 8192, "gradient_checkpointing": False},
    },
    "ours-bf16-t16k-nogc": {
        "path": "ours",
        "tr": {"nbits": 0, "tokens_por_lote": 16384, "gradient_checkpointing": False},
    },
    "ours-bf16-bs16": {"path": "ours", "tr": {"nbits": 0, "batch_size": 16}},
    "ours-bf16-padfree": {"path": "ours", "tr": {"nbits": 0, "padding_free": True}},
    "ours-bf16-packing": {"path": "ours", "tr": {"nbits": 0, "packing": True}},
    "ours-bf16-random": {"path": "ours", "tr": {"nbits": 0, "agrupar_por_tamanho": False}},
    "ours-bf16-pad1": {"path": "ours", "tr": {"nbits": 0, "pad_to_multiple_of": 1}},
    "ours-bf16-blockcompile": {"path": "ours", "tr": {"nbits": 0}, "env": {"UNSLOTH_BLOCK_COMPILE": "1"}},
    "ours-4bit": {"path": "ours", "tr": {"nbits": 4}},
    "ours-4bit-t8k": {"path": "ours", "tr": {"nbits": 4, "tokens_por_lote": 8192}},
    "ours-4bit-noalloc": {"path": "ours", "tr": {"nbits": 4}, "env": {"PYTORCH_ALLOC_CONF": ""}},
    # the input embedding kept on the GPU (embedding_na_cpu: null = in CPU memory for 4/8-bit): the A/B of 2026-12-03
    "ours-4bit-embgpu": {"path": "ours", "tr": {"nbits": 4, "embedding_na_cpu": False}},
    # the fused loss's chunks capped at 128 rows (Unsloth's smallest automatic chunk is 512 rows: 262 MB of
    # float32 logits with Llama 3's vocabulary)
    "ours-4bit-ce128": {"path": "ours", "tr": {"nbits": 4}, "env": {"UNSLOTH_FUSED_LINEAR_MAX_ROWS": "128"}},
    # the transformers backend on the GPU (no Unsloth), with Liger Kernel's fused kernels or without
    "ours-tf-bf16-t8k": {
        "path": "ours",
        "tr": {"nbits": 0, "backend": "transformers", "tokens_por_lote": 8192},
    },
    "ours-tf-liger-t8k": {
        "path": "ours",
        "tr": {"nbits": 0, "backend": "transformers", "liger_kernel": True, "tokens_por_lote": 8192},
    },
    # flex attention over the padding-free row, padded to the budget: one shape, one compilation
    "ours-tf-flex-t8k": {
        "path": "ours",
        "attn": "flex_attention",
        "tr": {
            "nbits": 0,
            "backend": "transformers",
            "padding_free": True,
            "tokens_por_lote": 8192,
            "pad_to_multiple_of": 8192,
        },
    },
    "ours-tf-padfree-t8k": {
        "path": "ours",
        "tr": {"nbits": 0, "backend": "transformers", "padding_free": True, "tokens_por_lote": 8192},
    },
}
VARIANTS: dict[str, dict] = {
    **{k: {**v, "model": "1b"} for k, v in _BASE_VARIANTS.items()},
    **{f"{k}-8b": {**v, "model": "8b"} for k, v in _BASE_VARIANTS.items()},
}
# Commas separate processes; under the time budget the last ones are the first to be skipped.
DEFAULT_VARIANTS = (
    "baseline-bf16+baseline-bf16-gbl,baseline-4bit-8b,ours-bf16-t8k+ours-bf16-t8k-nogc-8b,ours-4bit-8b"
)
SMOKE_VARIANTS = "baseline-bf16+baseline-bf16-gbl,ours-bf16+ours-bf16-t4k+ours-bf16-packing"
PROFILED_STEPS = 3  # --profile: torch.profiler over this many steps after the measured ones


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


def count_parameters(model_dir: Path) -> dict[str, int]:
    """All parameters and those that multiply every token (all minus the input embedding), on the meta
    device: no memory, and not fooled by packed 4-bit weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "matmul": total - model.get_input_embeddings().weight.numel()}


def measured_peak_tflops() -> float | None:
    """bf16 rate of an 8192³ matrix product on random data (median of 10 after 3 warm-ups)."""
    import torch

    if not torch.cuda.is_available():
        return None
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    times = []
    for i in range(13):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end) / 1000)
    del a, b
    torch.cuda.empty_cache()
    return round(2 * 8192**3 / sorted(times)[len(times) // 2] / 1e12, 1)


def prepare(workdir: Path, models: dict[str, int]) -> dict:
    """Build each needed model and its chats once (``models``: name → number of chats)."""
    import pandas as pd
    import torch
    from transformers import AutoTokenizer

    from afinar.train.demo_model import LlamaSpec, build_llama_model

    prep: dict = {"models": {}}
    for name, n in models.items():
        model_dir = workdir / f"llama-{name}"
        if not (model_dir / "config.json").is_file():
            started = time.perf_counter()
            corpus = [" ".join(WORDS)] * 50 + ["user assistant system"] * 10
            build_llama_model(model_dir, corpus, LlamaSpec(**MODEL_SHAPES[name]))
            log(f"built the random {name} model in {time.perf_counter() - started:.0f} s")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        tok = AutoTokenizer.from_pretrained(model_dir)
        chats, lengths = make_chats(tok, n, 54, 665, seed=0)
        data = workdir / f"data-{name}-{n}"
        data.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"id": [str(i) for i in range(n)], "messages": chats}).to_parquet(
            data / "treino.parquet"
        )
        pd.DataFrame({"id": ["v0"], "messages": chats[:1]}).to_parquet(data / "validacao.parquet")
        stats = {
            "n": n,
            "min": min(lengths),
            "max": max(lengths),
            "mean": round(sum(lengths) / n, 1),
            "total_tokens": sum(lengths),
        }
        log(f"{name} data (tokens per chat): {stats}")
        prep["models"][name] = {
            "model": str(model_dir),
            "data": str(data),
            "lengths": stats,
            "params": count_parameters(model_dir),
        }
    prep["measured_peak_tflops"] = measured_peak_tflops()
    return prep


# ------------------------------------------------------------------------------------------ measurement


def real_tokens(inputs: dict) -> int:
    """Non-padding tokens of one collated batch (CPU tensors: counting costs no GPU sync).

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


def throughput_callback(warmup: int):
    """Times one epoch and its steady state, identically for our path and the baseline.

    Why not TRL's logged ``num_tokens``: Unsloth replaces ``SFTTrainer.compute_loss`` (where TRL counts
    them). Tokens are counted by a wrapper around the training dataloader's collate function, in order:
    the first ``warmup x accumulation`` batches belong to the warm-up steps even though the loader
    prefetches. A forward pre-hook counts the model's training forwards (no tensor is read: no sync) to
    check that every collated batch was trained on."""
    import torch
    from transformers import TrainerCallback

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    class Throughput(TrainerCallback):
        def __init__(self):
            self.forwards = 0
            self.batch_tokens: list[int] = []
            self.batch_rows: list[int] = []
            self.accum = 1
            self.t_begin = self.t_warm = self.t_end = 0.0
            self.steps = 0
            self.handle = None
            self.load_peak: tuple[int, int] | None = None

        def _count(self, module, args, kwargs):
            if module.training:  # evaluation forwards are not training throughput
                self.forwards += 1

        def _wrap_collate(self, loader) -> None:
            loader = getattr(loader, "base_dataloader", loader)  # accelerate's DataLoaderShard
            collate = getattr(loader, "collate_fn", None)
            if collate is None or getattr(collate, "_bench_counting", False):
                return

            def counting(examples):
                batch = collate(examples)
                try:  # each example's own tokens: exact for padded, padding-free and packed rows
                    self.batch_tokens.append(sum(len(e["input_ids"]) for e in examples))
                except (KeyError, TypeError):
                    self.batch_tokens.append(real_tokens(batch))
                self.batch_rows.append(len(examples))
                return batch

            counting._bench_counting = True
            loader.collate_fn = counting

        def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
            self.accum = max(1, int(args.gradient_accumulation_steps))
            if model is not None and self.handle is None:
                self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)
            if train_dataloader is not None:
                self._wrap_collate(train_dataloader)
            sync()
            if torch.cuda.is_available():  # what loading the model and building the trainer left
                self.load_peak = (torch.cuda.max_memory_reserved(), torch.cuda.max_memory_allocated())
            self.t_begin = time.time()

        def on_step_end(self, args, state, control, **kwargs):
            self.steps = state.global_step
            if state.global_step == warmup:
                sync()
                self.t_warm = time.time()

        def on_train_end(self, args, state, control, **kwargs):
            sync()
            self.t_end = time.time()
            self.steps = state.global_step
            if self.handle is not None:
                self.handle.remove()
                self.handle = None

        def result(self) -> dict:
            used = self.steps * self.accum  # batches trained on (the loader may have prefetched one more)
            tokens = self.batch_tokens[:used]
            if not tokens or not self.t_end:
                return {"error": f"nothing measured: {self.steps} steps, {len(self.batch_tokens)} batches"}
            epoch_s = self.t_end - self.t_begin
            out = {
                "steps": self.steps,
                "tokens": sum(tokens),
                "rows": sum(self.batch_rows[:used]),
                "tokens_per_step": round(sum(tokens) / self.steps),
                "forwards": self.forwards,
                "epoch_s": round(epoch_s, 2),
                "tokens_per_s": round(sum(tokens) / epoch_s, 1),
            }
            if self.t_warm and self.steps > warmup:
                late = sum(tokens[warmup * self.accum :])
                out["steady_tokens_per_s"] = round(late / (self.t_end - self.t_warm), 1)
                out["steady_steps"] = self.steps - warmup
            if self.load_peak is not None:
                out["load_peak_reserved_gb"] = round(self.load_peak[0] / 1024**3, 2)
                out["load_peak_allocated_gb"] = round(self.load_peak[1] / 1024**3, 2)
            if self.forwards != used:
                out["warning"] = f"{self.forwards} training forwards for {used} batches"
            return out

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


def ours_config(model: dict, settings: dict, max_steps: int, batch: int, smoke: bool) -> dict:
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
        "max_steps": max_steps,
        "filtro_tokens": {},
        "agrupar_por_tamanho": True,
        "padding_free": None,
        "pad_to_multiple_of": None,
        "tokens_por_lote": None,
        "liger_kernel": False,
        "embedding_na_cpu": None,
        **settings,
    }
    if smoke:
        tr["backend"] = "transformers"
        tr["liger_kernel"] = False  # Triton kernels: CUDA only
    lora = {
        "r": 16,
        "alpha": 32,
        "dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    }
    return {"modelo": {"base": model["model"], "saida": ""}, "treinamento": tr, "lora": lora}


def run_ours(model: dict, variant: str, args, callbacks: list) -> dict:
    from afinar.train.training import TrainPaths, train

    settings = dict(VARIANTS[variant].get("tr", {}))
    batch = int(settings.pop("batch_size", args.batch))
    work = Path(args.workdir) / f"run-{variant}"
    paths = TrainPaths.for_experiment(work, "bench")
    paths.train.parent.mkdir(parents=True, exist_ok=True)
    for name in ("treino", "validacao"):
        target = paths.train.parent / f"{name}.parquet"
        if target.is_symlink() or target.exists():
            target.unlink()
        os.symlink(Path(model["data"]) / f"{name}.parquet", target)
    exp = ours_config(model, settings, args.max_steps, batch, args.cpu_smoke)
    attn = VARIANTS[variant].get("attn")
    if attn and not args.cpu_smoke:  # the transformers backend's loader, with another attention kernel
        import functools

        import transformers

        load = transformers.AutoModelForCausalLM.from_pretrained
        transformers.AutoModelForCausalLM.from_pretrained = functools.partial(load, attn_implementation=attn)
        try:
            summary = train(exp, paths, extra_callbacks=callbacks)
        finally:
            transformers.AutoModelForCausalLM.from_pretrained = load
    else:
        summary = train(exp, paths, extra_callbacks=callbacks, threads=2 if args.cpu_smoke else None)
    keys = (
        "backend",
        "agrupar_por_tamanho",
        "tokens_por_lote",
        "packing",
        "padding_free",
        "liger_kernel",
        "gradient_checkpointing",
        "embedding_na_cpu",
    )
    return {
        "batch": batch,
        "settings": {k: exp["treinamento"][k] for k in keys},
        "masked": summary["fracao_mascarada"],
        "embedding_cpu_gb": summary["embedding_na_cpu_gb"],
    }


def run_baseline(model: dict, variant: str, args, callbacks: list) -> dict:
    """The plain script a user would write (kept deliberately ordinary)."""
    import pandas as pd
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    spec, smoke = VARIANTS[variant], args.cpu_smoke
    tok = AutoTokenizer.from_pretrained(model["model"])
    quant = None
    if spec.get("nbits") == 4:
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    lm = AutoModelForCausalLM.from_pretrained(
        model["model"],
        dtype=torch.float32 if smoke else torch.bfloat16,
        quantization_config=quant,
        device_map=None if smoke else {"": 0},
    )
    if quant is not None:
        lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=True)
    lm = get_peft_model(
        lm,
        LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
    frame = pd.read_parquet(Path(model["data"]) / "treino.parquet")
    ds = Dataset.from_dict({"messages": [[dict(m) for m in msgs] for msgs in frame["messages"]]})
    sft = SFTConfig(
        output_dir=str(Path(args.workdir) / f"run-{variant}"),
        per_device_train_batch_size=args.batch,
        num_train_epochs=1,
        max_steps=args.max_steps,
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
        train_sampling_strategy="group_by_length" if spec.get("group_by_length") else "random",
    )
    trainer = SFTTrainer(model=lm, args=sft, train_dataset=ds, processing_class=tok, callbacks=callbacks)
    trainer.train()
    return {"batch": args.batch, "settings": {"group_by_length": bool(spec.get("group_by_length"))}}


# ------------------------------------------------------------------------------------------ processes


def import_stack(path: str, smoke: bool) -> None:
    """The imports a variant's process pays once (timed as the variant's import cost)."""
    if (
        path == "ours"
        and not smoke
        and any(VARIANTS[v].get("tr", {}).get("backend", "unsloth") == "unsloth" for v in _child_variants)
    ):
        from afinar.train.training import import_unsloth

        import_unsloth()  # before transformers/trl (patched on import), with the train rule's settings
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401


_child_variants: list[str] = []


def child(args) -> None:
    """Run the variants of one process one after the other; one RESULT line each."""
    import torch

    spawned = float(os.environ.get("BENCH_SPAWNED", time.time()))
    prep = json.loads(Path(args.prep).read_text())
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    _child_variants.extend(args.child.split("+"))
    paths = {VARIANTS[v]["path"] for v in _child_variants}
    if len(paths) > 1:
        raise SystemExit(f"variants of one process must share a path: {_child_variants}")
    import_stack(paths.pop(), args.cpu_smoke)
    import_s = round(time.time() - spawned, 2)
    deadline = float(args.deadline)
    for variant in _child_variants:
        if time.time() > deadline - args.min_variant_s:
            print("RESULT " + json.dumps({"variant": variant, "error": "skipped: time budget"}), flush=True)
            continue
        spec = VARIANTS[variant]
        model = prep["models"]["tiny" if args.cpu_smoke else spec["model"]]
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        timing = throughput_callback(args.warmup)
        callbacks = [timing]
        if variant in args.profile.split(","):
            callbacks.append(step_profiler(args.warmup, PROFILED_STEPS))
        started = time.time()
        runner = run_ours if spec["path"] == "ours" else run_baseline
        try:
            result = runner(model, variant, args, callbacks)
        except Exception as exc:  # one variant's failure must not lose the others' figures
            import traceback

            traceback.print_exc()
            print("RESULT " + json.dumps({"variant": variant, "error": repr(exc)[:800]}), flush=True)
            continue
        result.update(timing.result())
        if len(callbacks) > 1:
            result["profile"] = callbacks[1].summary
        result.update(device_info(args.cpu_smoke))
        result.update(variant=variant, model=spec["model"], params=model["params"], data=model["lengths"])
        result["import_s"] = import_s
        result["load_s"] = round(timing.t_begin - started, 2)
        result["e2e_s"] = round(import_s + result["load_s"] + result.get("epoch_s", 0), 2)
        if cuda:
            result["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 1024**3, 2)
            result["peak_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
            # the allocator's settings as this process read them (Unsloth sets expandable segments on import)
            result["alloc_conf"] = os.environ.get("PYTORCH_ALLOC_CONF") or os.environ.get(
                "PYTORCH_CUDA_ALLOC_CONF", ""
            )
        else:  # CPU smoke: the process's peak RSS stands in for GPU memory (Linux reports KiB)
            result["peak_reserved_gb"] = round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2
            )
            result["memory_kind"] = "peak RSS (CPU)"
        per_token = 4 * model["params"]["matmul"]
        for key, rate, peak in (
            ("mfu_%", "tokens_per_s", result["peak_bf16_tflops"]),
            ("mfu_steady_%", "steady_tokens_per_s", result["peak_bf16_tflops"]),
            ("mfu_measured_peak_%", "tokens_per_s", prep["measured_peak_tflops"]),
        ):
            if peak and result.get(rate):
                result[key] = round(100 * per_token * result[rate] / (peak * 1e12), 1)
        print("RESULT " + json.dumps(result), flush=True)


def run_process(group: list[str], args, prep_file: Path, deadline: float) -> list[dict]:
    cmd = [sys.executable, __file__, "--child", "+".join(group), "--prep", str(prep_file)]
    cmd += ["--max-steps", str(args.max_steps), "--warmup", str(args.warmup), "--batch", str(args.batch)]
    cmd += [
        "--workdir",
        args.workdir,
        "--deadline",
        str(deadline),
        "--min-variant-s",
        str(args.min_variant_s),
    ]
    cmd += ["--profile", args.profile] if args.profile else []
    env = dict(os.environ)
    if VARIANTS[group[0]]["path"] == "ours":  # what the train rule sets before torch starts
        from afinar.runtime import allocator_env

        env.update(allocator_env(env))
    env.update(VARIANTS[group[0]].get("env", {}))
    env.setdefault("CUDA_VISIBLE_DEVICES", "0")  # one GPU (TRL refuses the DataParallel of several)
    if args.cpu_smoke:
        cmd.append("--cpu-smoke")
        env["CUDA_VISIBLE_DEVICES"] = ""
    env["BENCH_SPAWNED"] = repr(time.time())
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=max(1.0, deadline - time.time())
        )
        out, err, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        code = "timeout"
    if args.logdir:
        Path(args.logdir, f"{group[0]}.log").write_text(err)
    results = [json.loads(ln[len("RESULT ") :]) for ln in out.splitlines() if ln.startswith("RESULT ")]
    seen = {r["variant"] for r in results}
    for v in group:
        if v not in seen:
            results.append({"variant": v, "error": f"process ended ({code}) before it: {err[-600:]}"})
    log(f"{'+'.join(group)}: exit {code} after {time.perf_counter() - started:.0f} s")
    for r in results:
        if "error" in r:
            log(f"{r['variant']} failed: {r['error'][-400:]}")
    return results


def baseline_of(variant: str, by: dict, gbl: bool = False) -> dict | None:
    spec = VARIANTS[variant]
    kind = "4bit" if spec.get("tr", spec).get("nbits") == 4 else "bf16"
    name = f"baseline-{kind}{'-gbl' if gbl else ''}" + ("-8b" if spec["model"] == "8b" else "")
    return by.get(name)


def ratios(results: list[dict]) -> dict:
    """Each of our variants against the baselines of the same model and precision, with issue 11's targets."""
    by = {r["variant"]: r for r in results if "error" not in r}
    out = {}
    for name, r in by.items():
        spec = VARIANTS[name]
        if spec["path"] != "ours":
            continue
        kind = "4bit" if spec["tr"].get("nbits") == 4 else "bf16"
        entry: dict = {}
        base, gbl = baseline_of(name, by), baseline_of(name, by, gbl=True)
        if base:
            entry["against"] = base["variant"]
            entry["tokens_per_s_x"] = round(r["tokens_per_s"] / base["tokens_per_s"], 2)
            if r.get("steady_tokens_per_s") and base.get("steady_tokens_per_s"):
                entry["steady_x"] = round(r["steady_tokens_per_s"] / base["steady_tokens_per_s"], 2)
            entry["peak_memory_x"] = round(r["peak_reserved_gb"] / base["peak_reserved_gb"], 2)
            entry["e2e_x"] = round(r["e2e_s"] / base["e2e_s"], 2)
        if gbl:
            entry["gbl_x"] = round(r["tokens_per_s"] / gbl["tokens_per_s"], 2)
        target = TARGETS.get(f"{spec['model']}-{kind}")
        if target:
            checks = {}
            for key, want in target.items():
                have = r.get(key) if key.startswith("mfu") else entry.get(key)
                if have is not None:
                    lower_is_better = key in ("peak_memory_x", "e2e_x")
                    checks[key] = have <= want if lower_is_better else have >= want
            entry["targets"] = checks
        out[name] = entry
    return out


def table(results: list[dict], rat: dict) -> str:
    head = (
        f"{'variant':24s} {'tok/s':>8s} {'x base':>6s} {'x gbl':>6s} {'steady':>8s} {'peak GB':>7s} "
        f"{'x base':>6s} {'MFU%':>5s} {'st.MFU':>6s} {'tok/step':>8s} {'steps':>5s} {'epoch s':>7s} {'e2e s':>6s}  targets"
    )
    rows = [head]
    for r in results:
        if "error" in r:
            rows.append(
                f"{r['variant']:24s} ERROR {r['error'].strip().splitlines()[-1][:110] if r['error'] else ''}"
            )
            continue
        q = rat.get(r["variant"], {})
        targets = " ".join(f"{k}:{'ok' if v else 'MISS'}" for k, v in q.get("targets", {}).items())
        rows.append(
            f"{r['variant']:24s} {r['tokens_per_s']:8.0f} {q.get('tokens_per_s_x', 1.0):6.2f} "
            f"{q.get('gbl_x', 0):6.2f} {r.get('steady_tokens_per_s', 0):8.0f} {r['peak_reserved_gb']:7.2f} "
            f"{q.get('peak_memory_x', 1.0):6.2f} {r.get('mfu_%') or 0:5.1f} {r.get('mfu_steady_%') or 0:6.1f} "
            f"{r['tokens_per_step']:8d} "
            f"{r['steps']:5d} {r['epoch_s']:7.1f} {r['e2e_s']:6.1f}  {targets}"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="", help=f"default {DEFAULT_VARIANTS}")
    ap.add_argument("--max-steps", type=int, default=-1, help="-1 = one whole epoch")
    ap.add_argument("--warmup", type=int, default=3, help="steps left out of the steady-state rate")
    ap.add_argument("--batch", type=int, default=8, help="records per batch (baseline, and ours by default)")
    ap.add_argument("--n", type=int, default=400, help="chats of the 1B data set (one epoch is timed)")
    ap.add_argument("--n-8b", type=int, default=128, help="chats of the 8B data set")
    ap.add_argument("--budget-s", type=float, default=265, help="wall-time budget of the whole run")
    ap.add_argument("--min-variant-s", type=float, default=20, help="skip a variant with less time left")
    ap.add_argument("--workdir", default="/tmp/afinar-bench")
    ap.add_argument("--out", default="", help="the JSON report")
    ap.add_argument("--logdir", default="", help="each process's stderr as <first variant>.log")
    ap.add_argument(
        "--cpu-smoke", action="store_true", help="plumbing check on CPU: tiny model, transformers"
    )
    ap.add_argument("--profile", default="", help="comma-separated variants to profile (torch.profiler)")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--prep", default="", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", default="0", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    started = time.time()
    deadline = started + args.budget_s
    if args.cpu_smoke:
        args.max_steps, args.warmup, args.batch = 4, 1, 4
    spec = args.variants or (SMOKE_VARIANTS if args.cpu_smoke else DEFAULT_VARIANTS)
    groups = [[v.strip() for v in g.split("+") if v.strip()] for g in spec.split(",") if g.strip()]
    unknown = [v for g in groups for v in g if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.logdir:
        Path(args.logdir).mkdir(parents=True, exist_ok=True)
    needed = {"tiny": min(args.n, 48)} if args.cpu_smoke else {}
    if not args.cpu_smoke:
        for g in groups:
            for v in g:
                needed[VARIANTS[v]["model"]] = args.n if VARIANTS[v]["model"] == "1b" else args.n_8b
    prep = prepare(work, needed)
    log(f"measured bf16 matrix-product rate: {prep['measured_peak_tflops']} TFLOP/s")
    prep_file = work / "prep.json"
    prep_file.write_text(json.dumps(prep))
    results: list[dict] = []
    for group in groups:
        if time.time() > deadline - args.min_variant_s:
            results += [{"variant": v, "error": "skipped: time budget"} for v in group]
            continue
        log(f"running {'+'.join(group)}")
        results += run_process(group, args, prep_file, deadline)
    rat = ratios(results)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "gpu": next((r["gpu"] for r in results if "gpu" in r), None),
        "measured_peak_tflops": prep["measured_peak_tflops"],
        "data": {k: m["lengths"] for k, m in prep["models"].items()},
        "params": {k: m["params"] for k, m in prep["models"].items()},
        "max_steps": args.max_steps,
        "warmup": args.warmup,
        "wall_s": round(time.time() - started, 1),
        "results": results,
        "ratios": rat,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    for r in results:
        prof = r.pop("profile", None)
        if prof:
            print(
                f"\n=== profile of {r['variant']}: "
                + json.dumps({k: v for k, v in prof.items() if not k.startswith("top")})
            )
            print(prof["top_gpu"])
            print(prof["top_cpu"])
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=1))
    print(f"\n{report['gpu']}  {report['date']}  peak bf16 measured {report['measured_peak_tflops']} TFLOP/s")
    print(table(results, rat))


if __name__ == "__main__":
    main()
