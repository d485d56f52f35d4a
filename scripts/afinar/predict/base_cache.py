"""The base model's predictions, made by the ``predict`` job and handed to ``predict_base``.

Why: with ``predicao.comparar_base: true`` both prediction sets need the same base model; loading it
twice (30-40 s on a GPU job, before any work) doubles the cost of the comparison. The ``predict`` job
loads the base once, predicts with it first, then merges the adapter and predicts again. Its base
predictions go to ``results/{exp}/predicoes/.base_cache/<key>.jsonl``; ``predict_base`` copies that
file when the key matches and predicts itself otherwise (when it runs first, or alone).

The key covers everything that decides the base predictions: the test split's bytes, the base model
(its name, and for a local folder its files' sizes and times), the result-shaping settings the rules pass
as params, and the prediction code. Snakemake's rerun plan is unchanged: ``predict_base`` keeps its own
params and inputs, so retraining the adapter never reruns it, and a hit only makes it cheaper.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("afinar.predict.base_cache")

FOLDER = ".base_cache"
#: library modules whose code shapes the predictions (a change there must not reuse old ones)
CODE = (
    "predict/generation.py",
    "predict/decoding.py",
    "predict/batching.py",
    "train/models.py",
    "train/chat.py",
)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_fingerprint(base: str) -> Any:
    folder = Path(base)
    if not folder.is_dir():
        return base  # a hub id: its name (the hub cache is keyed by revision anyway)
    return sorted(
        (str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns)
        for f in folder.rglob("*")
        if f.is_file()
    )


def cache_key(test_split: str | Path, base: str, settings: dict[str, Any]) -> str:
    """Digest of what decides the base predictions (``settings``: the rule's result-shaping params)."""
    library = Path(__file__).resolve().parents[1]
    payload = {
        "test_split": _file_digest(Path(test_split)),
        "base": _model_fingerprint(base),
        "settings": settings,
        "code": {name: _file_digest(library / name) for name in CODE if (library / name).is_file()},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def cache_file(predictions_dir: str | Path, key: str) -> Path:
    return Path(predictions_dir) / FOLDER / f"{key}.jsonl"


def prune(path: Path) -> None:
    """Keep ``path`` as the only entry of its folder: older keys can never match again."""
    for old in path.parent.glob("*.jsonl"):
        if old != path:
            old.unlink(missing_ok=True)
    log.info("base-model predictions kept for predict_base in %s", path)


def reuse(path: Path, out_path: str | Path) -> bool:
    """Copy a matching cache entry to ``out_path`` (atomically, mode 0600); False when there is none."""
    from afinar.io import atomic_path

    if not path.is_file():
        return False
    with atomic_path(out_path, 0o600) as tmp:
        tmp.write_bytes(path.read_bytes())
    log.info(
        "reused the base-model predictions the predict job made with the same model, settings and test split"
    )
    return True
