"""Checks that a cluster profile is filled in before anything is submitted.

``profiles/slurm/config.yaml`` ships with placeholders such as ``<YOUR_PARTITION>`` that each user must
replace. Left alone, they reach ``sbatch`` as ``-p '<YOUR_PARTITION>'`` and the user gets a cryptic
"invalid partition specified" for every job, possibly after the workflow has already run its local
jobs; a partition that is simply missing makes the SLURM plugin guess, and on clusters without a default
partition every submission fails. These checks turn both into one clear line before the first job.

Two entry points for the workflow (``rules/common.smk``):

- :func:`check_profile_placeholders` at parse time: needs no cluster, works in a dry run.
- :func:`check_slurm_partitions` in ``onstart:``: only for the SLURM executor, asks ``sinfo`` which
  partitions exist and which one is the default.

The pure functions underneath take plain dicts, so they are testable without Snakemake or SLURM.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from typing import Any

from afinar.errors import AfinarError

PROFILE = "profiles/slurm/config.yaml"
# What our profiles use as "edit me": <YOUR_PARTITION>, <YOUR_ACCOUNT>, <YOUR_GPU_PARTITION>, ...
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")
PARTITION_KEY = "slurm_partition"

Resources = Mapping[str, Any]


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


def check_workflow_placeholders(workflow: Any, profile: str = PROFILE) -> None:
    """Parse-time check for ``rules/common.smk``: no profile placeholder may reach a job."""
    defaults, per_rule = profile_resources(workflow)
    check_profile_placeholders(defaults, per_rule, profile)


def check_slurm_partitions(workflow: Any, profile: str = PROFILE) -> None:
    """``onstart:`` check for ``rules/common.smk``: with the SLURM executor, every non-local rule must
    land in an existing partition. Does nothing with other executors or when ``sinfo`` cannot answer."""
    plugin = getattr(workflow, "executor_plugin", None)
    if plugin is None or getattr(plugin, "name", None) != "slurm":
        return
    output = query_sinfo_partitions()
    if output is None:
        return
    defaults, per_rule = profile_resources(workflow)
    rules = [rule.name for rule in workflow.rules if not workflow.is_local(rule)]
    check_partitions(defaults, per_rule, rules, output, profile)
