"""GGUF export of a merged model with llama.cpp's own converter, offline.

llama.cpp's ``convert_hf_to_gguf.py`` is the only converter that keeps pace with new model families, so
Afinar runs it rather than reimplementing it. It is never cloned at run time: it comes either from a
local llama.cpp checkout (``exportacao.llama_cpp``) or from the pinned ``llama-cpp-python`` sdist on
PyPI, which vendors llama.cpp; ``fetch_converter`` extracts just the converter (script, its
``conversion`` package, the matching ``gguf-py`` and the licence) into the Python environment at
install time (``python -m afinar.export.gguf fetch``).

The converter runs in a child process (it calls ``sys.exit``, rewrites ``sys.path`` and holds a second
copy of the weights), through this module's ``convert`` sub-command, which can also tell it which
llama.cpp pre-tokenizer a custom tokenizer follows (``exportacao.gguf_pre_tokenizer``): llama.cpp
recognises a tokenizer by hashing how it splits a fixed text, so a tokenizer trained locally with a
known family's rules (the demo's, trained with Qwen2's) is otherwise refused.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from afinar.errors import AfinarError
from afinar.io import atomic_dir, atomic_path

log = logging.getLogger("afinar.export.gguf")

# The llama-cpp-python release whose vendored llama.cpp provides the converter (checked: converts
# Qwen2 and Llama folders written by transformers 5.17).
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
CONVERTER = "convert_hf_to_gguf.py"
# What the converter itself writes; anything else needs llama.cpp's C++ ``llama-quantize``.
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0", "tq1_0", "tq2_0")
# Parts of the llama.cpp tree the converter needs (``conversion`` exists since the 2026 split of the script).
CONVERTER_PARTS = (CONVERTER, "conversion", "gguf-py", "LICENSE")
ERROR_MARK = "afinar-gguf-error:"


def default_converter_dir() -> Path:
    """Where ``fetch_converter`` installs the converter: inside the running environment, one per env."""
    return Path(sys.prefix) / "share" / "afinar" / "llama.cpp"


def find_converter(llama_cpp: str | Path | None = "") -> Path:
    """The folder holding ``convert_hf_to_gguf.py``: the configured checkout, else the installed copy.

    A configured path that lacks the script is an error even when an installed copy exists, because the
    user asked for that checkout (its converter may know a model family the pinned one does not).
    """
    if llama_cpp:
        root = Path(llama_cpp).expanduser()
        if not (root / CONVERTER).is_file():
            raise AfinarError(
                f"exportacao.llama_cpp: {root} has no {CONVERTER} — point it at the root of a llama.cpp "
                f"checkout, or leave it empty to use the converter installed with `python -m afinar.export.gguf fetch`"
            )
        return root
    root = default_converter_dir()
    if (root / CONVERTER).is_file():
        return root
    raise AfinarError(
        f"exportacao.gguf: llama.cpp's {CONVERTER} is not available — set exportacao.llama_cpp to a local "
        f"llama.cpp checkout, or install the pinned converter once with `python -m afinar.export.gguf fetch` "
        f"(extracts it from the llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} sdist on PyPI into {root})"
    )


def supported_architectures(converter_dir: Path) -> set[str]:
    """The Hugging Face architecture names the converter registers (``@ModelBase.register("...")``).

    Read from the source text so an unsupported family is named before a minutes-long conversion starts.
    """
    names: set[str] = set()
    files = [converter_dir / CONVERTER, *sorted((converter_dir / "conversion").glob("*.py"))]
    pattern = re.compile(r"@\w+\.register\(([^)]*)\)")
    for file in files:
        if file.is_file():
            for args in pattern.findall(file.read_text(encoding="utf-8", errors="replace")):
                names.update(re.findall(r"[\"']([^\"']+)[\"']", args))
    return names


def known_pre_tokenizers(converter_dir: Path) -> set[str]:
    """The llama.cpp pre-tokenizer names the converter can write (``res = "..."`` in get_vocab_base_pre)."""
    names: set[str] = set()
    for file in [converter_dir / CONVERTER, converter_dir / "conversion" / "base.py"]:
        if file.is_file():
            names.update(
                re.findall(r"\bres = \"([^\"]+)\"", file.read_text(encoding="utf-8", errors="replace"))
            )
    return names


def model_architecture(model_dir: Path) -> str:
    """``architectures[0]`` of a Hugging Face model folder (the converter dispatches on it)."""
    import json

    config = model_dir / "config.json"
    if not config.is_file():
        raise AfinarError(f"{model_dir}: no config.json — export the merged model first (exportacao.merged)")
    archs = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    if not archs:
        raise AfinarError(f"{config}: no 'architectures' entry — the converter cannot tell the model family")
    return str(archs[0])


def convert_to_gguf(
    model_dir: str | Path,
    out_file: str | Path,
    outtype: str,
    llama_cpp: str | Path | None = "",
    pre_tokenizer: str = "",
) -> Path:
    """Convert a merged Hugging Face model folder into one GGUF file, written atomically.

    ``outtype`` is one of ``CONVERTER_TYPES``; other llama.cpp types (q4_k_m, q5_k_m, ...) go through an
    f16 GGUF and llama.cpp's ``llama-quantize`` binary, which must then be built in the checkout
    (``build/bin``) or be on PATH.
    """
    model_dir, out_file = Path(model_dir), Path(out_file)
    outtype = str(outtype).strip().lower()
    if not re.fullmatch(r"[a-z0-9_]+", outtype or "-"):
        raise AfinarError(f"exportacao.gguf: {outtype!r} is not a GGUF type — use q8_0, f16, bf16 or f32")
    converter = find_converter(llama_cpp)
    quantize = None if outtype in CONVERTER_TYPES else find_quantize(converter, outtype)
    arch = model_architecture(model_dir)
    supported = supported_architectures(converter)
    if supported and arch not in supported:
        raise AfinarError(
            f"{model_dir}: model family {arch} is not supported by llama.cpp's converter in {converter} — "
            f"use a newer llama.cpp checkout (exportacao.llama_cpp) or export the merged model only"
        )
    if pre_tokenizer:
        known = known_pre_tokenizers(converter)
        if known and pre_tokenizer not in known:
            raise AfinarError(
                f"exportacao.gguf_pre_tokenizer: {pre_tokenizer!r} is not a llama.cpp pre-tokenizer — "
                f"use one of: {', '.join(sorted(known)[:40])}"
            )
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_file.name}.", dir=out_file.parent) as td:
        first = Path(td) / f"model-{'f16' if quantize else outtype}.gguf"
        _run_converter(converter, model_dir, first, "f16" if quantize else outtype, pre_tokenizer, arch)
        with atomic_path(out_file) as tmp:
            if quantize:
                _run_quantize(quantize, first, tmp, outtype)
            else:
                shutil.move(first, tmp)
    log.info("GGUF (%s, %s) written to %s (%.1f MB)", arch, outtype, out_file, out_file.stat().st_size / 1e6)
    return out_file


def find_quantize(converter_dir: Path, outtype: str) -> Path:
    """llama.cpp's ``llama-quantize`` for types the Python converter cannot write."""
    for candidate in (converter_dir / "build" / "bin" / "llama-quantize", converter_dir / "llama-quantize"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("llama-quantize")
    if found:
        return Path(found)
    raise AfinarError(
        f"exportacao.gguf: {outtype} needs llama.cpp's llama-quantize binary, not found in {converter_dir}/build/bin "
        f"nor on PATH — use one of {', '.join(CONVERTER_TYPES)}, or build llama.cpp in the checkout "
        f"given by exportacao.llama_cpp"
    )


def _run_quantize(binary: Path, src: Path, dst: Path, outtype: str) -> None:
    proc = subprocess.run([str(binary), str(src), str(dst), outtype.upper()], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise AfinarError(
            f"llama-quantize {outtype}: failed ({tail[0]}) — check the type name against llama-quantize --help"
        )


def _run_converter(
    converter: Path, model_dir: Path, out: Path, outtype: str, pre_tokenizer: str, arch: str
) -> None:
    """Run the converter in a child Python through this module's ``convert`` sub-command."""
    scripts_dir = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(scripts_dir), *filter(None, [env.get("PYTHONPATH", "")])])
    cmd = [sys.executable, "-m", "afinar.export.gguf", "convert", "--converter", str(converter)]
    if pre_tokenizer:
        cmd += ["--pre-tokenizer", pre_tokenizer]
    cmd += ["--", str(model_dir), "--outfile", str(out), "--outtype", outtype]
    log.info("running %s on %s (%s, %s)", converter / CONVERTER, model_dir, arch, outtype)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stderr.splitlines():
        log.debug("convert: %s", line)
    if proc.returncode != 0 or not out.is_file():
        raise AfinarError(
            f"{model_dir}: GGUF conversion of model family {arch} failed — {_converter_reason(proc.stderr)}"
        )


