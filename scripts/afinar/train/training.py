"""Train one experiment: split parquets → LoRA adapter (or full model) + metric files.

``train()`` reads top to bottom like nanoGPT: typed settings (afinar.config.settings) → this machine's
runtime (afinar.runtime: backend, precision, optimizer) → model and tokenizer → chat template and
response markers → tokenized datasets (labels masked outside assistant turns) → a pure ``plan()`` (steps,
intervals, padding, SFTConfig arguments; unit-tested without a model) → SFTTrainer → check a collated
batch → train (resuming from the newest complete checkpoint) → final evaluation → adapter saved
atomically → metric files. Both backends (Unsloth on CUDA, transformers + PEFT + TRL anywhere) share
everything but model loading.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afinar import layout, runtime
from afinar.config.aliases import parse_eval_steps
from afinar.config.settings import Experiment, experiment_from_partial
from afinar.errors import AfinarError
from afinar.io import atomic_dir, atomic_path, atomic_write_json
from afinar.runtime import Runtime, choose_optim, choose_precision, import_unsloth  # noqa: F401 (old import path)
from afinar.train import batching, chat, checkpoints, distributed, memory_hint, models, token_filter

log = logging.getLogger("afinar.train.training")
# treinamento keys that change where or how often things happen, not what a checkpoint holds: a run
# interrupted before such a key changed still resumes
PLACEMENT_ONLY = frozenset({"checkpoint_minutos", "embedding_na_cpu"})


@dataclass(frozen=True)
class TrainPaths:
    """Every file a training run reads or writes. Live metric files sit next to the checkpoints."""

    train: Path
    validation: Path
    adapter: Path
    metrics_summary: Path
    metrics_stream: Path
    training_metrics: Path
    hardware_metrics: Path
    checkpoints: Path
    #: the filter_tokens rule's decisions; None (or a missing file) = filter here with the same rules
    token_filter: Path | None = None

    @classmethod
    def for_experiment(cls, results: str | Path, exp: str) -> TrainPaths:
        """The layout of afinar.layout: ``results/data/*.parquet`` in, ``results/{exp}/...`` out."""

        def at(relative: str) -> Path:
            return layout.exp_path(exp, relative, results)

        return cls(
            train=layout.split_file("treino", results),
            validation=layout.split_file("validacao", results),
            adapter=at(layout.ADAPTER),
            metrics_summary=at(layout.METRICS_SUMMARY),
            metrics_stream=at(layout.METRICS_STREAM),
            training_metrics=at(layout.TRAINING_METRICS),
            hardware_metrics=at(layout.HARDWARE_METRICS),
            checkpoints=at(layout.CHECKPOINTS),
            token_filter=layout.token_filter_file(exp, results),
        )

    def live(self, path: Path) -> Path:
        """Where a metric file grows during training (survives a killed job; copied out at the end)."""
        return self.checkpoints / path.name


# ---------------------------------------------------------------- batch shapes and intervals


def padding_free_option(value: Any, packing: bool = False) -> dict[str, bool]:
    """``treinamento.padding_free`` as SFTConfig keyword arguments.

    ``true`` = every micro-batch flattened into one row with per-example position ids (no pad tokens);
    ``false`` = padded rows (with right padding Unsloth drops the mask during training, so attention stays
    on the fast causal kernel). ``auto``/null (default) = padded rows: on an H100 with torch 2.11 they ran
    1.5-2x faster than Unsloth's padding-free choice, which falls back to per-sequence attention there
    (docs/benchmarks.md). With packing nothing is passed: packed rows are always padding-free."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return {} if packing else {"padding_free": False}
    if isinstance(value, bool):
        return {"padding_free": value}
    raise AfinarError(f"treinamento.padding_free: {value!r} must be true, false or auto")


# Padded GPU batches are rounded up to this many tokens when ``pad_to_multiple_of`` is null: with
# length-grouped batches every step otherwise has a new shape, and the per-shape work on the host
# (kernel selection, attention plans) dominated the steps of a 1B model (docs/benchmarks.md).
GPU_PAD_MULTIPLE = 64


def pad_multiple_option(
    value: Any,
    padding: dict[str, bool],
    packing: bool,
    cuda: bool,
    max_len: int = 0,
    model_limit: int | None = None,
) -> dict[str, int]:
    """``treinamento.pad_to_multiple_of`` as SFTConfig keyword arguments.

    Padded batches: the automatic rounding (null, on a GPU) is skipped where rounding ``max_len`` up would
    pass the model's position limit. Padding-free rows are rounded only when a value is set (with
    ``tokens_por_lote`` equal to it every row has one width: one shape for compiled attention kernels)."""
    if packing:
        return {}
    if padding.get("padding_free", False):
        return {"pad_to_multiple_of": int(value)} if value is not None and int(value) > 1 else {}
    if value is None:
        rounded = -(-max_len // GPU_PAD_MULTIPLE) * GPU_PAD_MULTIPLE
        fits = model_limit is None or rounded <= model_limit
        return {"pad_to_multiple_of": GPU_PAD_MULTIPLE} if cuda and fits else {}
    return {"pad_to_multiple_of": int(value)} if int(value) > 1 else {}


def tracker_settings(value: Any) -> list[str]:
    """``treinamento.report_to`` as a list; a tracker that is not installed is one clear line (checked
    before the model loads: transformers would fail mid-setup)."""
    report_to = [value] if isinstance(value, str) else list(value or [])
    report_to = [r for r in report_to if r and r != "none"]
    for name in report_to:  # each tracker's module has the tracker's name
        if importlib.util.find_spec(name) is None:
            raise AfinarError(
                f"treinamento.report_to: {name} is not installed in this environment — "
                f"pip install {name} (wandb offline: WANDB_MODE=offline) or remove it from report_to"
            )
    return report_to


def tensorboard_callback(exp_dir: Path) -> Any:
    """TensorBoard logs in ``results/{exp}/tensorboard/`` (``tensorboard --logdir results``): outside the
    checkpoints folder that ``limpar_checkpoints`` removes; ``TENSORBOARD_LOGGING_DIR`` overrides it."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    log_dir = os.environ.get("TENSORBOARD_LOGGING_DIR") or str(exp_dir / "tensorboard")
    log.info("TensorBoard logs: %s", log_dir)
    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=log_dir))


def resolve_steps(eval_steps: Any, total_steps: int) -> int:
    """``"N%"`` of all optimizer steps (of the whole run, not of one epoch as in the original, B16) or an
    integer; 0 (or "0%") = no periodic evaluation. Parsed by the config's own reader."""
    value = parse_eval_steps(eval_steps)
    if isinstance(value, str):
        pct = float(value[:-1])
        return 0 if pct == 0 else max(1, math.floor(total_steps * pct / 100))
    return value


# ---------------------------------------------------------------- data


def read_split(path: Path, name: str) -> tuple[list[str], list[list[dict]]]:
    """Ids and ``messages`` of a split parquet, as plain lists of ``{role, content}`` dicts."""
    ids, rows = token_filter.read_split_records(path)
    log.info("%s split: %d records", name, len(rows))
    return ids, rows


def tokenize_split(
    tokenizer: Any,
    rows: list[list[dict]],
    markers: chat.ChatMarkers | None,
    max_len: int,
    filtro: dict | None,
    name: str,
) -> tuple[dict[str, list], dict[str, int]]:
    """Tokenize conversations; drop (``descartar``) or shorten the prompt of (``truncar``) long ones.

    With the filter_tokens rule's decisions already applied nothing is long any more; without them
    (``train()`` called directly) the same :mod:`afinar.train.token_filter` rules apply here. The answer is
    never cut. Conversations left with no trainable token are dropped too, and every count is reported.
    """
    limit = token_filter.effective_limit(filtro, max_len)
    acao = token_filter.action(filtro)
    out: dict[str, list] = {"input_ids": [], "labels": []}
    stats = {
        "registros": len(rows),
        "descartados_longos": 0,
        "truncados": 0,
        "sem_alvo": 0,
        "tokens": 0,
        "max_tokens": 0,
    }
    for msgs in rows:
        enc = chat.tokenize_conversation(tokenizer, msgs, markers)
        if len(enc["input_ids"]) > limit:
            fitted, _status = token_filter.fit_conversation(
                tokenizer, msgs, limit, acao, length=len(enc["input_ids"])
            )
            if fitted is None:
                stats["descartados_longos"] += 1
                continue
            stats["truncados"] += 1
            enc = chat.tokenize_conversation(tokenizer, fitted, markers)
        if all(v == -100 for v in enc["labels"]):
            stats["sem_alvo"] += 1
            continue
        out["input_ids"].append(enc["input_ids"])
        out["labels"].append(enc["labels"])
        stats["tokens"] += len(enc["input_ids"])
        stats["max_tokens"] = max(stats["max_tokens"], len(enc["input_ids"]))
    if stats["descartados_longos"] or stats["truncados"] or stats["sem_alvo"]:
        log.warning(
            "%s: %d records dropped as longer than %d tokens, %d with a shortened prompt, %d with nothing to learn",
            name,
            stats["descartados_longos"],
            limit,
            stats["truncados"],
            stats["sem_alvo"],
        )
    return out, stats


def describe_trainable(labels: Any, tokenizer: Any) -> str:
    """The shape of one example's loss mask without its text (logs never hold training text): how many
    trainable tokens in how many spans, and whether each span ends on a special token such as <|im_end|>."""
    ids = [int(t) for t in labels]
    spans: list[list[int]] = []
    previous = -100
    for token in ids:
        if token != -100:
            if previous == -100:
                spans.append([])
            spans[-1].append(token)
        previous = token
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ends = [tokenizer.convert_ids_to_tokens(span[-1]) if span[-1] in special else "(text)" for span in spans]
    count = sum(len(span) for span in spans)
    return f"{count} trainable tokens in {len(spans)} span(s), ending with {', '.join(ends) or 'nothing'}"


def check_collated_batch(trainer: Any, tokenizer: Any, masking: bool, n: int = 4) -> float:
    """Collate the first training examples exactly as training will, and refuse garbage before training.

    With response-only loss on, a batch where no token or every token is trainable means the markers
    did not match the data: training would learn nothing or learn the prompts.
    """
    ds = trainer.train_dataset
    examples = [ds[i] for i in range(min(n, len(ds)))]
    batch = trainer.data_collator(examples)
    labels = batch["labels"]
    real = labels.numel() if "attention_mask" not in batch else int(batch["attention_mask"].sum())
    trainable = int((labels != -100).sum())
    masked = 1.0 - trainable / max(real, 1)
    if trainable == 0:
        raise AfinarError(
            "treinamento.train_on_responses_only: no token of the first batch is trainable — the chat template's "
            "assistant marker does not match the data; check the template or set it to false"
        )
    if masking and trainable >= real:
        raise AfinarError(
            "treinamento.train_on_responses_only: every token of the first batch is trainable, so the prompt is "
            "not masked — check the chat template"
        )
    log.debug("first example: %s", describe_trainable(labels[0], tokenizer))
    log.info("loss on %.1f%% of tokens (%.1f%% masked)", 100 * (1 - masked), 100 * masked)
    return masked


# ---------------------------------------------------------------- the plan (pure arithmetic)


@dataclass(frozen=True)
class DataSizes:
    """What the plan needs to know about the tokenized data."""

    train_rows: int
    train_tokens: int
    eval_rows: int
    #: every training record's length: the batch plan of ``agrupar_por_tamanho``/``tokens_por_lote`` counts
    #: its own batches (batching.py); empty = count ``batch_size`` rows per batch
    train_lengths: tuple[int, ...] = ()


@dataclass(frozen=True)
class TrainPlan:
    """Everything about a run that follows from the settings, the machine and the data sizes.

    Computed by :func:`plan` without a model, so every interval and SFTConfig argument is unit-tested.
    """

    steps_per_epoch: int
    total_steps: int
    eval_every: int  # 0 = no periodic evaluation
    save: bool
    save_every: int
    load_best: bool
    patience: int | None  # early stopping, when it can work (periodic evaluations)
    sft_args: dict[str, Any]  # SFTConfig keyword arguments
    notes: tuple[str, ...] = ()  # info lines for the log


def plan(
    exp: Experiment,
    rt: Runtime,
    sizes: DataSizes,
    output_dir: str | Path,
    model_limit: int | None = None,
    world: int = 1,
) -> TrainPlan:
    """SFTConfig arguments, steps, evaluation/save intervals and padding of a run (no model, no torch).

    ``world``: training processes (treinamento.distribuido); each optimizer step then takes per-device
    batch × accumulation × world examples."""
    tr = exp.treinamento
    max_len, batch = tr.max_seq_length, tr.batch_size
    accum = distributed.grad_accumulation(tr, world)
    notes: list[str] = [
        f"effective batch: {batch} per device x {accum} accumulation x {world} process(es) = {batch * accum * world}"
    ]
    padding: dict[str, Any] = dict(padding_free_option(tr.padding_free, tr.packing))
    padding.update(
        pad_multiple_option(tr.pad_to_multiple_of, padding, tr.packing, rt.cuda, max_len, model_limit)
    )
    if batching.use_length_grouping(tr) and sizes.train_lengths:  # our batch sampler: its own count
        steps_per_epoch = batching.steps_per_epoch(
            sizes.train_lengths,
            batch,
            accum,
            tr.seed,
            tr.tokens_por_lote,
            batching.plan_pad_multiple(padding),
            world,
        )
    else:
        rows = max(1, math.ceil(sizes.train_tokens / max_len)) if tr.packing else sizes.train_rows
        steps_per_epoch = max(1, math.ceil(rows / (batch * accum * world)))
    total_steps = tr.max_steps if tr.max_steps > 0 else math.ceil(steps_per_epoch * tr.epochs)
    eval_every = resolve_steps(tr.eval_steps, total_steps) if sizes.eval_rows else 0
    do_eval = bool(eval_every)
    if sizes.eval_rows and not do_eval:
        notes.append("eval_steps is 0: no periodic evaluation (the final evaluation still runs)")
    patience = tr.paciencia if tr.paciencia and do_eval else None
    save = tr.save_checkpoints or patience is not None
    if patience and not tr.save_checkpoints:
        notes.append(
            "paciencia needs checkpoints to restore the best model: saving them although save_checkpoints is false"
        )
    save_every = eval_every or max(1, min(50, total_steps // 5 or 1))
    load_best = save and do_eval  # B10: best-model reloading only where checkpoints are saved

    # rows are already within max_len (tokenize_split); TRL refuses max_length on padding-free unpacked rows
    sft_max_length = None if padding.get("padding_free") and not tr.packing else max_len
    trackers = [r for r in tr.report_to if r and r not in ("none", "tensorboard")]
    sft_args: dict[str, Any] = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=batch,
        gradient_accumulation_steps=accum,
        num_train_epochs=float(tr.epochs),
        max_steps=tr.max_steps,
        learning_rate=tr.learning_rate,
        warmup_steps=tr.warmup_steps,
        weight_decay=tr.weight_decay,
        lr_scheduler_type=tr.lr_scheduler_type,
        optim=rt.optim,
        max_grad_norm=tr.max_grad_norm,
        bf16=rt.precision == "bf16",
        fp16=rt.precision == "fp16",
        seed=tr.seed,
        data_seed=tr.seed,
        logging_steps=1,
        eval_strategy="steps" if do_eval else "no",
        eval_steps=eval_every or None,
        save_strategy="steps" if save else "no",
        save_steps=save_every,
        save_total_limit=tr.save_total_limit,
        load_best_model_at_end=load_best,
        metric_for_best_model="eval_loss" if load_best else None,
        greater_is_better=False if load_best else None,
        report_to=trackers or "none",
        # Unsloth checkpoints its own way (use_gradient_checkpointing="unsloth" when loading)
        gradient_checkpointing=tr.gradient_checkpointing
        and rt.backend == "transformers"
        and not (world > 1 and tr.distribuido.estrategia == "fsdp"),  # FSDP: activation checkpointing
        gradient_checkpointing_kwargs={"use_reentrant": False},
        max_length=sft_max_length,
        packing=tr.packing,
        **padding,
        train_sampling_strategy="group_by_length" if tr.agrupar_por_tamanho and not tr.packing else "random",
        **batching.liger_option(tr.liger_kernel, rt.backend, rt.cuda),
        dataset_num_proc=None,
        dataloader_num_workers=0,
        use_cpu=not rt.cuda,
        disable_tqdm=True,
        **(distributed.trainer_options(tr, tr.gradient_checkpointing) if world > 1 else {}),
    )
    return TrainPlan(
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        eval_every=eval_every,
        save=save,
        save_every=save_every,
        load_best=load_best,
        patience=patience,
        sft_args=sft_args,
        notes=tuple(notes),
    )


# ---------------------------------------------------------------- models


def check_model(exp: Experiment) -> tuple[str, dict[str, Any]]:
    """The base model's local source and config, checked against the settings (before anything loads)."""
    tr = exp.treinamento
    source = models.resolve_model_source(exp.modelo.base)
    model_config = models.read_model_config(source)
    models.check_max_seq_length(tr.max_seq_length, model_config, source)
    if tr.continuar_de:
        models.resolve_model_source(tr.continuar_de, key="treinamento.continuar_de")
        models.check_adapter_matches_base(tr.continuar_de, exp.modelo.base)
    return source, model_config


def load_transformers(source: str, exp: Experiment, rt: Runtime) -> tuple[Any, Any]:
    """transformers + PEFT: base model, then a new LoRA adapter (or the one in ``continuar_de``)."""
    from transformers import set_seed

    tr, lora = exp.treinamento, exp.lora
    tokenizer = models.load_tokenizer(source)
    model = models.load_causal_lm(source, rt.dtype, tr.bits)
    if tr.bits in (4, 8):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=tr.gradient_checkpointing)
    if lora.full_finetuning:
        log.info("lora.r is 0: full fine-tuning")
        return model, tokenizer
    set_seed(tr.seed)  # the adapter's random init must not depend on what ran before
    if tr.continuar_de:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, tr.continuar_de, is_trainable=True), tokenizer
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.module_list or "all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config), tokenizer


def load_unsloth(
    source: str, exp: Experiment, rt: Runtime, offload_embedding: bool | str = False
) -> tuple[Any, Any]:
    """Unsloth: FastLanguageModel with its kernels, 4/8-bit loading and offloaded gradient checkpointing;
    ``offload_embedding``: see :func:`afinar.train.models.embedding_offload`."""
    from transformers import set_seed
    from unsloth import FastLanguageModel

    tr, lora = exp.treinamento, exp.lora
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=tr.continuar_de or source,
        max_seq_length=tr.max_seq_length,
        dtype=rt.dtype,
        load_in_4bit=tr.bits == 4,
        load_in_8bit=tr.bits == 8,
        full_finetuning=lora.full_finetuning,
        offload_embedding=offload_embedding,
    )  # offline: resolve_model_source already turned a hub id into its local snapshot folder
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # multimodal processors wrap the text tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if lora.full_finetuning or tr.continuar_de:
        if tr.continuar_de:
            FastLanguageModel.for_training(model)
        return model, tokenizer
    set_seed(tr.seed)
    model = FastLanguageModel.get_peft_model(
        model,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.module_list
        or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        bias="none",
        use_gradient_checkpointing="unsloth" if tr.gradient_checkpointing else False,
        random_state=tr.seed,
    )
    return model, tokenizer


def count_parameters(model: Any) -> dict[str, Any]:
    """Trainable and total parameters, as metrics_summary.json's ``modelo_info`` (what the report reads).

    A PEFT model counts itself: bitsandbytes packs two 4-bit weights per byte, so ``numel()`` of a
    quantized base would report half the real size (108,544 of 666,368 instead of 1,005,312).
    """
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = (int(n) for n in model.get_nb_trainable_parameters())
    else:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
    return {
        "treinaveis": trainable,
        "total": total,
        "percentual": round(100.0 * trainable / max(total, 1), 4),
    }


# ---------------------------------------------------------------- the run


def train(
    experiment: Experiment | Mapping[str, Any],
    paths: TrainPaths,
    extra_callbacks: Sequence[Any] = (),
    threads: int | None = None,
) -> dict[str, Any]:
    """Train one experiment and write its outputs; returns the summary written to ``metrics_summary.json``.

    ``experiment`` is the typed :class:`Experiment` (a mapping of sections is accepted too, and filled
    from the schema's defaults). ``threads`` caps torch's CPU threads (the rule's ``threads``): on a
    shared machine, more threads than free cores make small CPU runs 10x slower from spinning.
    """
    import torch

    if not isinstance(experiment, Experiment):  # training reads modelo, treinamento and lora only
        experiment = experiment_from_partial({k: v for k, v in experiment.items() if k != "predicao"})
    exp = experiment
    tr = exp.treinamento
    if threads:
        torch.set_num_threads(max(1, int(threads)))

    # 1. this machine's runtime, and every user error before anything heavy is loaded
    dist = distributed.check(tr)  # N processes under torchrun: see afinar.train.distributed
    world, main = distributed.world_size(), distributed.is_main()
    rt = runtime.for_training(dataclasses.replace(tr, backend=distributed.requested_backend(tr)))
    models.check_quantization(tr.bits, rt.cuda)
    source, model_config = check_model(exp)
    report_to = tracker_settings(tr.report_to)
    batching.check_options(tr, rt.backend, rt.cuda)
    offload = models.embedding_offload(
        tr.embedding_na_cpu, rt.backend, tr.bits, world, tied=models.ties_embeddings(model_config)
    )
    if rt.cuda:
        runtime.use_flash_attention_kernels()
    log.info("backend %s, precision %s, %s-bit, device %s", rt.backend, rt.precision, tr.bits, rt.device)

    # 2. data
    train_ids, train_rows = read_split(paths.train, "treino")
    if not train_rows:
        raise AfinarError(
            f"{paths.train}: the training split has zero records — check the split proportions and data"
        )
    eval_ids, eval_rows = (
        read_split(paths.validation, "validacao") if paths.validation.is_file() else ([], [])
    )
    if not eval_rows:
        log.warning(
            "%s: no validation records: training without evaluation or early stopping", paths.validation
        )

    # 3. model, tokenizer, chat template, response markers
    from transformers import set_seed

    set_seed(tr.seed)
    if rt.backend == "unsloth":
        model, tokenizer = load_unsloth(source, exp, rt, offload_embedding=offload)
    else:
        model, tokenizer = load_transformers(source, exp, rt)
    embedding_gb = models.embedding_on_cpu(model)
    if embedding_gb:
        log.info(
            "input embedding in CPU memory during training (%.2f GB less on the GPU; "
            "treinamento.embedding_na_cpu: false keeps it there)",
            embedding_gb,
        )
    template_source = chat.ensure_chat_template(tokenizer, exp.modelo.base)
    markers = chat.derive_markers(tokenizer) if tr.train_on_responses_only else None
    if markers:
        log.info(
            "response-only loss: assistant turns start after %r and end with %r",
            markers.response_prefix,
            markers.end_of_turn,
        )

    # 4. tokenized datasets (input_ids + labels: the same on both backends and TRL 1.15/1.16)
    from datasets import Dataset

    filtro = {"max_tokens": tr.filtro_tokens.max_tokens, "acao": tr.filtro_tokens.acao}
    max_len = tr.max_seq_length
    decisions = None
    if paths.token_filter is not None and paths.token_filter.is_file():
        limit, acao = token_filter.effective_limit(filtro, max_len), token_filter.action(filtro)
        decisions = token_filter.read_report(paths.token_filter, limit, acao)["splits"]
        train_rows = token_filter.apply_decision(
            tokenizer, train_ids, train_rows, decisions["treino"], limit, acao, str(paths.train)
        )
        if eval_rows:
            eval_rows = token_filter.apply_decision(
                tokenizer, eval_ids, eval_rows, decisions["validacao"], limit, acao, str(paths.validation)
            )
    train_tok, train_stats = tokenize_split(tokenizer, train_rows, markers, max_len, filtro, "treino")
    if not train_tok["input_ids"]:
        raise AfinarError(
            f"{paths.train}: no training record is left after tokenization — check max_seq_length/filtro_tokens"
        )
    eval_tok, eval_stats = tokenize_split(tokenizer, eval_rows, markers, max_len, filtro, "validacao")
    if decisions:  # the summary counts what the rule dropped/truncated, as when filtering here
        for stats, name in ((train_stats, "treino"), (eval_stats, "validacao")):
            stats["registros"] = decisions[name]["total"]
            stats["descartados_longos"] += len(decisions[name]["descartados"])
            stats["truncados"] += len(decisions[name]["truncados"])
    train_ds = Dataset.from_dict(train_tok)
    eval_ds = Dataset.from_dict(eval_tok) if eval_tok["input_ids"] else None

    # 5. the plan: steps, intervals, padding, SFTConfig arguments
    lengths = tuple(len(ids) for ids in train_tok["input_ids"])
    sizes = DataSizes(
        len(train_ds), train_stats["tokens"], len(eval_ds) if eval_ds is not None else 0, lengths
    )
    the_plan = plan(exp, rt, sizes, paths.checkpoints, models.model_max_length(model_config), world)
    for note in the_plan.notes:
        log.info("%s", note)
    if rt.cuda and tr.gradient_checkpointing and main:
        free_bytes, _ = torch.cuda.mem_get_info()
        step = memory_hint.largest_step_tokens(lengths, tr.batch_size, max_len, tr.tokens_por_lote)
        hint = memory_hint.checkpointing_hint(model_config, step, free_bytes)
        if hint:
            log.info("%s", hint)

    # 6. trainer, resuming only a run with the same settings and data
    from trl import SFTConfig, SFTTrainer

    callbacks: list[Any] = list(extra_callbacks)
    if "tensorboard" in report_to and main:
        callbacks.append(tensorboard_callback(paths.adapter.parent))
    if the_plan.patience:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=the_plan.patience))
    sections = exp.sections()
    fingerprint = checkpoints.run_fingerprint(
        {
            "modelo": sections["modelo"],
            # how often checkpoints are written does not change what they hold; DDP's not the GPU count either
            "treinamento": distributed.fingerprint_view(
                {k: v for k, v in sections["treinamento"].items() if k not in PLACEMENT_ONLY}
            ),
            "lora": sections["lora"],
            "backend": rt.backend,
        },
        [p for p in (paths.train, paths.validation, paths.token_filter) if p is not None and p.is_file()],
    )
    resume = None
    if main:  # one process decides (and may clear the folder); the others take its answer
        resume = checkpoints.prepare_folder(paths.checkpoints, fingerprint, tr.resume_from_checkpoint)
    resume = distributed.broadcast(resume)
    if resume:
        log.info("resuming from %s (step %d)", resume, checkpoints.checkpoint_step(resume))

    from afinar.monitor import BackgroundSampler
    from afinar.train.callbacks import MetricsCallback
    from afinar.train.resume import SafeCheckpoints, slurm_end_time, use_epoch_seeded_sampler

    # checkpoints every checkpoint_minutos, on SIGTERM/SIGUSR1/SIGINT and before a SLURM job's end
    save = the_plan.save
    safe = SafeCheckpoints(
        tr.checkpoint_minutos if save else None, on_signal=save, end_time=slurm_end_time() if save else None
    )

    shared: dict[str, Any] = {"step": 0, "epoch": 0.0, "fase": "train_begin"}
    sampler = BackgroundSampler(
        distributed.node_file(paths.live(paths.hardware_metrics)),
        interval_s=5.0,
        extra=lambda: dict(shared),
        append=True,
        device_level=world > 1,  # every GPU of the node, not this process's one
    )
    metrics_cb = MetricsCallback(
        paths.live(paths.metrics_stream), paths.live(paths.training_metrics), shared, sampler
    )
    args = SFTConfig(**the_plan.sft_args)
    distributed.fix_cpu_device(args)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        # manifest first: see its doc; metric files: rank 0 only; every rank takes the same save/stop
        # decision (signals and clocks differ between processes)
        callbacks=[
            checkpoints.manifest_callback(),
            *([metrics_cb] if main else []),
            safe,
            *distributed.sync_callbacks(),
            *callbacks,
        ],
    )
    distributed.check_strategy_applied(trainer, tr)
    use_epoch_seeded_sampler(trainer, tr.seed)  # exact resume from any epoch
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # raw dicts on stdout; MetricsCallback logs progress instead
    if batching.use_length_grouping(tr):
        batching.install(trainer, lengths, tr.tokens_por_lote, batching.plan_pad_multiple(the_plan.sft_args))
    masked = check_collated_batch(trainer, tokenizer, tr.train_on_responses_only)
    params = count_parameters(trainer.model)
    log.info(
        "trainable parameters: %s of %s (%.4f%%)",
        f"{params['treinaveis']:,}",
        f"{params['total']:,}",
        params["percentual"],
    )

    # 7. train, evaluate, save
    hardware = sampler if distributed.samples_hardware() else contextlib.nullcontext()  # a sampler per node
    with hardware, safe, checkpoints.unfinished_removed_on_error(paths.checkpoints):
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        final_eval = trainer.evaluate() if eval_ds is not None else {}
    save_model(trainer, tokenizer, paths.adapter)
    if not main:
        return {}

    summary = {
        **result.metrics,
        "global_step": result.global_step,
        "training_loss": result.training_loss,
        "final_eval": final_eval,  # B11: the final evaluation is written, not dropped
        "best_eval_loss": metrics_cb.best_eval,
        "retomado_de": str(resume) if resume else None,
        "backend": rt.backend,
        "precisao": rt.precision,
        "nbits": tr.nbits,
        "modelo_base": exp.modelo.base,
        "continuar_de": tr.continuar_de or None,
        "template": template_source,
        "marcadores": markers.__dict__ if markers else None,
        "fracao_mascarada": round(masked, 4),
        "embedding_na_cpu_gb": round(embedding_gb, 3),
        "ds_train_len": len(train_ds),
        "ds_eval_len": len(eval_ds) if eval_ds is not None else 0,
        "tokens_treino": train_stats,
        "tokens_validacao": eval_stats,
        "modelo_info": params,
        "distribuido": {
            "processos": world,
            "estrategia": dist.estrategia if world > 1 else None,
            "batch_por_dispositivo": tr.batch_size,
            "acumulacao": the_plan.sft_args["gradient_accumulation_steps"],
            "batch_efetivo": tr.batch_size * the_plan.sft_args["gradient_accumulation_steps"] * world,
        },
        "pico_hardware": sampler.peaks,
    }
    publish_metrics(paths)
    atomic_write_json(paths.metrics_summary, summary)
    checkpoints.mark_finished(paths.checkpoints)
    if tr.limpar_checkpoints:
        checkpoints.clear(paths.checkpoints)
        log.info("limpar_checkpoints: removed %s", paths.checkpoints)
    return summary


def save_model(trainer: Any, tokenizer: Any, out: Path) -> None:
    """Save the adapter (or full model) + tokenizer under a temporary name, then rename into place."""
    if distributed.world_size() > 1:
        distributed.save_model(trainer, tokenizer, out)
        return
    with atomic_dir(out) as tmp:
        trainer.model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    log.info("saved %s", out)


def publish_metrics(paths: TrainPaths) -> None:
    """Copy the live (appended, resume-proof) metric files to their declared output paths atomically."""
    distributed.merge_node_files(paths.live(paths.hardware_metrics))  # other nodes' samplers (SLURM)
    for final in (paths.metrics_stream, paths.training_metrics, paths.hardware_metrics):
        live = paths.live(final)
        with atomic_path(final) as tmp:
            if live.is_file():
                shutil.copyfile(live, tmp)
            else:
                tmp.write_text("", encoding="utf-8")
