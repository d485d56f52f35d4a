"""``treinamento.distribuido`` as settings: the checks, the accumulation, the SLURM geometry (no torch).

Kept apart from afinar.train.distributed (which starts processes and imports torch) so that the config
checks and rules/common.smk read it with the standard library only. docs/training.md explains the keys.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from afinar.errors import AfinarError

log = logging.getLogger("afinar.train.distributed")

STRATEGIES = ("ddp", "fsdp")
# ---------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class DistSettings:
    """``treinamento.distribuido`` (defaults from config/schema.yaml: one process, ddp)."""

    gpus: int = 1
    nos: int = 1
    estrategia: str = "ddp"
    batch_global: int | None = None

    @property
    def world_size(self) -> int:
        return self.gpus * self.nos

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def threads_per_process(self, threads: int) -> int:
        """A node's ``threads`` shared among its training processes (at least one each)."""
        return max(1, threads // self.gpus)


def section(tr: Any) -> dict:
    """A ``treinamento`` section as a plain dict: the typed settings (afinar.config.settings) or a mapping."""
    if dataclasses.is_dataclass(tr) and not isinstance(tr, type):
        return dataclasses.asdict(tr)
    return dict(tr)


def settings(tr: Any) -> DistSettings:
    """The distributed settings of a ``treinamento`` section (absent = one process, as before)."""
    d = section(tr).get("distribuido") or {}
    return DistSettings(
        gpus=int(d.get("gpus", 1)),
        nos=int(d.get("nos", 1)),
        estrategia=str(d.get("estrategia", "ddp")).lower(),
        batch_global=int(d["batch_global"]) if d.get("batch_global") else None,
    )


def config_problems(tr: Any) -> list[str]:
    """Combinations the schema cannot refuse, one line each (naming the key and the alternative)."""
    tr = section(tr)
    d, found = settings(tr), []
    if d.estrategia not in STRATEGIES:
        found.append(f"treinamento.distribuido.estrategia: {d.estrategia!r} is not one of ddp, fsdp")
        return found
    nbits = int(tr.get("nbits") or 0)
    if d.estrategia == "fsdp":
        if nbits in (4, 8):
            found.append(
                f"treinamento.distribuido.estrategia: fsdp cannot shard a {nbits}-bit model here — set nbits: 0 "
                "(bf16 weights, sharded across the GPUs) or estrategia: ddp"
            )
        if tr.get("backend") == "unsloth":
            found.append(
                "treinamento.distribuido.estrategia: fsdp is not supported by the unsloth backend — set "
                "backend: transformers (or auto) or estrategia: ddp"
            )
        if d.world_size == 1:
            found.append(
                "treinamento.distribuido.estrategia: fsdp with one GPU shards nothing — set distribuido.gpus "
                "to 2 or more, or estrategia: ddp"
            )
    if d.batch_global is not None:
        per_step = int(tr.get("batch_size") or 1) * d.world_size
        if d.batch_global % per_step:
            found.append(
                f"treinamento.distribuido.batch_global: {d.batch_global} is not a multiple of batch_size × gpus × "
                f"nos = {per_step} — choose a multiple of {per_step} or change batch_size"
            )
    return found


def check(tr: Any) -> DistSettings:
    """:func:`settings`, refusing the first impossible combination with its one line."""
    problems = config_problems(tr)
    if problems:
        raise AfinarError(problems[0])
    return settings(tr)


def requested_backend(tr: Any) -> str:
    """``backend: auto`` picks transformers under FSDP (Unsloth does not shard); else the config's value."""
    tr = section(tr)
    backend = str(tr.get("backend") or "auto")
    if backend == "auto" and settings(tr).estrategia == "fsdp" and settings(tr).distributed:
        log.info("estrategia fsdp: backend auto uses transformers (Unsloth does not support FSDP)")
        return "transformers"
    return backend


def grad_accumulation(tr: Any, world: int | None = None) -> int:
    """Gradient accumulation steps: ``grad_batch_size``, or what ``batch_global`` leaves for it."""
    tr = section(tr)
    d = settings(tr)
    if d.batch_global is None:
        return int(tr["grad_batch_size"])
    world = d.world_size if world is None else world
    return max(1, d.batch_global // (int(tr["batch_size"]) * world))


def fingerprint_view(tr: Any) -> dict:
    """The ``treinamento`` section as the checkpoint fingerprint sees it.

    DDP checkpoints hold whole (unsharded) weights and optimizer state, so they resume with another
    number of GPUs: gpus/nos leave the fingerprint. FSDP's stay in (its checkpoints follow the sharding)."""
    data = section(tr)
    if settings(data).estrategia != "ddp" or "distribuido" not in data:
        return data
    return {**data, "distribuido": {k: v for k, v in data["distribuido"].items() if k not in ("gpus", "nos")}}


# ------------------------------------------------------------------------------- SLURM geometry


def slurm_resources(tr: Any) -> dict[str, Any]:
    """Resources of the train rule that the SLURM executor plugin turns into sbatch options.

    Empty for one process (the job is submitted as before). For a distributed job the rule runs its own
    ``srun`` (``mpi``) and asks for one SLURM task per training process, so that SLURM reserves (and
    squeue/sacct record) the job's real size: ``--ntasks=N`` on one node; on M nodes ``--nodes=M`` with
    ``--ntasks-per-node=N`` (``--ntasks=M`` when N is 1: the plugin refuses tasks_per_node 1 for mpi jobs).
    ``tasks_per_gpu: 0`` keeps the plugin from turning ``tasks`` into ``--ntasks-per-gpu``, which would
    bind each task to one GPU and hide the others from the per-node torchrun."""
    d = settings(tr)
    if not d.distributed:
        return {}
    res: dict[str, Any] = {"mpi": "srun", "nodes": d.nos, "tasks_per_gpu": 0}
    if d.nos == 1:
        res["tasks"] = d.gpus
    elif d.gpus > 1:
        res["tasks_per_node"] = d.gpus
    else:
        res["tasks"] = d.nos
    return res
