"""Checks that a cluster profile is filled in before anything is submitted.

``profiles/slurm/config.yaml`` ships with placeholders such as ``<YOUR_PARTITION>`` that each user must
replace. Left alone, they reach ``sbatch`` as ``-p '<YOUR_PARTITION>'`` and the user gets a cryptic
"invalid partition specified" for every job, possibly after the workflow has already run its local
jobs; a partition that is simply missing makes the SLURM plugin guess, and on clusters without a default
partition every submission fails. These checks turn both into one clear line before the first job.

Two entry points for the workflow (``rules/common.smk``):

- :func:`check_profile_placeholders` at parse time: needs no cluster, works in a dry run.
- :func:`check_slurm_partitions` in ``onstart:``: only for the SLURM executor, asks ``sinfo`` which
  partitions exist and which one is the default, and whether each job to run fits on a node of its
  partition (memory, CPUs, GPUs): a refused ``sbatch`` otherwise arrives only after the data stages ran.

Errors name the profile actually given (``--profile``, ``$SNAKEMAKE_PROFILE``), not the shipped one:
docs/cluster.md recommends a copy.

The pure functions underneath take plain dicts, so they are testable without Snakemake or SLURM.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from afinar.errors import AfinarError

PROFILE = "profiles/slurm/config.yaml"
# What our profiles use as "edit me": <YOUR_PARTITION>, <YOUR_ACCOUNT>, <YOUR_GPU_PARTITION>, ...
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")
PARTITION_KEY = "slurm_partition"

Resources = Mapping[str, Any]


def profile_files(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> list[str]:
    """The profile files this snakemake call reads, as given: every ``--profile`` (or
    ``$SNAKEMAKE_PROFILE``), resolved the way Snakemake does (a name, a folder or the YAML file itself)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    given: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--profile" and i + 1 < len(argv):
            given.append(argv[i + 1])
        elif arg.startswith("--profile="):
            given.append(arg.split("=", 1)[1])
    if not given and environ.get("SNAKEMAKE_PROFILE"):
        given.append(environ["SNAKEMAKE_PROFILE"])
    files = []
    for profile in given:
        if profile == "none":
            continue
        try:
            from snakemake.cli import get_profile_dir

            found = get_profile_dir(profile)
        except Exception:  # an old or absent snakemake: name the profile as given
            found = None
        if found is None:
            files.append(profile)
            continue
        relative = os.path.relpath(found[1])
        files.append(str(found[1]) if relative.startswith("..") else relative)
    return files


def profile_source(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> str:
    """How an error names the profile in use: its file(s), else the command line's resource options."""
    files = profile_files(argv, environ)
    return " + ".join(files) if files else "the --default-resources/--set-resources given"


def _raw(value: Any) -> Any:
    """The value as the user wrote it: Snakemake wraps resources in objects that keep it in ``.raw``."""
    return getattr(value, "raw", value)


def _text(value: Any) -> str:
    """A resource value as plain text, without the extra quotes the command line sometimes needs."""
    text = str(_raw(value)).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1].strip()
    return text


def profile_resources(workflow: Any) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Return (default-resources, set-resources per rule) from Snakemake's ``workflow`` object, raw values."""
    settings = workflow.resource_settings
    defaults = {name: _raw(v) for name, v in (settings.default_resources or {}).items()}
    per_rule = {
        rule: {name: _raw(v) for name, v in mapping.items()}
        for rule, mapping in (settings.overwrite_resources or {}).items()
    }
    return defaults, per_rule


def find_placeholders(defaults: Resources, per_rule: Mapping[str, Resources]) -> list[str]:
    """Every resource still holding a ``<PLACEHOLDER>``, as ``"default-resources: name=value"`` lines."""
    found = [
        f"default-resources: {name}={_text(value)}"
        for name, value in defaults.items()
        if isinstance(_raw(value), str) and PLACEHOLDER.search(_raw(value))
    ]
    for rule, resources in per_rule.items():
        found += [
            f"set-resources: {rule}: {name}={_text(value)}"
            for name, value in resources.items()
            if isinstance(_raw(value), str) and PLACEHOLDER.search(_raw(value))
        ]
    return found


def check_profile_placeholders(
    defaults: Resources, per_rule: Mapping[str, Resources], profile: str = PROFILE
) -> None:
    """Raise AfinarError naming every placeholder left in the profile (all of them, so one edit fixes all)."""
    found = find_placeholders(defaults, per_rule)
    if found:
        raise AfinarError(
            f"{profile}: placeholder(s) not replaced: {'; '.join(found)} — edit the profile (or a copy of it) "
            "and write your cluster's values (`sinfo -s` lists partitions, `sacctmgr show assoc user=$USER` "
            "your accounts; an account line you do not need can be deleted)"
        )


