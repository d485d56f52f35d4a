"""Built-in base model names and the folders the workflow's rules build for them.

Kept apart from :mod:`afinar.train.smollm2` (which needs torch and transformers) because the config reads
these names in every stage, including the data stages whose environment has neither.
"""

from __future__ import annotations

#: ``modelo.base: smollm2-135m-instruct`` → the folder the ``smollm2_model`` rule writes
SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_FOLDER = "results/modelos/smollm2-135m-instruct"


def resolve_builtin(name: str) -> str:
    """A built-in model name → the folder a rule builds for it; any other name unchanged."""
    return SMOLLM2_FOLDER if name.strip().lower() == SMOLLM2_NAME else name
