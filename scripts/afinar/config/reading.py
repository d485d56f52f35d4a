"""Reading: a YAML file into a dict, and the JSON Schema (config/schema.yaml) that defines the canonical shape."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from afinar.config.common import _kind
from afinar.errors import AfinarError

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "config" / "schema.yaml"


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names the same key twice (YAML keeps the last one silently)."""

    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(f"{key!r} appears twice")
        self.key, self.first, self.second = key, first, second


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys: a second ``treinamento:`` block would otherwise
    replace the first entirely, without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKeyError(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: the base class reports it
                break
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict:
    """Read a YAML config file into a dict; a missing, malformed or non-mapping file is an AfinarError.

    The error names the file and the line (1-based) where the parser gave up, because that is where the
    user has to look.
    """
    path = Path(path)
    if not path.is_file():
        raise AfinarError(
            f"{path}: config file not found — check the path, or run `python -m afinar validate {path} "
            "--interactive` to write a commented template"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AfinarError(f"{path}: not UTF-8 text ({exc.reason}) — save the file as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except DuplicateKeyError as exc:
        raise AfinarError(
            f"{path}: line {exc.second}: key {exc.key!r} repeats the one on line {exc.first} (YAML would keep only "
            "the last) — merge the two into one"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise AfinarError(f"{path}:{where}: malformed YAML ({what}) — fix the syntax there") from None
    if data is None:
        raise AfinarError(
            f"{path}: the file is empty — it needs at least modelo.base (see config/config.yaml)"
        )
    if not isinstance(data, dict):
        raise AfinarError(f"{path}: the top level must be a mapping of sections, got {_kind(data)}")
    return data


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The JSON Schema of the canonical config (config/schema.yaml), parsed once per process."""
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        schema: dict[str, Any] = yaml.safe_load(fh)
    return schema
