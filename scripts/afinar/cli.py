"""``python -m afinar``: check a config, look at the data it produces, list the files it pairs.

The original tool spread these over ``treinar_unsloth_util.py`` (validation, interactive fixing,
``--listar-arquivos``, which never worked) and ``treinar_unsloth.py --debug`` / ``--modelo N``. Here they
are subcommands of one entry point that never trains and never writes results: it reads the config and
whatever the workflow has already written under ``results/``. Run it from the directory where you run
snakemake, because relative paths in the config start there.

Every user problem ends as one line ``afinar: error: ...`` and exit status 1, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from afinar import __version__, layout, preflight
from afinar.config import (
    SPLITS,
    check_env,
    check_paths,
    experiments,
    load_config,
    problems,
    read_yaml,
    summary,
)
from afinar.errors import AfinarError
from afinar.logs import LEVELS, setup_logging

log = logging.getLogger("afinar.cli")

Ask = Callable[[str, str], str]
HEAD, TAIL = 400, 150  # characters shown of a long text (the seed's --debug did the same)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (a function so tests and docs can inspect it)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        type=str.upper,
        choices=LEVELS,
        default=argparse.SUPPRESS,
        help="overrides misc.log_level of the config",
    )
    parser = argparse.ArgumentParser(
        prog="python -m afinar",
        description="Afinar: check a fine-tuning config and inspect its data (run from the snakemake directory).",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"afinar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "validate",
        parents=[common],
        help="print the config summary and every problem at once",
        description="Print the config summary and every problem at once; exit 1 if there is any.",
    )
    p.add_argument("config", metavar="CONFIG", help="YAML config file")
    p.add_argument(
        "-i",
        "--interactive",
        action="store_true",
        help="ask how to fix missing or wrong values and save them (keeps comments); writes a template if CONFIG is missing",
    )
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser(
        "inspect",
        parents=[common],
        help="config, file status, pairing counts, split samples and token statistics (the seed's --debug)",
    )
    p.add_argument("config", metavar="CONFIG")
    p.add_argument("--results", default="results", help="results folder of the workflow (default: results)")
    p.add_argument("--show-text", action="store_true", help="show texts even when the source is encrypted")
    p.set_defaults(handler=cmd_inspect)

    p = sub.add_parser(
        "list-files", parents=[common], help="paired files and unpaired ids (the seed's --listar-arquivos)"
    )
    p.add_argument("config", metavar="CONFIG")
    p.add_argument("--all", action="store_true", help="list every pair (default: the first 20)")
    p.set_defaults(handler=cmd_list_files)

    p = sub.add_parser(
        "predict",
        parents=[common],
        help="predict N test records and show them next to the expected answers (the seed's --modelo N)",
    )
    p.add_argument("config", metavar="CONFIG")
    p.add_argument("-n", "--n", type=int, default=1, help="number of test records (default 1)")
    p.add_argument("--exp", default=None, help="experiment name (default: the only one)")
    p.add_argument("--base", action="store_true", help="use the base model, without the trained adapter")
    p.add_argument("--yes", action="store_true", help="answer yes to questions (for scripts)")
    p.add_argument("--output", default=None, help="JSON file for the results")
    p.set_defaults(handler=cmd_predict)
    return parser


def main(argv: list[str] | None = None, ask: Ask | None = None) -> int:
    """Entry point; returns the exit status. ``ask`` replaces ``input()`` in the interactive mode (tests)."""
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "log_level", "INFO"))
    args.ask = ask
    try:
        return int(args.handler(args) or 0)
    except AfinarError as exc:
        print(f"afinar: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("afinar: interrupted", file=sys.stderr)
        return 130


# --------------------------------------------------------------------------------------------- commands


def cmd_validate(args: argparse.Namespace) -> int:
    path = Path(args.config)
    if args.interactive:
        from afinar.config import interactive

        ask = args.ask or (interactive.tty_ask if sys.stdin.isatty() else None)
        if ask is None:
            print("no terminal: --interactive asks nothing; validating only")
        elif not path.exists():
            if not interactive.create_template(path, ask, print):
                return 1
            interactive.fix_config(path, ask, print)
        else:
            interactive.fix_config(path, ask, print)
    raw = read_yaml(path)
    _apply_log_level(raw, args)
    found = problems(raw)
    try:
        cfg: dict | None = load_config(raw)
    except AfinarError:
        cfg = None
    sources: list[tuple[bool, str]] = []
    if cfg is not None:
        found += [
            p for p in preflight.mask_problems(cfg) + preflight.answer_format_problems(cfg) if p not in found
        ]
        sources = model_lines(cfg)
        found += [line for usable, line in sources if not usable]
    template_notes: list[str] = []
    if (
        cfg is not None and not found
    ):  # each base model here: can its chat template be masked? (before any job)
        from afinar.train.template_check import template_report

        found, template_notes = template_report(experiments(cfg))
    if not found:
        assert cfg is not None
        print(summary(cfg))
        for _, line in sources:
            print(f"  {line}")
        for note in template_notes:
            print(f"  chat template: {note}")
        names = ", ".join(experiments(cfg))
        print(f"\nConfiguração válida! {path} ({names})")
        return 0
    print(f"{path}: {len(found)} problem(s):")
    for line in found:
        print(f"  - {line}")
    hint = (
        "" if args.interactive else f" — `python -m afinar validate {path} --interactive` fixes some of them"
    )
    print(f"afinar: error: {path}: {len(found)} problem(s){hint}", file=sys.stderr)
    return 1


def cmd_inspect(args: argparse.Namespace) -> int:
    cfg = _load(args)
    results = Path(args.results)
    hide = bool(cfg["misc"]["env_chave_criptografia"]) and not args.show_text
    section("Configuração")
    print(summary(cfg))

    section("Arquivos")
    for line in file_status(cfg):
        print(line)
    for line in check_env(cfg) + preflight.answer_format_problems(cfg):
        print(f"  ✗ {line}")

    section("Pareamento")
    print(pairing_counts(cfg, results))

    section("Divisão")
    splits = {s: layout.split_file(s, results) for s in SPLITS}
    loaded = {s: _read_split(p) for s, p in splits.items() if p.is_file()}
    if not loaded:
        print(f"  no split files under {results / 'data'} yet (run snakemake to create them)")
    split_info = results / "data" / "divisao.json"
    if split_info.is_file():
        info = json.loads(split_info.read_text(encoding="utf-8"))
        print(f"  contagens: {info.get('contagens')} | proporção efetiva: {info.get('proporcao_efetiva')}")
    for name, rows in loaded.items():
        print(f"\n  {name}: {len(rows)} registro(s)")
        for label, row in (("primeiro", rows[0]), ("último", rows[-1])) if rows else ():
            print(f"  [{label}] id={row['id']}")
            for message in row["messages"]:
                print(f"    {message['role']}: {show_text(message['content'], hide)}")
    if hide and loaded:
        print("\n  (encrypted source: only lengths shown; --show-text shows the texts)")

    section("Tokens")
    print(token_statistics(cfg, loaded))

    section("Chat template")
    from afinar.train.template_check import template_report

    template_problems, template_notes = template_report(experiments(cfg))
    for line in template_notes:
        print(f"  ✓ {line}")
    for line in template_problems:
        print(f"  ✗ {line}")

    section("Experimentos")
    for name, exp in experiments(cfg).items():
        adapter = layout.exp_path(name, layout.ADAPTER, results)
        state = (
            "treinado"
            if (adapter / "adapter_config.json").is_file() or (adapter / "config.json").is_file()
            else "não treinado"
        )
        t, lo = exp["treinamento"], exp["lora"]
        print(
            f"  {name}: {state} ({adapter}) | base {exp['modelo']['base']} | epochs {t['epochs']} | "
            f"lr {t['learning_rate']:g} | r {lo['r']} | nbits {t['nbits']}"
        )
    return 0


def cmd_list_files(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if cfg["formatos"]["tipo_entrada"] != "pastas":
        ds = cfg["dataset"]
        print("dataset mode: files are read as a whole, nothing is paired")
        for key in ("train_file", "eval_file", "test_file"):
            if ds[key]:
                print(f"  {key}: {ds[key]} ({'ok' if Path(ds[key]).is_file() else 'missing'})")
        if ds["hf_dataset"]:
            print(f"  hf_dataset: {ds['hf_dataset']}")
        return 0
    from afinar.data import pairing

    pastas = cfg["pastas"]
    entrada, predicao = pastas["entrada"], pastas["predicao"]
    answers = pairing.files_by_id(predicao["pasta"], predicao["mascara"], "pastas.predicao")
    if entrada["dataframe"]:
        frame = pairing.read_input_frame(
            entrada["dataframe"], entrada["dataframe_col"], entrada["dataframe_id"]
        )
        inputs: dict[str, Any] = {rid: f"{entrada['dataframe']}[{rid}]" for rid in frame}
    else:
        inputs = pairing.files_by_id(entrada["pasta"], entrada["mascara"], "pastas.entrada")
    paired = sorted(set(inputs) & set(answers))
    input_only = sorted(set(inputs) - set(answers))
    answer_only = sorted(set(answers) - set(inputs))
    # the pair stage's own verdict, so this count is the one training gets (invalid answers left out)
    invalid = {
        i["id"]: i["motivo"]
        for i in pairing.pair_records(
            entrada, predicao, {**pastas["validacao"], "skip_invalidos": True}, cfg["formatos"]
        ).invalid
    }
    line = f"{len(paired) - len(invalid)} par(es) | {len(inputs)} entrada(s) | {len(answers)} resposta(s) esperada(s)"
    if invalid:
        line += (
            f" | {len(paired)} ids nos dois lados, {len(invalid)} inválido(s) "
            f"(left out by the pair stage: {pairing.invalid_hint(list(invalid.values()), len(paired), cfg['formatos'])})"
        )
    print(line)
    shown = paired if args.all else paired[:20]
    for rid in shown:
        mark = f"  ✗ {invalid[rid]}" if rid in invalid else ""
        print(f"  {rid}: {inputs[rid]} -> {answers[rid]}{mark}")
    if len(shown) < len(paired):
        print(f"  ... (+{len(paired) - len(shown)}; --all lists every pair)")
    if invalid:
        print(f"inválidos ({len(invalid)}): {pairing.format_ids(sorted(invalid), 50)}")
    print(f"entrada sem par ({len(input_only)}): {pairing.format_ids(input_only, 50) or '-'}")
    print(f"predicao sem par ({len(answer_only)}): {pairing.format_ids(answer_only, 50) or '-'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import importlib

    try:
        predict_cli = importlib.import_module("afinar.predict.quick")
    except ModuleNotFoundError as exc:
        if exc.name != "afinar.predict.quick":
            raise
        raise AfinarError(
            "predict: this checkout has no afinar.predict.quick module yet — use the predict rule"
        ) from None
    return int(predict_cli.main(args) or 0)


# --------------------------------------------------------------------------------------------- helpers


def section(title: str) -> None:
    print(f"\n== {title} ==")


def show_text(text: Any, hide: bool) -> str:
    """One line: newlines flattened, long texts cut to the first 400 + last 150 characters; lengths only if hidden."""
    text = "" if text is None else str(text)
    if hide:
        return f"<{len(text)} caracteres>"
    flat = " ".join(text.split())
    if len(flat) > HEAD + TAIL + 5:
        flat = f"{flat[:HEAD]} [...] {flat[-TAIL:]}"
    return flat


def file_status(cfg: dict) -> list[str]:
    """✓/✗ line for each path the config names (✗ lines are exactly what validate reports)."""
    bad = {line.split(":", 1)[0]: line for line in check_paths(cfg)}
    masks = {
        line.split(":", 1)[0].replace(".mascara", ".pasta"): line for line in preflight.mask_problems(cfg)
    }
    keys: list[tuple[str, ...]] = []
    if cfg["formatos"]["tipo_entrada"] == "pastas":
        entrada = (
            ("pastas", "entrada", "dataframe")
            if cfg["pastas"]["entrada"]["dataframe"]
            else ("pastas", "entrada", "pasta")
        )
        keys += [
            ("pastas", "predicao", "pasta"),
            entrada,
            ("pastas", "entrada", "prompt_template"),
            ("pastas", "divisao", "arquivo"),
        ]
    else:
        keys += [("dataset", k) for k in ("train_file", "eval_file", "test_file", "prompt_template")]
    keys.append(("modelo", "base"))
    lines = []
    for path in keys:
        value: Any = cfg
        for part in path:
            value = value[part]
        name = ".".join(path)
        if not value:
            continue
        if name in bad:
            lines.append(f"  ✗ {bad[name]}")
        elif name == "pastas.divisao.arquivo" and not Path(value).exists():
            lines.append(f"  · {name}: {value} (will be created by the split rule)")
        elif name == "modelo.base":
            continue  # one line per experiment below
        elif path[-1] == "pasta" and name in masks:
            lines.append(f"  ✗ {masks[name]}")
        else:
            lines.append(f"  ✓ {name}: {value}{_count_hint(value, cfg, path)}")
    for usable, line in model_lines(cfg):
        mark = "✗" if not usable else ("·" if "will be downloaded" in line else "✓")
        lines.append(f"  {mark} {line}")
    return lines


def model_lines(cfg: dict) -> list[tuple[bool, str]]:
    """One line per distinct base model: a local folder, in the Hugging Face cache, or to be downloaded."""
    exps = experiments(cfg)
    sources = preflight.model_sources(exps)
    by_base: dict[str, list[str]] = {}
    for name, exp in exps.items():
        by_base.setdefault(str(exp["modelo"]["base"]), []).append(name)
    lines = []
    for names in by_base.values():
        src = sources[names[0]]
        label = "modelo.base" if len(exps) == 1 else f"modelo.base ({', '.join(names)})"
        lines.append((src.usable, f"{label}: {src.detail}"))
    return lines


def _count_hint(value: str, cfg: dict, path: tuple[str, ...]) -> str:
    """The number of files the mask matches, counted as the pair stage lists them."""
    if path[-1] != "pasta" or not Path(value).is_dir():
        return ""
    from afinar.data.pairing import list_files

    mask = cfg["pastas"][path[1]]["mascara"]
    try:
        n = len(list_files(value, mask, ".".join(path[:2])))
    except AfinarError:
        return ""
    return f" ({n} arquivo(s) {mask})"


def pairing_counts(cfg: dict, results: Path) -> str:
    """Counts from results/data/pareamento.json, or from pairing the raw folders now (read-only)."""
    written = results / "data" / "pareamento.json"
    if written.is_file():
        info = json.loads(written.read_text(encoding="utf-8"))
        source = str(written)
    elif cfg["formatos"]["tipo_entrada"] != "pastas":
        return "  dataset mode: no pairing"
    else:
        try:
            from afinar.data import pairing

            p = cfg["pastas"]
            validacao = {**p["validacao"], "skip_invalidos": True}
            info = pairing.pair_records(p["entrada"], p["predicao"], validacao, cfg["formatos"]).summary()
        except AfinarError as exc:
            return f"  ✗ {exc}"
        source = "raw folders, now"
    lines = [
        f"  {info.get('n_pares')} par(es) ({source})",
        f"  entrada sem par: {len(info.get('entrada_sem_par', []))} | predição sem par: "
        f"{len(info.get('predicao_sem_par', []))} | inválidos: {len(info.get('invalidos', []))} | latin-1: "
        f"{len(info.get('latin1', []))}",
    ]
    for key in ("entrada_sem_par", "predicao_sem_par"):
        if info.get(key):
            lines.append(
                f"  {key}: {', '.join(map(str, info[key][:10]))}{' ...' if len(info[key]) > 10 else ''}"
            )
    return "\n".join(lines)


def token_statistics(cfg: dict, splits: dict[str, list[dict]]) -> str:
    """Token counts per split with the base model's tokenizer, when it is available locally."""
    if not splits:
        return "  no split files: nothing to count"
    exps = experiments(cfg)
    base = next(iter(exps.values()))["modelo"]["base"]
    max_len = next(iter(exps.values()))["treinamento"]["max_seq_length"]
    if preflight.model_source(base, hub=False).kind not in ("local", "cache"):
        return f"  tokenizer of {base} not available locally (no such folder, not in the Hugging Face cache) — token statistics skipped"
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "not available here"; say why in one line
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        return f"  tokenizer of {base} not available locally ({reason}) — token statistics skipped"
    lines = [f"  tokenizer: {base} | max_seq_length {max_len}"]
    for name, rows in splits.items():
        counts = [_count_tokens(tokenizer, row["messages"]) for row in rows]
        if not counts:
            lines.append(f"  {name}: 0 registros")
            continue
        over = sum(1 for c in counts if c > max_len)
        lines.append(
            f"  {name}: {len(counts)} registros | tokens min {min(counts)} / média {statistics.mean(counts):.0f} / "
            f"max {max(counts)} | total {sum(counts)} | acima de max_seq_length: {over}"
        )
    return "\n".join(lines)


