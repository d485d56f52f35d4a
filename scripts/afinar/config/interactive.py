"""``validate --interactive``: fix missing or wrong config values by asking, keeping the file's comments.

The original's interactive validator looked only at ``base_model_name`` (not ``base``), read list-form
proportions in the wrong order, crashed on the recommended list-of-mappings form and saved with
``yaml.safe_dump``, which dropped every comment (bug B12). Here the file is edited with ruamel.yaml's
round-trip mode, so comments, key order and quoting survive, proportions are written back in the form
the user chose, and nothing is saved without a yes.

Questions go through an ``ask(question, default) -> answer`` callable, so tests drive it with scripted
answers and the CLI never prompts without a terminal.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from afinar.config import SPLIT_NAMES, SPLITS, load_schema, parse_proporcao, suggest_key
from afinar.errors import AfinarError
from afinar.io import atomic_write_text
from afinar.preflight import looks_like_path, model_source, resolved

Ask = Callable[[str, str], str]
Out = Callable[[str], None]

TEMPLATES = Path(__file__).resolve().parent / "templates"
PRESETS = (
    "unsloth/Qwen2.5-0.5B-Instruct",
    "unsloth/Qwen2.5-1.5B-Instruct",
    "unsloth/Qwen2.5-3B-Instruct",
    "unsloth/Qwen2.5-7B-Instruct",
    "unsloth/gemma-3-4b-it",
    "unsloth/Llama-3.2-1B-Instruct",
    "unsloth/Llama-3.2-3B-Instruct",
    "unsloth/DeepSeek-R1-Distill-Qwen-1.5B",
    "unsloth/DeepSeek-R1-Distill-Qwen-7B",
)
MAX_SEQ_SANE, BATCH_SANE = 8192, 8
ATTEMPTS = 3  # wrong answers in a row before giving up (a script feeding the same answer must not loop)
YES = {"s", "sim", "y", "yes"}


def tty_ask(question: str, default: str) -> str:
    """input() with the default shown; Enter, Ctrl-D and Ctrl-C keep the default."""
    try:
        answer = input(f"{question} [{default}]: " if default else f"{question}: ").strip()
    except (EOFError, KeyboardInterrupt):
        print()
        return default
    return answer or default


def create_template(path: Path, ask: Ask, out: Out = print) -> bool:
    """Offer to write a commented template at ``path`` (missing config); True when written."""
    if ask(f"{path} does not exist. Write a commented template there? (s/n)", "s").lower() not in YES:
        out("nothing written")
        return False
    mode = ask("Input mode: pastas (folders of files) or dataset (ready files)?", "pastas").strip().lower()
    if mode not in ("pastas", "dataset"):
        raise AfinarError(f"{mode!r}: answer pastas or dataset")
    answers = _choose(
        ask,
        "Answer format: json (each expected answer is a JSON object) or texto (plain text)?",
        "json" if mode == "pastas" else "texto",
        ("json", "texto"),
    )
    text = (TEMPLATES / f"config_{mode}.yaml").read_text(encoding="utf-8")
    text = re.sub(r"(?m)^(  formato_saida: )(json|texto)( *)", rf"\g<1>{answers}\g<3>", text, count=1)
    atomic_write_text(path, text)
    out(f"template written: {path} — now the values it still needs")
    return True


def fix_config(path: str | Path, ask: Ask, out: Out = print) -> list[str]:
    """Ask about what is missing or wrong in ``path`` and save the answers (after confirmation).

    Returns the list of changes made (empty when nothing changed or the user declined to save).
    """
    path = Path(path)
    yaml = _yaml()
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001 - ruamel raises many parser error types
        raise AfinarError(
            f"{path}: malformed YAML ({str(exc).splitlines()[0]}) — fix the syntax first"
        ) from None
    if doc is None:
        doc = CommentedMap()
    if not isinstance(doc, CommentedMap):
        raise AfinarError(f"{path}: the top level must be a mapping of sections")
    changes: list[str] = []
    _fix_unknown_keys(doc, ask, changes)
    _fix_base_model(doc, ask, out, changes)
    mode = _section(doc, "formatos").get("tipo_entrada") or ("pastas" if "pastas" in doc else "dataset")
    if mode == "pastas":
        _fix_folders(doc, ask, out, changes)
        _fix_template(doc, ask, out, changes)
        _fix_proportions(doc, ask, out, changes)
    _fix_sizes(doc, ask, changes)
    if not changes:
        out("nothing to fix interactively")
        return []
    out("changes:\n" + "\n".join(f"  - {c}" for c in changes))
    if ask(f"Save these changes to {path}? (s/n)", "s").lower() not in YES:
        out("not saved")
        return []
    buffer = io.StringIO()
    yaml.dump(doc, buffer)
    atomic_write_text(path, buffer.getvalue())
    out(f"saved {path}")
    return changes


# --------------------------------------------------------------------------------------------- fixers


def _fix_unknown_keys(doc: CommentedMap, ask: Ask, changes: list[str]) -> None:
    """Offer the "did you mean" rename for misspelled keys (aliases are left alone: they are valid)."""
    schema = load_schema()

    def walk(node: CommentedMap, sub: dict, prefix: str) -> None:
        props = sub.get("properties", {})
        for key in list(node):
            path = f"{prefix}{key}"
            if key in props:
                if (
                    isinstance(node[key], CommentedMap)
                    and "properties" in props[key]
                    and key not in ("experimentos", "proporcao")
                ):
                    walk(node[key], props[key], f"{path}.")
                continue
            if sub.get("additionalProperties") is not False or _is_alias(path):
                continue
            hint = suggest_key(str(key), props, path)
            if hint.startswith("did you mean '"):
                new = hint.split("'")[1]
                if (
                    new not in node
                    and ask(f"{path}: unknown key — rename it to {new}? (s/n)", "s").lower() in YES
                ):
                    _rename(node, key, new)
                    changes.append(f"{path} → {prefix}{new}")

    walk(doc, schema, "")


def _fix_base_model(doc: CommentedMap, ask: Ask, out: Out, changes: list[str]) -> None:
    modelo = _section(doc, "modelo")
    key = "base" if "base" in modelo or "base_model_name" not in modelo else "base_model_name"
    if str(modelo.get("base") or modelo.get("base_model_name") or "").strip():
        return
    out(
        "modelo.base is missing. Presets:\n"
        + "\n".join(f"  {i}. {name}" for i, name in enumerate(PRESETS, 1))
    )
    for _ in range(ATTEMPTS):
        answer = ask("Base model (number, Hugging Face id or local folder)", "1").strip()
        value = PRESETS[int(answer) - 1] if answer.isdigit() and 1 <= int(answer) <= len(PRESETS) else answer
        if not value:
            return
        if looks_like_path(value) and not Path(value).expanduser().is_dir():
            out(f"  folder {resolved(value)} does not exist — give another one (or a Hugging Face id)")
            continue
        modelo[key] = value
        changes.append(f"modelo.{key} = {value}")
        if not looks_like_path(value):
            out(f"  {model_source(value).detail}")
        return
    raise AfinarError(f"modelo.{key}: {ATTEMPTS} answers were not existing folders — nothing saved")


def _fix_folders(doc: CommentedMap, ask: Ask, out: Out, changes: list[str]) -> None:
    pastas = _section(doc, "pastas")
    targets = [("predicao", "expected-output files")]
    entrada = pastas.get("entrada") if isinstance(pastas.get("entrada"), dict) else {}
    dataframe = entrada.get("dataframe")
    if isinstance(dataframe, bool):
        answer = ask(
            "pastas.entrada.dataframe must be the parquet PATH, not true/false — path (empty = use pasta)", ""
        )
        entrada["dataframe"] = answer.strip()
        changes.append(f"pastas.entrada.dataframe = {answer.strip()!r}")
    elif not dataframe:
        targets.append(("entrada", "input files"))
    for sub, what in targets:
        block = _section(pastas, sub)
        folder = str(block.get("pasta") or "")
        if folder and Path(folder).is_dir():
            continue
        state = "is not set" if not folder else f"'{folder}' does not exist"
        choice = ask(
            f"pastas.{sub}.pasta ({what}) {state}: [n]ew path, [c]reate it empty, [i]gnore", "i"
        ).lower()
        if choice.startswith("n"):
            new = _ask_existing(ask, out, f"pastas.{sub}.pasta", folder, "folder")
            block["pasta"] = new
            changes.append(f"pastas.{sub}.pasta = {new}")
        elif choice.startswith("c") and folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            out(f"created empty folder {folder}")


def _fix_template(doc: CommentedMap, ask: Ask, out: Out, changes: list[str]) -> None:
    entrada = _section(_section(doc, "pastas"), "entrada")
    template = str(entrada.get("prompt_template") or "")
    if not template or Path(template).is_file():
        if template and not entrada.get("tag_texto"):
            tag = ask("pastas.entrada.tag_texto (placeholder the text replaces)", "<<--TEXTO-->>")
            entrada["tag_texto"] = tag
            changes.append(f"pastas.entrada.tag_texto = {tag}")
        return
    choice = ask(
        f"prompt_template '{template}' does not exist: [n]ew path, [r]emove template and tag, [i]gnore", "i"
    ).lower()
    if choice.startswith("n"):
        new = _ask_existing(ask, out, "pastas.entrada.prompt_template", template, "file")
        entrada["prompt_template"] = new
        changes.append(f"pastas.entrada.prompt_template = {new}")
    elif choice.startswith("r"):
        entrada["prompt_template"] = ""
        entrada["tag_texto"] = ""
        changes.append("pastas.entrada.prompt_template and tag_texto removed")


def _fix_proportions(doc: CommentedMap, ask: Ask, out: Out, changes: list[str]) -> None:
    """Re-ask proportions that are invalid or do not sum to 1, and write them back in the same form."""
    divisao = _section(_section(doc, "pastas"), "divisao")
    if "proporcao" not in divisao:
        return
    original = divisao["proporcao"]
    reported: list[str] = []
    parsed = parse_proporcao(_plain(original), report=reported.append)
    if parsed and abs(sum(parsed.values()) - 1) <= 0.01 and min(parsed.values()) >= 0:
        return
    why = reported[0] if reported else f"sum is {sum(parsed.values()):.3g}, not 1"
    out(f"pastas.divisao.proporcao: {why}")
    defaults = parsed or {"treino": 0.7, "validacao": 0.1, "teste": 0.2}
    values = {}
    for split in SPLITS:
        answer = ask(f"proporção de {split}", f"{defaults[split]:g}")
        try:
            values[split] = float(answer.replace(",", "."))
        except ValueError:
            raise AfinarError(f"proporção de {split}: {answer!r} is not a number") from None
    if abs(sum(values.values()) - 1) > 0.01 or min(values.values()) < 0:
        raise AfinarError(
            f"pastas.divisao.proporcao: {values} must be non-negative and sum to 1 — nothing saved"
        )
    divisao["proporcao"] = _same_form(original, values)
    changes.append("pastas.divisao.proporcao = " + " / ".join(f"{s} {values[s]:g}" for s in SPLITS))


def _fix_sizes(doc: CommentedMap, ask: Ask, changes: list[str]) -> None:
    train = doc.get("treinamento")
    if not isinstance(train, dict):
        return
    for key, limit, offer in (("max_seq_length", MAX_SEQ_SANE, MAX_SEQ_SANE), ("batch_size", BATCH_SANE, 2)):
        value = train.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            if (
                ask(
                    f"treinamento.{key} is {value} (large: memory grows with it). Use {offer}? (s/n)", "n"
                ).lower()
                in YES
            ):
                train[key] = offer
                changes.append(f"treinamento.{key} = {offer}")


# --------------------------------------------------------------------------------------------- helpers


def _ask_existing(ask: Ask, out: Out, key: str, default: str, kind: str) -> str:
    """Ask for a path until it exists (a folder or a file); after ATTEMPTS wrong answers nothing is saved.

    The original saved whatever was typed, so a typo became a config that failed at the next run.
    """
    for _ in range(ATTEMPTS):
        answer = ask(key, default).strip()
        path = Path(answer).expanduser()
        if answer and (path.is_dir() if kind == "folder" else path.is_file()):
            return answer
        what = "is empty" if not answer else f"{resolved(answer)} is not an existing {kind}"
        out(f"  {key}: {what} — try again")
        default = ""
    raise AfinarError(f"{key}: {ATTEMPTS} answers were not an existing {kind} — nothing saved")


def _choose(ask: Ask, question: str, default: str, options: tuple[str, ...]) -> str:
    answer = ask(question, default).strip().lower()
    if answer not in options:
        raise AfinarError(f"{answer!r}: answer {' or '.join(options)}")
    return answer


def _yaml() -> YAML:
    yaml = YAML()  # round-trip: comments, order and quotes are kept
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 110
    return yaml


def _section(node: CommentedMap, key: str) -> CommentedMap:
    if not isinstance(node.get(key), dict):
        node[key] = CommentedMap()
    section: CommentedMap = node[key]
    return section


def _rename(node: CommentedMap, old: str, new: str) -> None:
    position = list(node).index(old)
    comment = node.ca.items.pop(old, None)
    value = node.pop(old)
    node.insert(position, new, value)
    if comment is not None:  # the end-of-line comment belongs to the key's line: keep it
        node.ca.items[new] = comment


def _is_alias(path: str) -> bool:
    return (
        path in ("modelo.base_model_name", "treinamento.num_train_epochs")
        or path.startswith("treinamento.lora_")
        or (path == "treinamento.target_modules")
    )


def _plain(value: Any) -> Any:
    """ruamel containers → plain dict/list for the parser."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _same_form(original: Any, values: dict[str, float]) -> Any:
    """Write proportions back as the user wrote them: list, "a, b, c", mapping or list of mappings."""
    if isinstance(original, str):
        return ", ".join(f"{values[s]:g}" for s in SPLITS)
    if isinstance(original, list) and original and all(isinstance(i, dict) for i in original):
        names = [str(next(iter(i))) for i in original]
        out = CommentedSeq()
        for split in SPLITS:
            name = next((n for n in names if _canonical(n) == split), split)
            item = CommentedMap()
            item[name] = values[split]
            out.append(item)
        return out
    if isinstance(original, dict):
        for key in list(original):
            canonical = _canonical(str(key))
            if canonical:
                original[key] = values[canonical]
        for split in SPLITS:
            if not any(_canonical(str(k)) == split for k in original):
                original[split] = values[split]
        return original
    seq = CommentedSeq(values[s] for s in SPLITS)
    if isinstance(original, CommentedSeq) and original.fa.flow_style():
        seq.fa.set_flow_style()
    return seq


def _canonical(name: str) -> str | None:
    return SPLIT_NAMES.get(name.strip().lower())
