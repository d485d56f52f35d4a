"""Reading what a real `snakemake --dry-run` plans: which rules run, and why."""

from __future__ import annotations

import re


def planned_jobs(output: str) -> dict[str, int]:
    """Rule → job count from the 'Job stats' table of a snakemake run or dry run ({} when nothing to do)."""
    jobs: dict[str, int] = {}
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("Job stats:"):
            for row in lines[i + 3 :]:
                match = re.match(r"^\s*([A-Za-z_][\w]*)\s+(\d+)\s*$", row)
                if not match:
                    break
                if match.group(1) != "total":
                    jobs[match.group(1)] = int(match.group(2))
            break
    return jobs


def reasons(output: str) -> str:
    """The 'reason:' lines and the closing 'Reasons:' summary of a dry run, lower-cased."""
    lines = output.splitlines()
    picked = [line for line in lines if "reason:" in line.lower()]
    if "Reasons:" in lines:
        picked += lines[lines.index("Reasons:") :]
    return "\n".join(line.strip().lower() for line in picked)
