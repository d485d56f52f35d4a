"""The workflow on a real SLURM cluster (tests/slurm/start-local-slurm.sh), and the SLURM profile's dry run.

The cluster tests are opt-in (marker `slurm`, run when AFINAR_SLURM_TESTS=1, which .ci/run sets): they
install and start Debian's SLURM on this machine. When the cluster cannot be provided (not root, packages
not installable) they are SKIPPED with the reason, never passed. Every snakemake call is guarded by
`timeout -s KILL`, because a snakemake whose SLURM status checks never see a job end ignores SIGTERM.

The dry-run tests need no cluster.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import BIN, REPO, copy_workflow, offline_env

pytestmark = pytest.mark.workflow

SLURM_DIR = REPO / "tests" / "slurm"
TEST_PROFILE = SLURM_DIR / "profile"
STATE_DIR = Path(os.environ.get("AFINAR_SLURM_DIR", "/tmp/afinar-slurm"))
KILL_AFTER_S = 900


def snakemake(workdir: Path, *args: str, timeout_s: int = KILL_AFTER_S) -> subprocess.CompletedProcess:
    """Real snakemake in ``workdir``, killed (SIGKILL) after ``timeout_s``; stdout and stderr merged."""
    cmd = ["timeout", "-s", "KILL", str(timeout_s), str(BIN / "snakemake"), *args]
    return subprocess.run(
        cmd, cwd=workdir, env=offline_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def smoke_config(wf: Path, **treinamento) -> str:
    """The demo config with a training of a few steps: the test is about SLURM, not about learning."""
    cfg = yaml.safe_load((wf / "config" / "config.yaml").read_text())
    cfg["treinamento"].update({"max_steps": 3, "epochs": 1, **treinamento})
    path = wf / "config" / "slurm-smoke.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path.relative_to(wf))


# ------------------------------------------------------------------------------------- dry runs


def filled_slurm_profile(dest: Path) -> Path:
    """profiles/slurm with its placeholders replaced, as a user would edit it."""
    text = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    text = text.replace("<YOUR_GPU_PARTITION>", "gpu").replace("<YOUR_PARTITION>", "cpu")
    text = text.replace("<YOUR_ACCOUNT>", "myproject")
    dest.mkdir(parents=True)
    (dest / "config.yaml").write_text(text)
    return dest


def test_slurm_profile_dry_run(tmp_path):
    """The shipped profile plans the whole demo (no cluster needed); conda is swapped out since this
    machine has none (--sdm conda would call `conda info` even in a dry run)."""
    wf = copy_workflow(tmp_path / "wf")
    profile = filled_slurm_profile(tmp_path / "profile")
    # backend auto: a GPU training (the demo's transformers backend is the CPU path, gpu=0)
    gpu_cfg = ["--config", "treinamento={backend: auto}"]
    proc = snakemake(wf, "-n", "--profile", str(profile), "--sdm", "env-modules", *gpu_cfg, timeout_s=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    out = proc.stdout
    train = re.search(r"^rule train:\n(.*?)\n\n", out, re.M | re.S)
    assert train, out[-3000:]
    resources = re.search(r"resources: (.*)", train.group(1)).group(1)
    for expected in ("gpu=1", "cpus_per_gpu=8", "mem_mb=64000", "runtime=720", "slurm_partition=gpu"):
        assert expected in resources, resources
    pair = re.search(r"^rule pair:\n(.*?)\n\n", out, re.M | re.S).group(1)
    assert "slurm_partition=cpu" in pair and "slurm_account=myproject" in pair


def test_unedited_slurm_profile_is_refused_clearly(tmp_path):
    """Bad input: the profile's placeholders left as shipped → one clear line, before any job."""
    wf = copy_workflow(tmp_path / "wf")
    proc = snakemake(
        wf, "-n", "--profile", str(REPO / "profiles" / "slurm"), "--sdm", "env-modules", timeout_s=300
    )
    assert proc.returncode != 0
    assert "placeholder(s) not replaced" in proc.stdout, proc.stdout[-3000:]
    assert "slurm_partition=<YOUR_PARTITION>" in proc.stdout
    assert "train: slurm_partition=<YOUR_GPU_PARTITION>" in proc.stdout
    assert "Job stats" not in proc.stdout


