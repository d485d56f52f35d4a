"""Data-parallel speed-up of one training: 1 GPU (the usual in-process path) vs N GPUs under torchrun (DDP).

Same ~1.1B Llama-shaped model and 1,600 chats as tests/benchmarks/bench_train_gpu.py (its ``prepare`` and
``ours_config``), same per-device batch, the same number of optimizer steps: N GPUs then process N times as
many samples per step. Each run goes through Afinar's own launcher (``afinar.train.distributed.launch``,
what the train rule runs); the one-GPU run is ``train()`` in a child process, as the rule runs it. Figures
come from each run's ``metrics_summary.json``: ``train_samples_per_second`` (global samples over the
training loop's wall time; model loading excluded), the speed-up against the 1-GPU run of the same
invocation, and the scaling efficiency (speed-up / N). Printed with the GPU name and the date.

    export PYTHONPATH=/tmp/site:$PWD/scripts HF_HUB_OFFLINE=1
    python tests/benchmarks/bench_distributed_gpu.py --gpus 1,2 --out $OUT/dist.json          # DDP, Unsloth
    python tests/benchmarks/bench_distributed_gpu.py --gpus 1,2 --backend transformers        # DDP, plain HF
    python tests/benchmarks/bench_distributed_gpu.py --gpus 2 --strategy fsdp --backend transformers
    .venv/bin/python tests/benchmarks/bench_distributed_gpu.py --cpu-smoke                     # plumbing, CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))

import bench_train_gpu as bench  # noqa: E402


def experiment(prep: dict, args, gpus: int) -> dict:
    exp = bench.ours_config(prep, {"nbits": 0}, args.steps, args.batch, args.cpu_smoke)
    tr = exp["treinamento"]
    tr["backend"] = "transformers" if args.cpu_smoke else args.backend
    tr["distribuido"] = {"gpus": gpus, "nos": 1, "estrategia": args.strategy, "batch_global": None}
    if tr["backend"] == "transformers" and not args.cpu_smoke:
        tr["optim"] = "adamw_torch"
    return exp


def run(prep: dict, args, gpus: int) -> dict:
    """One training with ``gpus`` processes; its summary plus the wall time of the whole run."""
    from afinar.train import distributed
    from afinar.train.training import TrainPaths

    work = Path(args.workdir) / f"run-{args.strategy}-{gpus}"
    paths = TrainPaths.for_experiment(work, "bench")
    paths.train.parent.mkdir(parents=True, exist_ok=True)
    for name in ("treino", "validacao"):
        target = paths.train.parent / f"{name}.parquet"
        target.unlink(missing_ok=True)
        os.symlink(Path(prep["data"]) / f"{name}.parquet", target)
    exp = experiment(prep, args, gpus)
    spec = {
        "exp": exp,
        "paths": {k: str(v) if v is not None else None for k, v in asdict(paths).items()},
        "threads_per_process": 2,
        "log": str(work / "train.log"),
        "log_level": "INFO",
    }
    env = dict(os.environ)
    if args.cpu_smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(gpus))
    started = time.perf_counter()
    if gpus == 1:  # the rule's in-process path, in a child so that each run starts clean
        code = (
            "import json, sys; from pathlib import Path\n"
            "from afinar.train.training import TrainPaths, train\n"
            "spec = json.loads(Path(sys.argv[1]).read_text())\n"
            "p = TrainPaths(**{k: Path(v) if v else None for k, v in spec['paths'].items()})\n"
            "train(spec['exp'], p, threads=2)\n"
        )
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "scripts"), env.get("PYTHONPATH", "")])
        spec_file = work / "spec.json"
        spec_file.write_text(json.dumps(spec))
        subprocess.run([sys.executable, "-c", code, str(spec_file)], env=env, check=True)
    else:
        os.environ.update(env)
        d = distributed.settings(exp["treinamento"])
        distributed.launch(spec, d, on_gpu=not args.cpu_smoke, threads=2 * gpus, run_parent=work / "bench")
    wall = time.perf_counter() - started
    summary = json.loads(paths.metrics_summary.read_text())
    return {
        "gpus": gpus,
        "strategy": args.strategy if gpus > 1 else None,
        "global_step": summary["global_step"],
        "effective_batch": summary["distribuido"]["batch_efetivo"],
        "train_runtime_s": summary["train_runtime"],
        "samples_per_s": summary["train_samples_per_second"],
        "peak_gpu_gb": (summary.get("pico_hardware") or {}).get("gpu_usada_gb"),
        "process_wall_s": round(wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", default="1,2", help="comma-separated GPU counts; the first is the baseline")
    ap.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp"])
    ap.add_argument("--backend", default="unsloth", choices=["unsloth", "transformers", "auto"])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8, help="per device")
    ap.add_argument("--n", type=int, default=1600)
    ap.add_argument("--workdir", default="/tmp/afinar-bench-dist")
    ap.add_argument("--out", default="")
    ap.add_argument(
        "--cpu-smoke", action="store_true", help="tiny model, CPU processes (gloo): plumbing only"
    )
    args = ap.parse_args()
    if args.cpu_smoke:
        args.steps, args.n, args.batch = min(args.steps, 4), min(args.n, 64), 4
    counts = [int(g) for g in args.gpus.split(",")]
    name = "tiny" if args.cpu_smoke else "1b"
    prep = bench.prepare(Path(args.workdir), {name: args.n})["models"][name]
    device = bench.device_info(args.cpu_smoke)
    results = [run(prep, args, g) for g in counts]
    base = results[0]
    for r in results:
        r["speedup_x"] = round(r["samples_per_s"] / base["samples_per_s"], 2)
        r["efficiency"] = round(r["speedup_x"] * base["gpus"] / r["gpus"], 2)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": device,
        "model_params": prep["params"],
        "data": prep["lengths"],
        "steps": args.steps,
        "per_device_batch": args.batch,
        "backend": "transformers" if args.cpu_smoke else args.backend,
        "results": results,
    }
    print(f"{report['date']}  {device['gpu']}  {prep['params']['total']:,} parameters, {args.steps} steps")
    print("gpus  strategy  eff.batch  samples/s  speed-up  efficiency  runtime s  peak GB")
    for r in results:
        print(
            f"{r['gpus']:4d}  {r['strategy'] or '-':8s}  {r['effective_batch']:9d}  {r['samples_per_s']:9.2f}  "
            f"{r['speedup_x']:8.2f}  {r['efficiency']:10.2f}  {r['train_runtime_s']:9.1f}  {r['peak_gpu_gb']}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
