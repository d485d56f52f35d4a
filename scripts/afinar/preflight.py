"""Checks that catch a new user's dead ends before any job: base models, masks, the answers' format.

Each of these used to surface late: a Hub model id offline spent ~100 s in Hub retries after the data
stages and ended with "cannot load the tokenizer"; a mask that matched no file passed ``validate``;
plain-text answers under the default JSON requirement stopped the pair job with a hint that would
have skipped every record. ``python -m afinar validate``/``inspect`` print these checks, and the
workflow's ``onstart`` runs the model check before the first job.

Everything here is read-only and quick: no model is loaded, at most a few hundred answer files are
read, and the Hub is probed with one TCP connection that gives up after a few seconds.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from afinar.errors import AfinarError

HUB_TIMEOUT_S = 3.0
ANSWER_SAMPLE = 200  # answer files read by validate to judge their format
BUILT_BY_WORKFLOW = "results/"  # a base under results/ is an output of a rule (the demo model)
TRUE_WORDS = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class ModelSource:
    """Where a base model will come from: ``local``, ``built``, ``cache``, ``download`` or ``missing``."""

    kind: str
    detail: str

    @property
    def usable(self) -> bool:
        return self.kind != "missing"


# --------------------------------------------------------------------------------------------- models


def hub_offline() -> bool:
    """HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE set to a true value: the Hub must not be contacted."""
    return any(
        os.environ.get(name, "").strip().lower() in TRUE_WORDS
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as the libraries compute it (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/...)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or "https://huggingface.co"


def hub_reachable(timeout_s: float = HUB_TIMEOUT_S) -> bool:
    """One TCP connection to the Hub's host, abandoned after ``timeout_s`` (name lookup included).

    The hub client retries for about 100 s before giving up; this answers "can a download work at all"
    in a few seconds, which is all a check before the first job needs.
    """
    url = urlparse(hub_endpoint())
    host = url.hostname or ""
    port = url.port or (80 if url.scheme == "http" else 443)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(result and result[0])


def looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; ./x, /x, ~/x, a/b/c and results/... are local paths."""
    return name.startswith((".", "/", "~", BUILT_BY_WORKFLOW)) or name.count("/") > 1 or "\\" in name


def cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of a Hub model (with a config.json), or None when it is not cached."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=str(hub_cache_dir()))
    except Exception:  # noqa: BLE001 - an invalid repo id is simply "not cached"
        return None
    return Path(found).parent if isinstance(found, str) else None


def model_source(base: str, hub: bool | None = None) -> ModelSource:
    """Where ``base`` comes from. ``hub`` says whether downloads can work (None: probe when needed)."""
    path = Path(base).expanduser()
    if path.is_dir():
        return ModelSource("local", f"local folder {base}")
    if base.startswith(BUILT_BY_WORKFLOW):
        return ModelSource("built", f"{base}, built by a rule of this workflow")
    if path.exists() or looks_like_path(base):
        what = "is a file, not a folder" if path.exists() else "does not exist"
        return ModelSource(
            "missing",
            f"folder {base!r} {what} (relative paths start at {Path.cwd()}) — fix the path or give a "
            "Hugging Face model id",
        )
    snapshot = cached_snapshot(base)
    if snapshot is not None:
        return ModelSource("cache", f"{base}, in the local Hugging Face cache ({snapshot})")
    if hub_offline():
        why = "HF_HUB_OFFLINE is set"
    elif hub is False or (hub is None and not hub_reachable()):
        why = f"the Hub ({hub_endpoint()}) is unreachable from here"
    else:
        return ModelSource("download", f"{base}, not cached: will be downloaded from {hub_endpoint()}")
    return ModelSource(
        "missing",
        f"{base} is neither a local folder nor in the Hugging Face cache ({hub_cache_dir()}) and {why} — "
        f"download it first with `hf download {base}` (where there is network; copy the cache over if this "
        "machine has none) or point modelo.base to a local folder",
    )


def model_sources(exps: dict[str, dict]) -> dict[str, ModelSource]:
    """Per experiment, where its base model comes from (the Hub is probed at most once)."""
    hub: bool | None = None
    out: dict[str, ModelSource] = {}
    for name, exp in exps.items():
        base = str(exp["modelo"]["base"])
        needs_hub = not looks_like_path(base) and not Path(base).exists() and not hub_offline()
        if needs_hub and hub is None and cached_snapshot(base) is None:
            hub = hub_reachable()
        out[name] = model_source(base, hub)
    return out


def check_models_available(exps: dict[str, dict], only: set[str] | None = None) -> None:
    """Raise one line for the first experiment (of ``only``, when given) whose base model cannot be had."""
    chosen = {n: e for n, e in exps.items() if only is None or n in only}
    for name, source in model_sources(chosen).items():
        if not source.usable:
            prefix = "modelo.base" if len(exps) == 1 else f"experiment {name}: modelo.base"
            raise AfinarError(f"{prefix}: {source.detail}")