def parse_sinfo_partitions(output: str) -> tuple[list[str], str | None]:
    """Parse ``sinfo -h -o %P``: (partition names, the default one marked with ``*`` or None)."""
    names: list[str] = []
    default = None
    for token in output.split():
        name = token.rstrip("*")
        if name and name not in names:
            names.append(name)
        if token.endswith("*"):
            default = name
    return names, default


def partition_problems(
    defaults: Resources,
    per_rule: Mapping[str, Resources],
    rules: Iterable[str],
    partitions: list[str],
    default_partition: str | None,
) -> list[str]:
    """What is wrong with the partition each rule would be submitted to (empty list: all good).

    A rule uses its ``set-resources`` partition, else the profile's default one, else the cluster's
    default partition. A value may list several partitions separated by commas (SLURM picks one).
    """
    problems: list[str] = []
    known = ", ".join(f"{p}{'*' if p == default_partition else ''}" for p in partitions) or "none"
    for rule in rules:
        value = per_rule.get(rule, {}).get(PARTITION_KEY) or defaults.get(PARTITION_KEY)
        wanted = [p.strip() for p in _text(value).split(",") if p.strip()] if value else []
        if not wanted:
            if default_partition is None:
                problems.append(f"rule {rule}: no {PARTITION_KEY} and the cluster has no default partition")
            continue
        unknown = [p for p in wanted if p not in partitions]
        if unknown:
            problems.append(f"rule {rule}: {PARTITION_KEY}={','.join(unknown)} is not a partition here")
    if problems:
        problems.append(f"partitions on this cluster: {known}")
    return problems


def check_partitions(
    defaults: Resources,
    per_rule: Mapping[str, Resources],
    rules: Iterable[str],
    sinfo_output: str,
    profile: str = PROFILE,
) -> None:
    """Raise AfinarError when a rule would be submitted to a missing or unknown partition."""
    partitions, default = parse_sinfo_partitions(sinfo_output)
    problems = partition_problems(defaults, per_rule, rules, partitions, default)
    if problems:
        raise AfinarError(
            f"{profile}: {'; '.join(problems)} — set default-resources: {PARTITION_KEY} (and "
            f"set-resources: <rule>: {PARTITION_KEY} for GPU rules) to partitions listed by `sinfo -s`"
        )