# ------------------------------------------------------------------------------- a real cluster


@pytest.fixture(scope="module")
def cluster():
    """A running one-node SLURM cluster; skipped (with the reason) when this machine cannot have one."""
    if os.environ.get("AFINAR_SLURM_TESTS") != "1":
        pytest.skip("SLURM tests are opt-in: set AFINAR_SLURM_TESTS=1 (root and Debian's apt needed)")
    if shutil.which("timeout") is None:
        pytest.skip("coreutils' timeout is needed to guard snakemake against a hang")
    was_running = (STATE_DIR / "run" / "slurmctld.pid").exists()
    proc = subprocess.run(
        ["bash", str(SLURM_DIR / "start-local-slurm.sh")], capture_output=True, text=True, timeout=900
    )
    if proc.returncode == 3:
        pytest.skip(f"no SLURM test cluster here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, f"start-local-slurm.sh failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    yield STATE_DIR
    if not was_running:
        subprocess.run(["bash", str(SLURM_DIR / "stop-local-slurm.sh")], capture_output=True, timeout=120)


def squeue_record(job_id: str) -> tuple[str, str, str]:
    """(state, TRES requested per job, partition) of a job; finished jobs stay listed for MinJobAge (5 min).

    `--gpus=1` is recorded as TRES per job (`gres:gpu:1`), not in the per-node GRES column.
    """
    done = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", job_id, "-O", "State:|,tres-per-job:|,Partition:|"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    state, tres, partition = (done.stdout.strip().split("|") + ["", "", ""])[:3]
    return state.strip(), tres.strip(), partition.strip()


@pytest.mark.slurm
def test_demo_trains_through_slurm_with_a_gpu_request(cluster, tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    cfg = smoke_config(wf)
    proc = snakemake(wf, "--profile", str(TEST_PROFILE), "--until", "train", "--configfile", cfg)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:]
    assert (wf / "results" / "demo" / "adapter" / "adapter_config.json").is_file()

    # every job, data stages included, went through sbatch
    submitted = dict(re.findall(r"SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+?)/", out))
    assert {"pair", "decrypt", "split", "train"} <= set(submitted.values()), out[-4000:]
    train_id = next(job for job, rule in submitted.items() if rule == "train")

    # SLURM itself recorded a GPU request for the train job, on our partition, and that it completed
    state, tres, partition = squeue_record(train_id)
    assert state == "COMPLETED" and tres.endswith("gpu:1") and partition == "afinar", (state, tres, partition)
    assert "gpu" not in squeue_record(next(j for j, r in submitted.items() if r == "pair"))[1]

    # inside the job, SLURM exposed the (fake) GPU it allocated: the train rule logs the variable it saw
    slurm_log = wf / ".snakemake" / "slurm_logs" / "rule_train" / "demo" / f"{train_id}.log"
    assert slurm_log.is_file()
    train_log = (wf / "results" / "logs" / "train" / "demo.log").read_text()
    assert re.search(r"CUDA_VISIBLE_DEVICES=0\b", train_log), train_log[-2000:]


@pytest.mark.slurm
def test_failed_slurm_job_shows_its_log_paths(cluster, tmp_path):
    """Bad input: a job that fails inside SLURM → snakemake's error names the rule's log and the SLURM log."""
    wf = copy_workflow(tmp_path / "wf")
    answers = sorted((wf / "resources" / "example" / "saidas").glob("*.txt"))
    answers[0].write_text("this is not JSON {")
    proc = snakemake(wf, "--profile", str(TEST_PROFILE), "--until", "pair", timeout_s=300)
    out = proc.stdout
    assert proc.returncode != 0
    assert "Error in rule pair" in out, out[-4000:]
    assert "results/logs/pair.log" in out, out[-4000:]
    slurm_logs = re.findall(r"\S*slurm_logs/rule_pair/\d+\.log", out)
    assert slurm_logs and Path(slurm_logs[0]).is_file(), out[-4000:]
    assert answers[0].name.removesuffix(".txt") in (wf / "results" / "logs" / "pair.log").read_text()


# ------------------------------------------------------- what the plugin really submits (sbatch command lines)


def sbatch_recorder(folder: Path) -> tuple[dict[str, str], Path]:
    """An `sbatch` first on PATH that writes its command line to a file and refuses the job: the test
    reads exactly what the executor plugin built, and nothing runs."""
    folder.mkdir(parents=True)
    record = folder / "sbatch-calls.txt"
    shim = folder / "sbatch"
    shim.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$*" >> {record}\n'
        'echo "sbatch: error: refused by the test (command line recorded)" >&2\n'
        "exit 1\n"
    )
    shim.chmod(0o755)
    env = offline_env()
    env["PATH"] = f"{folder}{os.pathsep}{env['PATH']}"
    return env, record


