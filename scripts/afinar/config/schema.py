"""Schema coercion and messages: YAML/--config strings → typed values, JSON Schema errors → one line each.

Defaults live only in config/schema.yaml; snakemake's validator fills them (``set_default=True``).
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from typing import Any

from afinar.config.aliases import HINTS, SECTION_ALIASES
from afinar.config.common import MISSING_BASE, _number, _Problems, _show
from afinar.config.reading import SCHEMA_PATH, load_schema
from afinar.layout import SPLITS

TRUE_WORDS = {"true", "sim", "s", "yes", "y", "1", "on", "verdadeiro"}
FALSE_WORDS = {"false", "nao", "não", "n", "no", "0", "off", "falso"}
NULL_WORDS = {"null", "none", "~", ""}


def _check_unknown(data: dict, schema: dict, prefix: str, found: _Problems, top: bool) -> None:
    """Reject keys the schema does not know, naming the full path and the closest valid name.

    With ``top`` only the top level is checked (before translation, so a misspelled section is reported
    before its contents); otherwise every level below it.
    """
    props = schema.get("properties", {})
    for key in list(data):
        path = f"{prefix}{key}"
        if key not in props:
            if schema.get("additionalProperties") is False and (top or prefix):
                found.add(f"{path}: unknown key — {suggest_key(key, props, path)}")
                data.pop(key)
            continue
        if top:
            continue
        sub = props[key]
        if (
            isinstance(data[key], dict)
            and sub.get("type") == "object"
            and "properties" in sub
            and key != "experimentos"
        ):
            _check_unknown(data[key], sub, f"{path}.", found, top=False)


def suggest_key(key: str, props: dict, path: str) -> str:
    """The "what to do" half of an unknown-key message: a close valid name, the section it belongs to, or the list."""
    candidates = list(props)
    section = path.split(".")[-2] if "." in path else ""
    candidates += list(SECTION_ALIASES.get(section, {}))
    if str(key) in HINTS and HINTS[str(key)] in props:
        return f"did you mean '{HINTS[str(key)]}'?"
    close = difflib.get_close_matches(str(key), candidates, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    elsewhere = _sections_with_key(str(key))
    if elsewhere:
        return f"it belongs under {elsewhere[0]} (move it there)"
    return f"valid keys here: {', '.join(props)}"


def _sections_with_key(key: str) -> list[str]:
    """Where else in the schema a key exists (e.g. dropout → lora), for misplaced keys."""
    out = []

    def walk(node: dict, path: str) -> None:
        for name, sub in node.get("properties", {}).items():
            here = f"{path}.{name}" if path else name
            if name == key and path:
                out.append(path)
            if isinstance(sub, dict):
                walk(sub, here)

    walk(load_schema(), "")
    return out


def _coerce(data: dict, schema: dict, prefix: str, found: _Problems) -> None:
    """Turn YAML/--config strings into the types the schema asks for ("sim" → True, "2e-4" → 0.0002).

    Snakemake's ``--config key={a: 3}`` yields strings, and PyYAML reads ``2e-4`` as a string, so a
    strict type check would reject values users reasonably wrote. Only unambiguous forms convert;
    anything else is left for the schema to report.
    """
    props = schema.get("properties", {})
    for key, value in list(data.items()):
        sub = props.get(key)
        if not isinstance(sub, dict):
            continue
        path = f"{prefix}{key}"
        if isinstance(value, dict) and "properties" in sub:
            _coerce(value, sub, f"{path}.", found)
            continue
        if isinstance(value, float) and not math.isfinite(value):  # YAML's .nan/.inf pass every bound check
            example = f" such as {sub['default']}" if isinstance(sub.get("default"), int | float) else ""
            found.add(f"{path}: {value} is not a finite number — write a number{example}")
            data.pop(key)
            continue
        types = sub.get("type", [])
        types = [types] if isinstance(types, str) else list(types)
        if "enum" in sub and all(isinstance(v, int) for v in sub["enum"]):
            types.append("integer")
        if isinstance(value, str) and "null" in types and value.strip().lower() in NULL_WORDS:
            data[key] = None
        elif "boolean" in types and not isinstance(value, bool) and isinstance(value, str | int):
            word = str(value).strip().lower()
            if word in TRUE_WORDS:
                data[key] = True
            elif word in FALSE_WORDS:
                data[key] = False
            else:
                found.add(f"{path}: {value!r} is not a yes/no value — use true/false (or sim/não)")
                data.pop(key)
        elif "integer" in types and isinstance(value, str):
            number = _number(value)
            if number is not None and float(number).is_integer():
                data[key] = int(number)
        elif "integer" in types and isinstance(value, float) and value.is_integer() and "number" not in types:
            data[key] = int(value)
        elif "number" in types and isinstance(value, str) and _number(value) is not None:
            data[key] = _number(value)


def _validate_schema(data: dict, prefix: str, found: _Problems) -> None:
    """Validate against config/schema.yaml with snakemake.utils.validate (fills defaults in place).

    snakemake raises on the first error; when collecting, jsonschema's iter_errors adds the others.
    Each error becomes one line that names the key and what is expected.
    """
    from snakemake.utils import validate

    try:
        validate(data, str(SCHEMA_PATH), set_default=True)
        return
    except Exception as exc:  # snakemake wraps the jsonschema error in its WorkflowError
        candidates = [*exc.args, exc.__context__, exc.__cause__, exc]
        first = next((a for a in candidates if _is_validation_error(a)), None)
        if first is None:
            raise
        found.add(_translate_error(first, prefix))
    if found.collect:
        import jsonschema

        validator = jsonschema.Draft202012Validator(load_schema())
        for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
            found.add(_translate_error(error, prefix))


def _is_validation_error(obj: Any) -> bool:
    import jsonschema

    return isinstance(obj, jsonschema.ValidationError)


def _translate_error(error: Any, prefix: str) -> str:
    """A jsonschema ValidationError → "<key.path>: got X — expected Y"."""
    path = prefix + ".".join(str(p) for p in error.absolute_path)
    validator = error.validator
    if validator == "required":
        missing = re.findall(r"'([^']+)'", error.message)
        key = f"{path}.{missing[0]}" if path and missing else (missing[0] if missing else path)
        if key.endswith("modelo.base") or key.endswith("modelo"):
            return f"{prefix}{MISSING_BASE}"
        return f"{key}: required — add it"
    if validator == "additionalProperties":
        extra = re.findall(r"'([^']+)'", error.message)
        return f"{path}.{extra[0] if extra else '?'}: unknown key — remove it (see docs/config.md)"
    if validator == "propertyNames":
        return f"{path}.{error.instance}: invalid name — use only letters, digits, '.', '-' and '_'"
    if path.endswith("modelo.base") and error.instance in ("", None):
        return f"{prefix}{MISSING_BASE}"
    schema = _property_schema(error)
    return f"{path or 'config'}: got {_show(error.instance)} — expected {_expected(schema)}"


def _property_schema(error: Any) -> dict:
    """The schema of the key at fault (for anyOf branches, the parent that lists them)."""
    schema = load_schema()
    node = schema
    for part in error.absolute_path:
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return dict(error.schema)
    return node


def _expected(schema: dict) -> str:
    """Describe what a schema accepts, in words ("an integer >= 1", "one of auto, bf16")."""
    if "anyOf" in schema:
        return " or ".join(_expected(option) for option in schema["anyOf"])
    if "enum" in schema:
        return "one of " + ", ".join(str(v) for v in schema["enum"])
    if "const" in schema:
        return repr(schema["const"])
    types = schema.get("type", "value")
    types = [types] if isinstance(types, str) else types
    names = {
        "integer": "an integer",
        "number": "a number",
        "string": "a text",
        "boolean": "true or false",
        "object": "a mapping",
        "array": "a list",
        "null": "null",
    }
    text = " or ".join(names.get(t, t) for t in types)
    bounds = []
    for word, sign in (
        ("minimum", ">="),
        ("exclusiveMinimum", ">"),
        ("maximum", "<="),
        ("exclusiveMaximum", "<"),
    ):
        if word in schema:
            bounds.append(f"{sign} {schema[word]}")
    if "minLength" in schema:
        bounds.append("not empty")
    if "pattern" in schema:
        bounds.append("like " + ("'15%'" if "%" in schema["pattern"] else f"/{schema['pattern']}/"))
    if schema.get("type") == "array":
        item_type = schema.get("items", {}).get("type")
        text = {"string": "a list of names", "integer": "a list of integers"}.get(item_type, "a list")
        bounds = ["not empty"] if schema.get("minItems") else []
    return " ".join([text, ", ".join(bounds)]).strip()


def _fill_missing_defaults(cfg: dict, schema: dict) -> None:
    """Defaults for sections snakemake's filler skipped because validation stopped early (collect mode)."""
    for key, sub in schema.get("properties", {}).items():
        if key not in cfg and "default" in sub:
            cfg[key] = copy.deepcopy(sub["default"])
        if isinstance(cfg.get(key), dict) and "properties" in sub:
            _fill_missing_defaults(cfg[key], sub)