def _converter_reason(stderr: str) -> str:
    """The one line of the converter's output that says why it failed, with advice where we have some."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    marked = [line[len(ERROR_MARK) :].strip() for line in lines if line.startswith(ERROR_MARK)]
    errors = [line for line in lines if line.startswith("ERROR:") or " ERROR " in line]
    reason = (marked or errors or lines[-1:] or ["the converter printed nothing"])[-1]
    if "pre-tokenizer was not recognized" in reason:
        reason += (
            " (llama.cpp does not know this tokenizer: update llama.cpp, or, for a tokenizer trained with a known "
            "family's rules, set exportacao.gguf_pre_tokenizer, e.g. qwen2)"
        )
    return reason


def fetch_converter(
    dest: str | Path | None = None, version: str = LLAMA_CPP_PYTHON_VERSION, sdist: str | Path | None = None
) -> Path:
    """Install the converter from the ``llama-cpp-python`` sdist (downloaded with pip unless ``sdist`` is given).

    Only the converter's files are extracted; the folder appears complete or not at all.
    """
    dest = Path(dest) if dest else default_converter_dir()
    with tempfile.TemporaryDirectory(prefix="afinar-llama-cpp-") as td:
        if sdist is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
            cmd += ["--dest", td, f"llama-cpp-python=={version}"]
            log.info("downloading llama-cpp-python==%s sdist (vendors llama.cpp)", version)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            found = sorted(Path(td).glob("llama_cpp_python-*.tar.gz"))
            if proc.returncode != 0 or not found:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise AfinarError(
                    f"pip download llama-cpp-python=={version}: failed ({last}) — check PyPI access"
                )
            sdist = found[0]
        extract_converter(Path(sdist), dest)
    return dest


def extract_converter(sdist: Path, dest: Path) -> Path:
    """Extract ``vendor/llama.cpp/{convert_hf_to_gguf.py, conversion, gguf-py, LICENSE}`` from an sdist."""
    with atomic_dir(dest) as staging:
        with tarfile.open(sdist) as tar:
            members = []
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if len(parts) > 3 and parts[1:3] == ("vendor", "llama.cpp") and parts[3] in CONVERTER_PARTS:
                    member.name = str(Path(*parts[3:]))
                    members.append(member)
            tar.extractall(staging, members=members, filter="data")
        if not (staging / CONVERTER).is_file() or not (staging / "gguf-py").is_dir():
            raise AfinarError(
                f"{sdist}: no vendor/llama.cpp/{CONVERTER} with gguf-py inside — not a llama-cpp-python sdist"
            )
    log.info("llama.cpp converter installed in %s", dest)
    return dest


def _convert_main(converter: Path, pre_tokenizer: str, argv: list[str]) -> int:
    """Child-process body: import the converter without running it, optionally pin the pre-tokenizer, run it."""
    import runpy

    script = converter / CONVERTER
    sys.path.insert(0, str(converter))
    if "NO_LOCAL_GGUF" not in os.environ:
        sys.path.insert(1, str(converter / "gguf-py"))
    sys.argv = [str(script), *argv]
    try:
        namespace = runpy.run_path(str(script), run_name="afinar_convert_hf_to_gguf")
        if pre_tokenizer:
            owners = [namespace.get("TextModel"), namespace.get("Model")]
            base = sys.modules.get("conversion.base")
            owners.append(getattr(base, "TextModel", None))
            patched = False
            for owner in filter(None, owners):
                if hasattr(owner, "get_vocab_base_pre"):
                    owner.get_vocab_base_pre = lambda self, tokenizer: pre_tokenizer
                    patched = True
            if not patched:
                print(
                    f"{ERROR_MARK} this llama.cpp converter has no get_vocab_base_pre to pin", file=sys.stderr
                )
                return 2
        namespace["main"]()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except Exception as exc:  # the converter's own failures become one line for the parent
        print(
            f"{ERROR_MARK} {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            file=sys.stderr,
        )
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m afinar.export.gguf fetch [DEST]`` (install the converter) or ``convert`` (internal)."""
    parser = argparse.ArgumentParser(prog="python -m afinar.export.gguf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser(
        "fetch", help="install llama.cpp's converter from the pinned llama-cpp-python sdist"
    )
    fetch.add_argument(
        "dest", nargs="?", default=None, help=f"target folder (default {default_converter_dir()})"
    )
    fetch.add_argument(
        "--sdist", default=None, help="use this llama-cpp-python .tar.gz instead of downloading"
    )
    fetch.add_argument("--version", default=LLAMA_CPP_PYTHON_VERSION)
    conv = sub.add_parser("convert", help="internal: run convert_hf_to_gguf.py (arguments after --)")
    conv.add_argument("--converter", required=True)
    conv.add_argument("--pre-tokenizer", default="")
    conv.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "convert":
        rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
        return _convert_main(Path(args.converter), args.pre_tokenizer, rest)
    logging.basicConfig(level="INFO", format="%(message)s")
    try:
        print(fetch_converter(args.dest, args.version, args.sdist))
    except AfinarError as exc:
        print(f"afinar: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
