"""Small pieces every step of the config pipeline shares: the problem collector and value helpers."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

from afinar.errors import AfinarError

MISSING_BASE = (
    "modelo.base: missing — set the base model (a Hugging Face id or a local folder; alias base_model_name)"
)


class _Problems:
    """Collects problem lines, or raises on the first one when not collecting (load_config's mode)."""

    def __init__(self, collect: bool) -> None:
        self.collect = collect
        self.items: list[str] = []

    def add(self, message: str) -> None:
        if not self.collect:
            raise AfinarError(message)
        if message not in self.items:
            self.items.append(message)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _as_mapping(value: Any, where: str, found: _Problems) -> dict:
    """A section written as ``lora:`` with nothing under it is None: treat it as empty."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        found.add(
            f"{where}: got {_kind(value)} — expected a mapping of keys (indent them under {where.split('.')[-1]}:)"
        )
        return {}
    return value


def _deep_merge(base: dict, override: dict) -> dict:
    """Copy of ``base`` with ``override`` merged in: mappings merge, everything else (lists too) replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _flatten(data: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        elif not isinstance(value, dict):
            yield f"{prefix}{key}", value


def _get(cfg: dict, keys: tuple[str, ...]) -> Any:
    node: Any = cfg
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _kind(value: Any) -> str:
    names = {
        dict: "a mapping",
        list: "a list",
        str: "a text",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }
    return f"{names.get(type(value), type(value).__name__)} ({_show(value)})"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