def _finish(cfg: dict) -> None:
    """Last canonical touches once defaults are in: float proportions and keys in the schema's order."""
    _order(cfg, load_schema())
    prop = cfg.get("pastas", {}).get("divisao", {}).get("proporcao")
    if isinstance(prop, dict):
        for split in SPLITS:
            if isinstance(prop.get(split), int):
                prop[split] = float(prop[split])
    t = cfg.get("treinamento", {})
    if isinstance(t.get("learning_rate"), int):
        t["learning_rate"] = float(t["learning_rate"])
    validacao = cfg.get("pastas", {}).get("validacao")
    if isinstance(validacao, dict) and validacao.get("exigir_json_valido") is None:
        # formato_saida is the one switch: plain-text answers need no JSON unless asked (issue 13)
        validacao["exigir_json_valido"] = cfg.get("formatos", {}).get("formato_saida") == "json"


def _order(data: dict, schema: dict) -> None:
    """Reorder keys as the schema lists them, so dumps of the config (report, inspect) read the same way."""
    props = schema.get("properties", {})
    keys = [k for k in props if k in data] + [k for k in data if k not in props]
    items = {k: data.pop(k) for k in keys}
    data.update(items)
    for key, sub in props.items():
        if isinstance(data.get(key), dict) and "properties" in sub:
            _order(data[key], sub)
