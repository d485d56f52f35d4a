"""One training on several GPUs or nodes, on torch.distributed (torchrun + DDP or FSDP2), never our own engine.

``treinamento.distribuido: {gpus: N, nos: M, estrategia: ddp|fsdp}`` asks for N training processes per
node (one per GPU; on a machine or job without a GPU they run on the CPU with the gloo backend) on M nodes.
The train rule's script (the *launcher*, :func:`launch`) then starts:

* ``N × M == 1``: nothing new — the training runs in the rule's own process, exactly as before;
* one node: ``python -m torch.distributed.run --standalone --nproc-per-node N`` (that is ``torchrun``) with
  this module as the program of every process (the *workers*, :func:`worker_main`);
* a SLURM allocation of M nodes (or any distributed job under the slurm executor): ``srun`` runs one
  ``torchrun`` per node, which meet through a c10d rendezvous on the first node.

The HF Trainer does the rest (it sees ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``): DDP wrapping or FSDP2 through
accelerate, sharded data loading, gradient all-reduce, rank-0 checkpoint files. This module adds what a
workflow needs around it: config checks for impossible combinations, the rule's SLURM geometry, the rank
helpers the training code uses to write each file once, one error line from whichever rank failed, and
no process left behind when one of them dies (``PR_SET_PDEATHSIG`` down the launcher → torchrun → worker
chain; torchrun itself stops the other workers when one fails).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afinar.errors import AfinarError
from afinar.train.dist_config import (
    STRATEGIES,
    DistSettings,
    check,
    config_problems,
    fingerprint_view,
    grad_accumulation,
    requested_backend,
    section,
    settings,
    slurm_resources,
)

# re-exported: the training code reads the settings helpers from this module too
__all__ = [
    "STRATEGIES",
    "DistSettings",
    "check",
    "config_problems",
    "fingerprint_view",
    "grad_accumulation",
    "requested_backend",
    "section",
    "settings",
    "slurm_resources",
]

log = logging.getLogger("afinar.train.distributed")

SPEC_ENV = "AFINAR_TRAIN_SPEC"
#: SLURM variables our srun may see: the allocation's identity only. The batch step's task/CPU/GPU
#: settings (SLURM_NTASKS, SLURM_CPUS_PER_GPU, ...) would otherwise be read by srun as its own options
#: and clash with the explicit geometry below (the SLURM jobstep plugin strips them the same way).
SLURM_KEEP = {"SLURM_JOB_ID", "SLURM_JOBID", "SLURM_CLUSTER_NAME", "SLURM_SUBMIT_DIR", "SLURM_SUBMIT_HOST"}


# --------------------------------------------------------------------------------- rank helpers


def world_size() -> int:
    """Processes of this training (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True in the one process that writes the run's files (rank 0; also a non-distributed run)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op outside a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (no-op outside a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def samples_hardware() -> bool:
    """One hardware sampler per node (local rank 0): it records every GPU of its node."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def node_file(path: Path) -> Path:
    """Where this node's sampler writes: ``path`` on the first node, ``<stem>.no<k><suffix>`` on node k."""
    node = int(os.environ.get("GROUP_RANK", "0"))
    return path if node == 0 else path.with_name(f"{path.stem}.no{node}{path.suffix}")


def merge_node_files(path: Path) -> None:
    """Fold the other nodes' hardware samples into ``path``, in time order (rank 0, at the end)."""
    others = sorted(path.parent.glob(f"{path.stem}.no*{path.suffix}"))
    if not others:
        return
    rows = []
    for f in [path, *others]:
        if f.is_file():
            rows += [ln for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
    rows.sort(key=lambda ln: json.loads(ln).get("timestamp", 0))
    path.write_text("".join(ln + "\n" for ln in rows), encoding="utf-8")
    for f in others:
        f.unlink()


def save_model(trainer: Any, tokenizer: Any, out: Path) -> None:
    """Save the adapter once, from a distributed run: every rank takes part (FSDP gathers the shards
    into a full state dict), rank 0 alone writes, under a temporary name, then renames into place."""
    tmp = out.parent / f".{out.name}.distribuido"
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
    barrier()
    trainer.save_model(str(tmp))  # writes on the main process only (Trainer.args.should_save)
    if is_main():
        tokenizer.save_pretrained(str(tmp))
        for stray in ("training_args.bin",):  # Trainer's own extra; not part of an adapter folder
            (tmp / stray).unlink(missing_ok=True)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        log.info("saved %s", out)
    barrier()


def trainer_options(tr: Any, gradient_checkpointing: bool) -> dict[str, Any]:
    """SFTConfig keyword arguments of the strategy: FSDP2 through accelerate, or nothing (DDP is the
    Trainer's default under torchrun). Under FSDP activation checkpointing replaces gradient
    checkpointing (which would all-gather the weights twice in the backward pass; the training code
    turns the latter off). Checkpoints and the
    final adapter are full state dicts, so the adapter loads with plain PEFT."""
    tr = section(tr)
    d = settings(tr)
    if not d.distributed:
        return {}
    opts: dict[str, Any] = {"ddp_find_unused_parameters": False}
    if d.estrategia == "fsdp":
        opts = {
            "fsdp": True,
            "fsdp_config": {
                "version": 2,
                "reshard_after_forward": True,
                "activation_checkpointing": gradient_checkpointing,
                "state_dict_type": "FULL_STATE_DICT",
                "cpu_ram_efficient_loading": False,
            },
        }
    return opts


def check_strategy_applied(trainer: Any, tr: Any) -> None:
    """Refuse an FSDP run that would silently be DDP: accelerate enables its FSDP plugin only for GPU
    (and other accelerator) process groups, never for CPU ones."""
    tr = section(tr)
    d = settings(tr)
    if d.distributed and d.estrategia == "fsdp" and not getattr(trainer, "is_fsdp_enabled", False):
        raise AfinarError(
            "treinamento.distribuido.estrategia: fsdp shards only across GPUs, and these training processes run "
            "on the CPU — use estrategia: ddp here, or run on GPUs"
        )


def sync_callbacks() -> list[Any]:
    """In a distributed run, a callback that makes every rank take the same save/stop decision.

    A checkpoint is a collective step (FSDP gathers weights; the Trainer all-reduces its FLOP count), so
    a save or stop decided by one rank only (its SIGTERM arrived a step earlier, its clock passed
    ``checkpoint_minutos`` first) would hang the others. At each step end the flags are OR-ed across
    ranks (one tiny all-reduce). Empty outside a process group."""
    import torch.distributed as dist
    from transformers import TrainerCallback

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return []

    class SyncControl(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            import torch

            device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
            flags = torch.tensor(
                [float(control.should_save), float(control.should_training_stop)], device=device
            )
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            control.should_save, control.should_training_stop = bool(flags[0].item()), bool(flags[1].item())
            return control

    return [SyncControl()]


def fix_cpu_device(args: Any) -> None:
    """CPU processes under torchrun: the Trainer's device becomes plain ``cpu``.

    accelerate names the device of CPU rank k ``cpu:k``, and transformers 5.17 then resumes a checkpoint
    with ``torch.load(map_location=torch.device("cpu", k))``, which torch refuses ("don't know how to
    restore data location ... cpu:0"): a CPU run could never resume. GPU runs are untouched."""
    device = args.device
    if world_size() > 1 and device.type == "cpu" and device.index is not None:
        import torch

        args.__dict__["_setup_devices"] = torch.device("cpu")  # TrainingArguments.device's cached value


# ------------------------------------------------------------------------------------ launcher


@dataclass(frozen=True)
class Launch:
    """How the rule's process starts the training: ``mode`` in-process | torchrun | srun."""

    mode: str
    command: list[str]
    env: dict[str, str]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def in_slurm_allocation(env: Mapping[str, str] | None = None) -> bool:
    values: Mapping[str, str] = os.environ if env is None else env
    return bool(values.get("SLURM_JOB_ID")) and shutil.which("srun") is not None


def plan_launch(
    d: DistSettings, on_gpu: bool, threads: int, env: dict[str, str] | None = None, port: int | None = None
) -> Launch:
    """The command that starts ``d.world_size`` training processes (pure: no process is started).

    Inside a SLURM job (any distributed one, so that a cluster and a workstation run the same rule)
    ``srun`` starts one torchrun per node with a c10d rendezvous on this (the first) node; elsewhere a
    standalone torchrun (a free local port, so that two jobs on one machine never meet)."""
    env = dict(os.environ if env is None else env)
    if not d.distributed:
        return Launch("in-process", [], env)
    per_proc = d.threads_per_process(threads)
    env.setdefault("OMP_NUM_THREADS", str(per_proc))
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")) if p
    )
    program = ["-m", "afinar.train.distributed"]
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={d.gpus}",
        "--max-restarts=0",
    ]
    if in_slurm_allocation(env):
        nodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
        if nodes < d.nos:
            raise AfinarError(
                f"treinamento.distribuido.nos: {d.nos} but this SLURM job has {nodes} node(s) — the train rule "
                "asks for nodes=nos; check that the profile's set-resources do not override nodes"
            )
        host = socket.gethostname()
        port = port or free_port()
        srun_env = {k: v for k, v in env.items() if not k.startswith(("SRUN_", "SBATCH_"))}
        srun_env = {k: v for k, v in srun_env.items() if not k.startswith("SLURM_") or k in SLURM_KEEP}
        cpus = int(env.get("SLURM_CPUS_ON_NODE") or threads)
        srun = ["srun", f"--nodes={d.nos}", f"--ntasks={d.nos}", "--ntasks-per-node=1"]
        srun += [f"--cpus-per-task={cpus}", "--kill-on-bad-exit=1", "--export=ALL"]
        if on_gpu:
            srun.append(f"--gpus-per-node={d.gpus}")
        rdzv = [
            f"--nnodes={d.nos}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={host}:{port}",
            f"--rdzv-id=afinar-{env.get('SLURM_JOB_ID')}",
        ]
        return Launch("srun", [*srun, *torchrun, *rdzv, *program], srun_env)
    if d.nos > 1:
        raise AfinarError(
            f"treinamento.distribuido.nos: {d.nos} nodes need a SLURM job (snakemake --profile profiles/slurm) — "
            "set nos: 1 to train on this machine's GPUs"
        )
    return Launch("torchrun", [*torchrun, "--standalone", *program], env)


def _parent_death_signal() -> None:
    """Linux: this process gets SIGKILL when its parent dies, however the parent dies (even kill -9).

    Runs in each child before exec (launcher → torchrun) and first thing in each worker
    (torchrun → worker), so no training process outlives a killed job."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


_ROOT_CAUSE = re.compile(r"rank\s*:\s*(\d+)|exitcode\s*:\s*(-?\d+)")


def _root_cause(output_tail: list[str]) -> tuple[int | None, int | None]:
    """(rank, exit code) of torchrun's "Root Cause (first observed failure)" block, when it printed one."""
    failed_rank, code = None, None
    for line in output_tail:
        for m in _ROOT_CAUSE.finditer(line):
            if m.group(1) is not None and failed_rank is None:
                failed_rank = int(m.group(1))
            if m.group(2) is not None and code is None:
                code = int(m.group(2))
    return failed_rank, code


def failure_line(run_dir: Path, output_tail: list[str], returncode: int) -> str:
    """The one error line of a failed distributed training, from whichever rank failed.

    A worker that failed knowingly left ``rank<k>.err``: a user error (its own one line) wins. Next,
    torchrun's root cause (the first failure it observed): a rank killed by a signal leaves no file, and
    the others' errors are then only the consequence (a peer vanished from a collective). Last, the
    earliest error file."""
    errors = sorted(run_dir.glob("rank*.err"), key=lambda p: p.stat().st_mtime)
    texts = {p.stem: p.read_text(encoding="utf-8").strip() for p in errors}
    for text in texts.values():
        if text.startswith("user:"):
            return text.removeprefix("user:").strip()
    failed_rank, code = _root_cause(output_tail)
    if failed_rank is not None and f"rank{failed_rank}" in texts:
        text = texts[f"rank{failed_rank}"].removeprefix("bug:").strip()
        return f"distributed training: rank {failed_rank} failed: {text} (traceback in the log)"
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        what = f"was killed by {name}" + (" (out of memory, or killed by hand?)" if name == "SIGKILL" else "")
    elif texts:
        first = next(iter(texts))
        text = texts[first].removeprefix("bug:").strip()
        return f"distributed training: {first.replace('rank', 'rank ')} failed: {text} (traceback in the log)"
    else:
        what = f"exited with code {code if code is not None else returncode}"
    who = f"rank {failed_rank}" if failed_rank is not None else "a training process"
    return (
        f"distributed training: {who} {what}; torchrun stopped the others — run snakemake again to resume "
        "from the last checkpoint"
    )


def launch(spec: dict[str, Any], d: DistSettings, on_gpu: bool, threads: int, run_parent: Path) -> None:
    """Start the training processes, stream their output, and turn a failure into one AfinarError line.

    ``spec`` (JSON) tells each worker what to train: the experiment's sections, paths, threads, log file
    and level. It travels in a file of a run folder under the experiment's folder (shared by every node
    of a SLURM job), where failed workers also leave their error line; the folder goes at the end."""
    if d.estrategia == "fsdp" and not on_gpu:
        raise AfinarError(
            "treinamento.distribuido.estrategia: fsdp shards only across GPUs and this job has none — use "
            "estrategia: ddp for CPU processes, or give the job GPUs"
        )
    plan = plan_launch(d, on_gpu, threads)
    run_parent.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=".distribuido-", dir=run_parent))
    try:
        (run_dir / "spec.json").write_text(json.dumps({**spec, "run_dir": str(run_dir)}), encoding="utf-8")
        env = {**plan.env, SPEC_ENV: str(run_dir / "spec.json")}
        log.info(
            "distributed training: %d process(es) × %d node(s), %s, %s, via %s",
            d.gpus,
            d.nos,
            d.estrategia,
            "GPU (nccl)" if on_gpu else "CPU (gloo)",
            plan.mode,
        )
        log.info("command: %s", shlex.join(plan.command))
        tail: deque[str] = deque(maxlen=200)
        proc = subprocess.Popen(
            plan.command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            preexec_fn=_parent_death_signal,  # noqa: PLW1509 (prctl only; no locks are taken there)
        )

        def forward(signum: int, _frame: Any) -> None:  # snakemake cancels with SIGTERM/SIGINT
            proc.send_signal(signal.SIGTERM)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stderr.write(line)
                tail.append(line.rstrip("\n"))
            returncode = proc.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if returncode != 0:
            for line in list(tail)[-40:]:
                log.debug("torchrun: %s", line)
            raise AfinarError(failure_line(run_dir, list(tail), returncode))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