def query_sinfo_partitions(timeout_s: float = 30.0) -> str | None:
    """``sinfo -h -o %P`` output, or None when sinfo is absent or fails (the plugin then reports it)."""
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        return None
    try:
        done = subprocess.run(
            [sinfo, "-h", "-o", "%P"], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def check_workflow_placeholders(workflow: Any, profile: str | None = None) -> None:
    """Parse-time check for ``rules/common.smk``: no profile placeholder may reach a job, and no
    ``cpus_per_task`` default may silently replace a GPU rule's ``cpus_per_gpu``."""
    defaults, per_rule = profile_resources(workflow)
    profile = profile or profile_source()
    check_profile_placeholders(defaults, per_rule, profile)
    check_cpu_settings(defaults, per_rule, profile)


def check_slurm_partitions(workflow: Any, profile: str | None = None) -> None:
    """``onstart:`` check for ``rules/common.smk``: with the SLURM executor, every non-local rule must
    land in an existing partition and every job to run must fit on one of its nodes. Does nothing with
    other executors or when ``sinfo`` cannot answer."""
    plugin = getattr(workflow, "executor_plugin", None)
    if plugin is None or getattr(plugin, "name", None) != "slurm":
        return
    output = query_sinfo_partitions()
    if output is None:
        return
    profile = profile or profile_source()
    defaults, per_rule = profile_resources(workflow)
    rules = [rule.name for rule in workflow.rules if not workflow.is_local(rule)]
    check_partitions(defaults, per_rule, rules, output, profile)
    nodes = query_sinfo_nodes()
    dag = getattr(workflow, "dag", None)
    if nodes is None or dag is None:
        return
    _, default_partition = parse_sinfo_partitions(output)
    jobs = [job for job in dag.needrun_jobs() if not job.is_local]
    requests = [job_request(job.rule.name, job.resources, job.threads, default_partition) for job in jobs]
    check_node_sizes(requests, parse_sinfo_nodes(nodes), profile)


# ------------------------------------------------------------------------------ CPUs per GPU

GPU_CPU_KEY = "cpus_per_gpu"


def check_cpu_settings(
    defaults: Resources, per_rule: Mapping[str, Resources], profile: str = PROFILE
) -> None:
    """A ``cpus_per_task`` that reaches a GPU rule which sets ``cpus_per_gpu`` wins in the SLURM plugin
    (``--cpus-per-task`` is submitted, ``--cpus-per-gpu`` dropped): refuse the profile instead."""
    for rule, resources in per_rule.items():
        if resources.get(GPU_CPU_KEY) is None:
            continue
        cpt = resources.get("cpus_per_task", defaults.get("cpus_per_task"))
        if cpt is not None and int(_raw(cpt) or 0) > 0:
            where = "set-resources: " + rule if "cpus_per_task" in resources else "default-resources"
            raise AfinarError(
                f"{profile}: {where}: cpus_per_task={_text(cpt)} would replace set-resources: {rule}: "
                f"{GPU_CPU_KEY}={_text(resources[GPU_CPU_KEY])} (the SLURM plugin submits only one of them) — "
                "remove cpus_per_task there (CPU-only rules get their threads, or set it per rule)"
            )


# ------------------------------------------------------------------------------ node sizes


def query_sinfo_nodes(timeout_s: float = 30.0) -> str | None:
    """``sinfo -h -N -o '%R|%c|%m|%G'`` (partition, CPUs, memory MB, GRES per node), or None."""
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        return None
    try:
        done = subprocess.run(
            [sinfo, "-h", "-N", "-o", "%R|%c|%m|%G"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _gpus_in_gres(gres: str) -> int:
    """GPUs in a GRES column such as ``gpu:2``, ``gpu:h100:4(S:0-1)``, ``gpu:a100:2,shard:8`` or ``(null)``."""
    total = 0
    for item in gres.split(","):
        parts = re.sub(r"\(.*?\)", "", item).strip().split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def parse_sinfo_nodes(output: str) -> list[dict[str, Any]]:
    """Rows of :func:`query_sinfo_nodes` as ``{partition, cpus, mem_mb, gpus}``."""
    nodes = []
    for line in output.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 4:
            continue
        partition, cpus, mem, gres = fields
        try:
            nodes.append(
                {
                    "partition": partition.rstrip("*"),
                    "cpus": int(cpus.rstrip("+")),
                    "mem_mb": int(mem.rstrip("+")),
                    "gpus": _gpus_in_gres(gres),
                }
            )
        except ValueError:
            continue
    return nodes


def job_request(rule: str, resources: Any, threads: int, default_partition: str | None) -> dict[str, Any]:
    """What a job asks of one node, computed as the SLURM plugin submits it (``cpus_per_task`` first,
    else ``cpus_per_gpu`` x GPUs for GPU jobs, else the rule's threads)."""

    def get(name: str) -> Any:
        value = resources.get(name) if hasattr(resources, "get") else getattr(resources, name, None)
        return _raw(value)

    gpus = int(get("gpu") or 0)
    cpt, cpg = int(get("cpus_per_task") or 0), int(get(GPU_CPU_KEY) or 0)
    cpus = cpt if cpt > 0 else (cpg * gpus if gpus and cpg > 0 else int(threads or 1))
    mem = int(get("mem_mb") or 0) or int(get("mem_mb_per_cpu") or 0) * cpus
    partition = _text(get(PARTITION_KEY)) if get(PARTITION_KEY) else default_partition
    return {"rule": rule, "partition": partition, "cpus": cpus, "mem_mb": mem, "gpus": gpus}


def node_size_problems(requests: Iterable[Mapping[str, Any]], nodes: list[dict[str, Any]]) -> list[str]:
    """One line per rule whose job fits on no single node of its partition(s)."""
    problems: dict[str, str] = {}
    for req in requests:
        if req["rule"] in problems:
            continue
        wanted = [p.strip() for p in str(req["partition"] or "").split(",") if p.strip()]
        candidates = [n for n in nodes if n["partition"] in wanted] if wanted else nodes
        if not candidates:
            continue  # the partition check already names an unknown partition
        if any(
            n["cpus"] >= req["cpus"] and n["mem_mb"] >= req["mem_mb"] and n["gpus"] >= req["gpus"]
            for n in candidates
        ):
            continue
        biggest = (
            f"{max(n['mem_mb'] for n in candidates)} MB, {max(n['cpus'] for n in candidates)} CPUs, "
            f"{max(n['gpus'] for n in candidates)} GPUs"
        )
        problems[req["rule"]] = (
            f"rule {req['rule']} asks mem_mb={req['mem_mb']}, {req['cpus']} CPUs, {req['gpus']} GPUs but the "
            f"nodes of partition {','.join(wanted) or '(default)'} have at most {biggest}"
        )
    return list(problems.values())


def check_node_sizes(
    requests: Iterable[Mapping[str, Any]], nodes: list[dict[str, Any]], profile: str = PROFILE
) -> None:
    """Raise AfinarError when a job to run would be refused by ``sbatch`` (no node is big enough)."""
    problems = node_size_problems(requests, nodes)
    if problems:
        raise AfinarError(
            f"{profile}: {'; '.join(problems)} — lower these in set-resources (mem_mb, cpus_per_gpu, gpu) or "
            "choose a partition with bigger nodes (`sinfo -N -o '%P %c %m %G'` lists them)"
        )