def cluster_profile(dest: Path, scale_to_node: bool) -> Path:
    """profiles/slurm filled in for the test cluster (partition afinar, no account); with
    ``scale_to_node`` its train/predict requests are lowered to what the test node has (2 CPUs)."""
    text = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    text = text.replace("<YOUR_GPU_PARTITION>", "afinar").replace("<YOUR_PARTITION>", "afinar")
    text = re.sub(r"^  slurm_account:.*\n", "", text, flags=re.M)
    if scale_to_node:
        text = text.replace("cpus_per_gpu: 8", "cpus_per_gpu: 2").replace(
            "cpus_per_gpu: 4", "cpus_per_gpu: 1"
        )
        text = re.sub(r"mem_mb: \d+", "mem_mb: 2000", text)
    dest.mkdir(parents=True)
    (dest / "config.yaml").write_text(text)
    return dest


@pytest.fixture(scope="module")
def trained(cluster, tmp_path_factory):
    """The demo trained locally for one step (no predictions yet): train and predict can be submitted."""
    wf = copy_workflow(tmp_path_factory.mktemp("sbatch") / "wf")
    cfg = yaml.safe_load((wf / "config" / "config.yaml").read_text())
    cfg["treinamento"].update(max_steps=1, epochs=1)
    cfg["predicao"].update(comparar_base=False)
    (wf / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = snakemake(wf, "--cores", "2", "--until", "train", "--workflow-profile", "none", timeout_s=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return wf


@pytest.mark.slurm
def test_sbatch_gets_cpus_per_gpu_for_gpu_rules_and_threads_for_the_others(trained, tmp_path):
    env, record = sbatch_recorder(tmp_path / "bin")
    profile = cluster_profile(tmp_path / "profile", scale_to_node=True)
    calls = {}
    for rule, extra in (
        ("predict", []),
        # backend auto: the GPU training (the demo's transformers backend is the CPU path and asks no GPU)
        ("train", ["--forcerun", "train", "--config", "treinamento={backend: auto}"]),
        ("pair", ["--forcerun", "pair"]),
    ):
        record.unlink(missing_ok=True)
        cmd = ["timeout", "-s", "KILL", "300", str(BIN / "snakemake"), "--profile", str(profile)]
        cmd += ["--sdm", "env-modules", "--until", rule, *extra]
        proc = subprocess.run(
            cmd, cwd=trained, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.returncode != 0 and record.is_file(), proc.stdout[-3000:]
        calls[rule] = next(line for line in record.read_text().splitlines() if f"rule_{rule}" in line)
    assert "--cpus-per-gpu=2" in calls["train"] and "--gpus=1" in calls["train"], calls["train"]
    assert "--cpus-per-task" not in calls["train"], calls["train"]
    assert "--signal=B:USR1@300" in calls["train"], calls["train"]
    assert "--cpus-per-gpu=1" in calls["predict"] and "--cpus-per-task" not in calls["predict"], calls[
        "predict"
    ]
    assert "--cpus-per-task=1" in calls["pair"] and "--gpus" not in calls["pair"], calls["pair"]
    assert "-p afinar" in calls["train"] or "-p 'afinar'" in calls["train"], calls["train"]


@pytest.mark.slurm
def test_jobs_bigger_than_every_node_are_refused_before_submission(trained, tmp_path):
    """Bad input: the shipped requests (train 64 GB, 8 CPUs) on the 2-CPU test node → one line naming the
    profile copy that was used, before anything is submitted."""
    env, record = sbatch_recorder(tmp_path / "bin")
    profile = cluster_profile(tmp_path / "my-profile", scale_to_node=False)
    cmd = ["timeout", "-s", "KILL", "300", str(BIN / "snakemake"), "--profile", str(profile)]
    cmd += ["--sdm", "env-modules", "--until", "train", "--forcerun", "train"]
    cmd += ["--config", "treinamento={backend: auto}"]  # the GPU training (transformers asks no GPU)
    proc = subprocess.run(
        cmd, cwd=trained, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.returncode != 0
    line = next((x for x in proc.stdout.splitlines() if "afinar: error:" in x), "")
    assert "my-profile/config.yaml: rule train asks mem_mb=64000, 8 CPUs, 1 GPUs" in line, proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout
    assert not record.exists()  # nothing reached sbatch


# ------------------------------------------------------------- a time limit shorter than the training


def one_thread_profile(dest: Path) -> Path:
    """The test profile with one torch thread for train (the test node has 2 CPUs shared by every job)."""
    profile = yaml.safe_load((TEST_PROFILE / "config.yaml").read_text())
    profile["set-threads"] = {"train": 1}
    dest.mkdir(parents=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dest


def running_train_job(workdir: Path) -> str | None:
    """The id of the RUNNING train job submitted from ``workdir`` (by the plugin's ``rule_train`` comment)."""
    done = subprocess.run(
        ["squeue", "-h", "-t", "running", "-o", "%i|%Z|%k"], capture_output=True, text=True, timeout=30
    )
    for line in done.stdout.splitlines():
        job, folder, comment = (line.split("|") + ["", "", ""])[:3]
        if Path(folder.strip()) == workdir and comment.strip().startswith("rule_train"):
            return job.strip()
    return None


def steps_done(workdir: Path) -> int:
    """The last step in the live ``metrics_stream.jsonl`` of a running training (0 before the first)."""
    steps = [0]
    for stream in (workdir / "results").rglob("metrics_stream.jsonl"):
        for line in stream.read_text().splitlines():
            try:
                steps.append(int(json.loads(line).get("step", 0)))
            except (ValueError, AttributeError):
                continue  # a line being written right now
    return max(steps)


def training_pids(job_id: str) -> list[int]:
    """The processes of a SLURM job that run the training script (``scontrol listpids``; not snakemake)."""
    done = subprocess.run(["scontrol", "listpids", job_id], capture_output=True, text=True, timeout=30)
    pids = []
    for line in done.stdout.splitlines()[1:]:
        pid = line.split()[0] if line.split() else ""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue  # ended meanwhile
        # python .snakemake/scripts/tmpXXXX.train.py (snakemake's copy of scripts/train.py), not srun/snakemake
        if b"snakemake" not in argv and any(arg.endswith(b".train.py") for arg in argv):
            pids.append(int(pid))
    return pids


def cut_by_the_time_limit(proc: subprocess.Popen, workdir: Path, after_steps: int) -> str:
    """Once the first train job has passed ``after_steps`` steps, make SLURM end it for its time limit.

    The training processes are paused (SIGSTOP) first and the job's limit set to 0 minutes (already
    passed): SLURM notices it at its next periodic check (up to ~30 s later), then sends SIGCONT and
    SIGTERM as for any job out of time. The pause keeps the training from finishing meanwhile, so the cut
    happens whatever the machine's speed. Polling only (short sleeps); returns the job id.
    """
    deadline = time.monotonic() + KILL_AFTER_S
    while time.monotonic() < deadline and proc.poll() is None:
        job = running_train_job(workdir)
        if job is not None and steps_done(workdir) >= after_steps:
            pids = training_pids(job)
            if pids:
                for pid in pids:
                    os.kill(pid, signal.SIGSTOP)
                update = ["scontrol", "update", f"JobId={job}", "TimeLimit=0"]
                subprocess.run(update, check=True, capture_output=True, timeout=30)
                return job
        time.sleep(0.5)
    pytest.fail(f"the train job never passed step {after_steps} while snakemake ran (rc {proc.poll()})")


@pytest.mark.slurm
def test_training_longer_than_its_time_limit_finishes_over_retries(cluster, tmp_path):
    """SLURM ends the first train job for its time limit after a few steps (the test shrinks the running
    job's limit to what already passed, see cut_by_the_time_limit): the training checkpoints on SLURM's
    SIGTERM, the job fails, --retries resubmits it and the next attempt resumes where the first stopped
    and finishes. Independent of the machine's speed: the cut comes at a step the test chose."""
    wf = copy_workflow(tmp_path / "wf")
    cfg = smoke_config(wf, max_steps=100, epochs=20, eval_steps=25, checkpoint_minutos=0)
    profile = one_thread_profile(tmp_path / "profile")
    cmd = ["timeout", "-s", "KILL", str(KILL_AFTER_S), str(BIN / "snakemake"), "--profile", str(profile)]
    cmd += ["--until", "train", "--configfile", cfg, "--retries", "2"]
    output = tmp_path / "snakemake.out"  # a file, not a pipe: nobody reads a pipe while the test polls
    with output.open("w") as sink:
        proc = subprocess.Popen(
            cmd, cwd=wf, env=offline_env(), stdout=sink, stderr=subprocess.STDOUT, text=True
        )
        try:
            first_job = cut_by_the_time_limit(proc, wf, after_steps=3)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    out = output.read_text()
    assert proc.returncode == 0, out[-4000:]
    first_log = next((wf / ".snakemake" / "slurm_logs").rglob(f"{first_job}.log"))
    assert "DUE TO TIME LIMIT" in first_log.read_text(), first_log.read_text()[-3000:]  # SLURM ended it
    summary = json.loads((wf / "results" / "demo" / "metrics_summary.json").read_text())
    assert summary["global_step"] == 100

    log = (wf / "results" / "logs" / "train" / "demo.log").read_text()
    attempts = re.split(r"^===== afinar: attempt \d+ .*=====$", log, flags=re.M)[1:]
    assert len(attempts) == 2, log[-4000:]  # one cut, one resumed attempt that finishes
    stopped = [
        int(m.group(1))
        for a in attempts[:-1]
        for m in [re.search(r"training stopped by .* at step (\d+)/", a)]
        if m
    ]
    assert len(stopped) == len(attempts) - 1, log[-4000:]  # every cut attempt wrote its checkpoint first
    resumed = [
        int(m.group(1))
        for a in attempts[1:]
        for m in [re.search(r"resuming from \S+checkpoint-(\d+) ", a)]
        if m
    ]
    assert resumed == stopped, (resumed, stopped)  # each attempt starts where the previous one stopped
    assert 3 <= stopped[0] < 100, stopped  # the first job was cut after the steps the test waited for
    submitted = re.findall(r"SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_train/", out)
    assert len(submitted) == len(attempts), out[-4000:]
