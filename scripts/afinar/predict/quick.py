"""``python -m afinar predict CONFIG -n N``: a quick look at what the model answers (the seed's ``--modelo N``).

Fixed against the seed (bug B17): it predicts the first N records of the **test** split (never training
examples), loads the data once, uses the experiment's ``predicao`` settings, shows each prompt with the
expected and generated answers side by side with its ROUGE-L, and saves everything to a JSON file
(default ``results/{exp}/predicoes/cli_n{N}.json``). When no trained adapter exists it asks whether to
use the base model — only on a terminal; scripts pass ``--base`` (or ``--yes``).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from afinar import layout
from afinar.errors import AfinarError

log = logging.getLogger("afinar.predict.quick")

HEAD = TAIL = 250  # characters kept of a long text on screen (the seed's rule)
YES = {"s", "sim", "y", "yes"}
Ask = Callable[[str, str], str]


def shorten(text: str, head: int = HEAD, tail: int = TAIL) -> str:
    """Texts longer than ``head + tail`` characters → first ``head`` + `` [...] `` + last ``tail``."""
    text = text or ""
    if len(text) <= head + tail:
        return text
    return f"{text[:head]} [...] {text[-tail:]}"


def _wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    for paragraph in (text or "").splitlines() or [""]:
        lines.extend(textwrap.wrap(paragraph, width, replace_whitespace=False, drop_whitespace=True) or [""])
    return lines


def side_by_side(left: str, right: str, width: int, titles: tuple[str, str] = ("ESPERADO", "GERADO")) -> str:
    """Two texts in two columns of ``width`` total characters (stacked when the terminal is narrow)."""
    if width < 70:
        return f"{titles[0]}:\n{left}\n{titles[1]}:\n{right}"
    col = (width - 3) // 2
    a, b = _wrap(left, col), _wrap(right, col)
    rows = [f"{titles[0]:<{col}} │ {titles[1]}", f"{'─' * col}─┼─{'─' * col}"]
    for i in range(max(len(a), len(b))):
        rows.append(f"{(a[i] if i < len(a) else ''):<{col}} │ {b[i] if i < len(b) else ''}")
    return "\n".join(rows)


def format_example(i: int, n: int, item: dict[str, Any], width: int) -> str:
    """One example as printed: header with scores and counts, the prompt, then expected | generated."""
    rl = item["rouge_l"]
    flags = []
    if item.get("truncado"):
        flags.append("prompt truncated")
    if item.get("limite_atingido"):
        flags.append("stopped at max_new_tokens")
    if not item.get("gerado"):
        flags.append("EMPTY answer")
    header = (
        f"[{i}/{n}] id {item['id']} — ROUGE-L P {rl['precision']:.3f} R {rl['recall']:.3f} F1 {rl['f1']:.3f}"
        f" | tokens: prompt {item['tokens_prompt']}, answer {item['tokens_saida']} | {item['segundos']:.2f} s"
        + (f" | {', '.join(flags)}" if flags else "")
    )
    rule = "═" * min(width, max(len(header), 40))
    prompt = "\n".join(_wrap(shorten(item["prompt"]), max(width - 2, 20)))
    body = side_by_side(shorten(item["esperado"]), shorten(item["gerado"]), width)
    return f"{rule}\n{header}\n{rule}\nPROMPT:\n{prompt}\n\n{body}\n"


def choose_experiment(exps: dict[str, dict], name: str | None) -> str:
    """The experiment to use: ``--exp`` or the only one; several without ``--exp`` is an error listing them."""
    if name:
        from afinar.config import experiment_id

        name = name if name in exps else experiment_id(name)  # the name as written, or its folder id
        if name not in exps:
            raise AfinarError(f"--exp {name}: no such experiment — choose one of: {', '.join(exps)}")
        return name
    if len(exps) > 1:
        raise AfinarError(
            f"the config defines {len(exps)} experiments — choose one with --exp ({', '.join(exps)})"
        )
    return next(iter(exps))


def use_base_model(
    adapter_dir: Path, has_adapter: bool, base_flag: bool, yes: bool, ask: Ask | None, interactive: bool
) -> bool:
    """Decide base vs trained model. ``--base`` always means base; no adapter asks (terminal only)."""
    if base_flag:
        return True
    if has_adapter:
        return False
    if yes:
        log.warning("%s: no trained adapter; --yes given, so the base model is used", adapter_dir)
        return True
    if ask is None and interactive:
        from afinar.config.interactive import tty_ask

        ask = tty_ask
    if ask is None:
        raise AfinarError(
            f"{adapter_dir}: no trained adapter — train it (`snakemake {adapter_dir}`) or pass --base to predict "
            "with the base model"
        )
    answer = ask(f"No trained adapter in {adapter_dir}. Use the base model? [s/N]", "N")
    if answer.strip().lower() not in YES:
        raise AfinarError(
            f"{adapter_dir}: no trained adapter and the base model was declined — train it first"
        )
    return True


def run(
    cfg: dict,
    exp: str,
    n: int,
    base: bool,
    output: str | Path | None,
    results: str | Path = "results",
    ask: Ask | None = None,
    yes: bool = False,
    interactive: bool | None = None,
    out: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict ``n`` test records of experiment ``exp``, print them and write the JSON; returns its content."""
    from afinar.config import experiments
    from afinar.evaluate.metrics import rouge_l
    from afinar.io import atomic_write_json
    from afinar.predict.generation import (
        GenerationSettings,
        adapter_kind,
        generate_predictions,
        load_for_inference,
        read_test_split,
    )

    if n < 1:
        raise AfinarError(f"-n {n}: give the number of test records to predict (at least 1)")
    exps = experiments(cfg)
    settings_cfg = exps[exp]
    results = Path(results)
    test_split = layout.split_file("teste", results)
    if not test_split.exists():
        raise AfinarError(f"{test_split}: test split not found — build it first: `snakemake {test_split}`")
    adapter_dir = layout.exp_path(exp, layout.ADAPTER, results)
    if interactive is None:
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
    base_only = use_base_model(
        adapter_dir, adapter_kind(adapter_dir) is not None, base, yes, ask, interactive
    )
    settings = GenerationSettings.from_config(
        {**settings_cfg["predicao"], "n_exemplos": n}, settings_cfg["treinamento"]["max_seq_length"]
    )
    records = read_test_split(test_split, n)
    if len(records) < n:
        log.warning("the test split has only %d records; predicting all of them", len(records))
    t0 = time.perf_counter()
    loaded = load_for_inference(
        settings_cfg["modelo"]["base"],
        None if base_only else adapter_dir,
        settings_cfg["treinamento"]["backend"],
        int(settings_cfg["treinamento"]["nbits"] or 0),
        settings.max_seq_length,
    )
    load_seconds = time.perf_counter() - t0
    predictions = generate_predictions(
        loaded.model, loaded.tokenizer, records, settings, desc="predict (cli)", progress=progress
    )
    items = []
    for p in predictions:
        item = p.as_row()
        rl = rouge_l(p.gerado, p.esperado)
        item["rouge_l"] = {"precision": rl.precision, "recall": rl.recall, "f1": rl.f1}
        items.append(item)
    width = min(shutil.get_terminal_size((120, 24)).columns, 160)
    for i, item in enumerate(items, start=1):
        out(format_example(i, len(items), item, width))
    f1s = [it["rouge_l"]["f1"] for it in items]
    summary = {
        "rouge_l_f1_medio": sum(f1s) / len(f1s),
        "tokens_saida_total": sum(it["tokens_saida"] for it in items),
        "segundos_geracao": sum(it["segundos"] for it in items),
        "segundos_carga_modelo": round(load_seconds, 2),
        "vazios": sum(1 for it in items if not it["gerado"]),
        "truncados": sum(1 for it in items if it["truncado"]),
    }
    result = {
        "experimento": exp,
        "modelo": loaded.source,
        "modelo_base": settings_cfg["modelo"]["base"],
        "adapter": None if base_only else str(adapter_dir),
        "backend": loaded.backend,
        "predicao": {
            "batch_size": settings.batch_size,
            "max_new_tokens": settings.max_new_tokens,
            "temperatura": settings.temperatura,
            "top_p": settings.top_p,
            "max_seq_length": settings.max_seq_length,
        },
        "n": len(items),
        "resumo": summary,
        "registros": items,
    }
    path = (
        Path(output)
        if output
        else results / exp / "predicoes" / f"cli_n{n}{'_base' if base_only else ''}.json"
    )
    atomic_write_json(path, result, mode=0o600)  # holds decrypted prompts and answers
    out(
        f"{len(items)} example(s) with the {loaded.source} model: mean ROUGE-L F1 {summary['rouge_l_f1_medio']:.3f}, "
        f"{summary['tokens_saida_total']} answer tokens in {summary['segundos_geracao']:.1f} s → {path}"
    )
    return result


def main(args: argparse.Namespace) -> int:
    """Called by ``afinar.cli`` with fields config, n, exp, base, yes, output (and log_level, ask)."""
    from afinar.config import experiments, load_config, read_yaml
    from afinar.logs import setup_logging

    raw = read_yaml(args.config)
    cfg = load_config(raw)
    level = getattr(args, "log_level", None) or cfg["misc"]["log_level"]
    setup_logging(level)
    exp = choose_experiment(experiments(cfg), getattr(args, "exp", None))
    run(
        cfg,
        exp,
        int(args.n),
        bool(getattr(args, "base", False)),
        getattr(args, "output", None),
        results=getattr(args, "results", "results"),
        ask=getattr(args, "ask", None),
        yes=bool(getattr(args, "yes", False)),
    )
    return 0