def check_quantized_training_has_gpu(exps: dict[str, dict], training: set[str], has_gpu: bool) -> None:
    """A run on this machine (the local executor) whose planned training loads its base in 4/8 bits needs a
    CUDA GPU here. ``nbits: 4`` is the default (the original tool's), so a first run on a laptop would
    otherwise do the data stages and stop only when the train job starts."""
    if has_gpu:
        return
    for name in sorted(training):
        nbits = exps[name]["treinamento"]["nbits"]
        if nbits in (4, 8):
            prefix = "treinamento.nbits" if len(exps) == 1 else f"experiment {name}: treinamento.nbits"
            raise AfinarError(
                f"{prefix}: {nbits} (4/8-bit loading, bitsandbytes) needs a CUDA GPU and this machine has none "
                "— set treinamento.nbits: 0 to train on the CPU, or run where the GPUs are "
                "(e.g. --profile profiles/slurm)"
            )


# Rules whose jobs load the experiment's base model (or its tokenizer).
MODEL_RULES = frozenset({"filter_tokens", "train", "predict", "predict_base", "export_merged", "export_gguf"})


def experiments_needing_models(jobs: Any) -> set[str]:
    """The ``{exp}`` wildcards of the planned jobs that load a base model (Snakemake DAG jobs)."""
    names: set[str] = set()
    for job in jobs:
        exp = getattr(job, "wildcards", {}).get("exp") if hasattr(job, "wildcards") else None
        if exp and job.rule.name in MODEL_RULES:
            names.add(str(exp))
    return names


# --------------------------------------------------------------------------------------------- data


def resolved(value: str) -> str:
    """``'x' (relative to /cwd)``: where a relative path was looked for (the working directory)."""
    return f"{value!r}" if Path(value).is_absolute() else f"{value!r} (relative to {Path.cwd()})"


def mask_problems(cfg: dict) -> list[str]:
    """A mask that matches no file in an existing folder (pairing would stop on it; validate said ok)."""
    from afinar.data.pairing import glob_mask, list_files

    if cfg["formatos"]["tipo_entrada"] != "pastas":
        return []
    p = cfg["pastas"]
    blocks = [("predicao", p["predicao"])]
    if not p["entrada"]["dataframe"]:
        blocks.append(("entrada", p["entrada"]))
    found = []
    for sub, block in blocks:
        folder = str(block["pasta"] or "")
        if not folder or not Path(folder).is_dir():
            continue  # reported by check_paths
        try:
            files = list_files(folder, block["mascara"], f"pastas.{sub}")
        except AfinarError as exc:
            found.append(str(exc))
            continue
        if not files:
            others = sorted(e.name for e in Path(folder).iterdir() if e.is_file())
            held = (
                f"it holds {len(others)} other file(s), e.g. {', '.join(others[:3])}"
                if others
                else "it is empty"
            )
            found.append(
                f"pastas.{sub}.mascara: {glob_mask(block['mascara'], sub)!r} matches no file in {resolved(folder)} "
                f"({held}) — fix the mask or the folder"
            )
    return found


def answer_format_problems(cfg: dict, sample: int = ANSWER_SAMPLE) -> list[str]:
    """When JSON answers are required but most answer files are not JSON, name the key that fixes it.

    Reads the first ``sample`` answer files only: enough to tell a format mismatch (all or most fail
    the same way) from a few bad files, which the pair stage lists one by one.
    """
    from afinar.data.answers import normalize_answer
    from afinar.data.pairing import invalid_hint, list_files, read_text

    if cfg["formatos"]["tipo_entrada"] != "pastas":
        return []
    validacao, predicao = cfg["pastas"]["validacao"], cfg["pastas"]["predicao"]
    if not validacao["exigir_json_valido"] or not Path(str(predicao["pasta"] or "")).is_dir():
        return []
    try:
        files = list_files(predicao["pasta"], predicao["mascara"], "pastas.predicao")[:sample]
    except AfinarError:
        return []
    reasons = []
    for path in files:
        text, _ = read_text(path)
        answer = normalize_answer(text or "", True, cfg["formatos"]["formato_saida"] == "json")
        if not answer.ok:
            reasons.append(answer.reason)
    hint = invalid_hint(reasons, len(files), cfg["formatos"]) if files else ""
    if not files or hint.startswith("fix or remove"):
        return []
    read = f"of the first {len(files)}" if len(files) == sample else f"of {len(files)}"
    return [f"pastas.predicao: {len(reasons)} {read} answer files fail the JSON check — {hint}"]