def _count_tokens(tokenizer: Any, messages: list[dict]) -> int:
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return len(ids)
    return sum(len(tokenizer(m["content"])["input_ids"]) for m in messages)


def _read_split(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        rows: list[dict[str, Any]] = pq.read_table(path, columns=["id", "messages"]).to_pylist()
        return rows
    except Exception as exc:  # noqa: BLE001 - a corrupt file is a user-visible state, not a crash
        raise AfinarError(
            f"{path}: cannot read the split ({str(exc).splitlines()[0]}) — delete it and rerun snakemake"
        ) from None


def _load(args: argparse.Namespace) -> dict:
    raw = read_yaml(args.config)
    _apply_log_level(raw, args)
    try:
        return load_config(raw)
    except AfinarError as exc:
        raise AfinarError(f"{args.config}: {exc}") from None


def _apply_log_level(raw: dict, args: argparse.Namespace) -> None:
    """--log-level wins over misc.log_level; without it the config's level applies to this command."""
    level = getattr(args, "log_level", None)
    if level:
        if isinstance(raw.get("misc"), dict):
            raw["misc"]["log_level"] = level
        return
    misc = raw.get("misc")
    if isinstance(misc, dict) and str(misc.get("log_level", "")).upper() in LEVELS:
        setup_logging(str(misc["log_level"]).upper())
