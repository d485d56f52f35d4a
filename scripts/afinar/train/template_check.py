"""Can each experiment's chat template be masked for response-only loss? Answered before any job runs.

Training refuses a template whose answers cannot be told from the prompt, but that happens only when
the train job starts, possibly on a cluster GPU node after the data stages. ``validate`` and ``inspect``
run the same checks (:func:`afinar.train.chat.derive_markers` and the mask of a sample chat with a
system turn and two exchanges) wherever the base model's tokenizer is already here: a local folder or
the Hugging Face cache. Nothing is downloaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from afinar.errors import AfinarError
from afinar.train import chat

log = logging.getLogger("afinar.train.template_check")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
SAMPLE = [
    {"role": "system", "content": "Responda em JSON."},
    {"role": "user", "content": "Documento: recibo de Ana, Recife."},
    {"role": "assistant", "content": '{"nome": "Ana"}'},
    {"role": "user", "content": "E a cidade?"},
    {"role": "assistant", "content": '{"cidade": "Recife"}'},
]


def local_tokenizer(base: str) -> Any | None:
    """The tokenizer of ``base`` when it is here (folder or Hub cache), else None; never downloads."""
    path = Path(base).expanduser()
    if not path.exists():
        if base.startswith(("results/", ".", "/", "~")) or base.count("/") != 1:
            return None  # a folder a rule builds later (the demo or SmolLM2 model), or not a Hub id
        from afinar.preflight import cached_snapshot

        snapshot = cached_snapshot(base)
        if snapshot is None:
            return None
        path = snapshot
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        return None  # no tokenizer files: transformers would make up an empty tokenizer
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception:  # noqa: BLE001 - not a usable tokenizer: nothing to check here
        return None


def check_template(tokenizer: Any, base: str) -> str:
    """One line saying how answers are masked; raises AfinarError when the template cannot be masked."""
    source = chat.ensure_chat_template(tokenizer, base)
    markers = chat.derive_markers(tokenizer)
    try:
        enc = chat.tokenize_conversation(tokenizer, SAMPLE, markers)
    except AfinarError:
        raise
    except Exception as exc:  # a template that rejects a system turn, for example
        raise AfinarError(f"chat template: cannot render a chat with a system turn ({exc})") from None
    trained = [t for t, label in zip(enc["input_ids"], enc["labels"], strict=True) if label != -100]
    text = tokenizer.decode(trained)
    if '{"nome": "Ana"}' not in text or '{"cidade": "Recife"}' not in text or "Documento" in text:
        raise AfinarError("chat template: the answers of a sample chat are not masked exactly")
    origin = "its own template" if source == "tokenizer" else f"the {source} fallback template"
    return (
        f"{base}: {origin} masks the answers (they follow {markers.response_prefix!r} and end with "
        f"{markers.end_of_turn!r}, which is trained so the model learns to stop)"
    )


def template_report(exps: dict[str, dict]) -> tuple[list[str], list[str]]:
    """(problems, notes) for every experiment with ``train_on_responses_only`` on; each base checked once."""
    problems: list[str] = []
    notes: list[str] = []
    checked: dict[str, tuple[str | None, str]] = {}  # base → (error, note)
    for name, exp in exps.items():
        if not exp["treinamento"].get("train_on_responses_only", True):
            continue
        base = str(exp["modelo"]["base"])
        if base not in checked:
            tokenizer = local_tokenizer(base)
            if tokenizer is None:
                checked[base] = (
                    None,
                    f"{base}: tokenizer not here yet — its template is checked when training starts",
                )
            else:
                try:
                    checked[base] = (None, check_template(tokenizer, base))
                except AfinarError as exc:
                    checked[base] = (str(exc), "")
        error, note = checked[base]
        if error:
            problems.append(
                f"experiment {name}: modelo.base {base}: {error} (checked now, before any job; "
                "treinamento.train_on_responses_only: false trains on whole chats instead)"
            )
        elif note not in notes:
            notes.append(note)
    return problems, notes
