"""Rule `train`: split parquets → results/{exp}/adapter/ + metric files (see afinar.train.training).

With ``treinamento.distribuido`` asking for more than one process, this script is the launcher: it claims
the job's GPUs and starts the training processes under torchrun (or srun + torchrun on SLURM); see
afinar.train.distributed.
"""

import logging
import os
from dataclasses import asdict
from pathlib import Path

from afinar.errors import AfinarError, log_level_from_config, run_rule


def main(smk) -> None:
    from afinar.train.attempts import keep_attempts

    # every attempt (retries, requeues, resubmits) stays in the rule log, each under its own header
    with keep_attempts(smk.log[0] if len(smk.log) else None):
        run(smk)


def run(smk) -> None:
    from afinar.config.settings import Experiment
    from afinar.runtime import wants_gpu
    from afinar.train import distributed

    p = smk.params
    # checkpoint_minutos travels as a resource (it must never rerun train): back into its section here
    treinamento = {**p.treinamento, "checkpoint_minutos": int(getattr(smk.resources, "checkpoint_s", 0)) / 60}
    experiment = Experiment.from_sections(
        smk.wildcards.exp, {"modelo": p.modelo, "treinamento": treinamento, "lora": p.lora}
    )
    backend = experiment.treinamento.backend
    dist = distributed.check(experiment.treinamento)  # impossible combinations: one line, nothing started
    # Snakemake scales a job's gpu request down to --resources gpu=N; with N=0 the job gets no GPU.
    gpu_resource = int(getattr(smk.resources, "gpu", 1) or 0)
    if gpu_resource == 0 and wants_gpu(backend):
        if backend == "unsloth":
            raise AfinarError(
                "treinamento.backend: unsloth needs a GPU but snakemake ran this job with --resources gpu=0 — "
                "give it a GPU (--resources gpu=1) or set backend: transformers"
            )
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # auto with gpu=0: train on the CPU, as asked
    if dist.distributed and 0 < gpu_resource < dist.gpus and not os.environ.get("SLURM_JOB_ID"):
        raise AfinarError(
            f"treinamento.distribuido.gpus: {dist.gpus} but snakemake gave this job {gpu_resource} GPU(s) — run "
            f"with --resources gpu={dist.gpus} (or more), or lower distribuido.gpus"
        )
    # Before torch is imported: CUDA reads CUDA_VISIBLE_DEVICES and the allocator settings only once.
    from afinar.gpu_slots import claim_gpus
    from afinar.runtime import set_training_allocator

    allocator = set_training_allocator()

    slot = claim_gpus(dist.gpus, timeout_s=600)
    # Which GPUs this job sees (set by the slot above, the user, or SLURM's --gpus): one line in the log.
    logging.getLogger("afinar.train").info(
        "CUDA_VISIBLE_DEVICES=%s; CUDA allocator %s",
        os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"),
        allocator,
    )
    from afinar.train.training import TrainPaths, train

    out = smk.output
    paths = TrainPaths(
        train=Path(smk.input.treino),
        validation=Path(smk.input.validacao),
        adapter=Path(out.adapter),
        metrics_summary=Path(out.summary),
        metrics_stream=Path(out.stream),
        training_metrics=Path(out.training_metrics),
        hardware_metrics=Path(out.hardware_metrics),
        checkpoints=Path(smk.params.checkpoints),
        token_filter=Path(smk.input.filtro_tokens) if smk.input.get("filtro_tokens") else None,
    )
    with slot:
        if not dist.distributed:
            train(experiment, paths, threads=smk.threads)
            return
        sections = experiment.sections()
        spec = {
            "exp": {k: sections[k] for k in ("modelo", "treinamento", "lora")},
            "paths": {k: str(v) if v is not None else None for k, v in asdict(paths).items()},
            "threads_per_process": dist.threads_per_process(smk.threads),
            "log": str(smk.log[0]) if len(smk.log) else None,
            "log_level": log_level_from_config(getattr(smk, "config", {}) or {}),
        }
        distributed.launch(spec, dist, bool(slot.gpus), smk.threads, paths.adapter.parent)


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