# -------------------------------------------------------------------------------------- worker


def setup_worker_logging(level: str, logfile: str | None) -> None:
    """Every rank logs to the rule's log file, tagged with its rank; ranks other than 0 only warnings
    and errors (rank 0 tells the story once)."""
    from afinar.logs import setup_logging

    logger = setup_logging(level if is_main() else "WARNING", logfile)
    tag = f"[rank {rank()}/{world_size()}] "
    for handler in logger.handlers:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s", "%H:%M:%S")
        )


def init_process_group() -> str:
    """Join the job's process group: nccl on GPUs (one per local rank), gloo on CPUs."""
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return backend


def worker_main() -> int:
    """One training process started by torchrun: read the spec, train, report a failure in one line."""
    _parent_death_signal()
    spec_path = Path(os.environ[SPEC_ENV])
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    run_dir = Path(spec["run_dir"])
    setup_worker_logging(spec.get("log_level", "INFO"), spec.get("log"))
    err = run_dir / f"rank{rank()}.err"
    try:
        from afinar.train.training import TrainPaths, train

        backend = init_process_group()
        log.info("process group: %d processes, backend %s", world_size(), backend)
        paths = TrainPaths(**{k: Path(v) if v else None for k, v in spec["paths"].items()})  # type: ignore[arg-type]
        train(spec["exp"], paths, threads=spec.get("threads_per_process"))
    except AfinarError as exc:
        log.error("afinar: error: %s", exc)
        err.write_text(f"user: {exc}\n", encoding="utf-8")
        return 1
    except BaseException as exc:  # a bug or a peer's failure: the traceback goes to the log
        log.exception("training failed")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        err.write_text(f"bug: {type(exc).__name__}: {first[:300]}\n", encoding="utf-8")
        return 1
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
