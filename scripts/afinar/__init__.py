"""Afinar: LoRA fine-tuning of LLMs as a reproducible Snakemake workflow.

The library is importable without Snakemake; rule scripts in ``scripts/`` are thin wrappers around it.
"""

__version__ = "0.1.0"
