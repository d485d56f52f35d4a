"""`afinar validate` catches every config-value error a stage would raise.

Each stage keeps its own check (a library function can be called without the config layer), so this
test walks them: for every error a stage raises about a config value, the same value must already be a
validate-time problem (WALKED: the stage really raises, and ``problems`` names the key). Errors that
depend on the machine, the model or the data files cannot be known from the config; they are listed in
EXEMPT with the reason. A scan of the stage sources finds every ``AfinarError`` that starts with a config
key, so a new stage check fails here until it is walked or exempted.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from afinar.config import problems
from afinar.errors import AfinarError

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "afinar"
KEY = r"(?:treinamento|predicao|lora|modelo|pastas|dataset|exportacao|avaliacao|relatorio|formatos|misc)(?:\.[a-z_]+)+"
STAGE_ERROR = re.compile(r"AfinarError\(\s*f?[\"']\{?[a-z_]*\}?\s*(" + KEY + ")", re.S)


def base(**sections: Any) -> dict:
    cfg: dict = {
        "formatos": {"tipo_entrada": "pastas"},
        "pastas": {"entrada": {"pasta": "in"}, "predicao": {"pasta": "out"}},
        "modelo": {"base": "org/model"},
    }
    for name, value in sections.items():
        node = cfg
        *parents, last = name.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return cfg


# ----------------------------------------------------------------------- the stage checks, called directly


def gen(predicao: dict, max_seq_length: int = 4096) -> Callable[[Any], Any]:
    from afinar.predict.generation import GenerationSettings

    return lambda tmp: GenerationSettings.from_config(predicao, max_seq_length)


def distributed_check(treinamento: dict) -> Callable[[Any], Any]:
    from afinar.train.distributed import check

    return lambda tmp: check(treinamento)


def eval_steps(value: Any) -> Callable[[Any], Any]:
    from afinar.train.training import resolve_steps

    return lambda tmp: resolve_steps(value, 100)


def empty_test_split(tmp: Path) -> Any:
    from conftest import write_split

    from afinar.predict.generation import read_test_split

    return read_test_split(write_split(tmp / "teste.parquet", []))


def pair(entrada: dict) -> Callable[[Path], Any]:
    from afinar.data.pairing import pair_records

    def run(tmp: Path) -> Any:
        (tmp / "out").mkdir()
        (tmp / "out" / "a.txt").write_text("{}", encoding="utf-8")
        full = {
            "pasta": "",
            "mascara": "*.txt",
            "dataframe": "",
            "dataframe_col": "",
            "dataframe_id": "",
            **entrada,
        }
        return pair_records(
            full,
            {"pasta": str(tmp / "out"), "mascara": "*.txt"},
            {"exigir_json_valido": False, "skip_invalidos": False},
            {"formato_saida": "texto"},
        )

    return run


def gguf_type(tmp: Path) -> Any:
    from afinar.export.gguf import convert_to_gguf

    return convert_to_gguf(tmp, tmp / "m.gguf", "q4 k")


def splits_sum_zero(tmp: Path) -> Any:
    from afinar.data.splits import split_counts

    return split_counts(10, {"treino": 0.0, "validacao": 0.0, "teste": 0.0})


def padding_free(tmp: Path) -> Any:
    from afinar.train.training import padding_free_option

    return padding_free_option("sometimes")


def backend(tmp: Path) -> Any:
    from afinar.runtime import choose_backend

    return choose_backend("tpu", cuda=False)


def precision(tmp: Path) -> Any:
    from afinar.runtime import choose_precision

    return choose_precision("fp8", cuda=False)


def token_filter_action(tmp: Path) -> Any:
    from afinar.train.token_filter import action

    return action({"acao": "cortar"})


def token_budget(value: int, max_seq_length: int, packing: bool) -> Callable[[Path], Any]:
    from afinar.train.batching import token_budget_option

    return lambda tmp: token_budget_option(value, max_seq_length, packing)


def no_base(tmp: Path) -> Any:
    from afinar.train.models import resolve_model_source

    return resolve_model_source("")


# name: (raw config, the key validate must name, the stage check that raises on the same value)
WALKED: dict[str, tuple[dict, str, Callable[[Path], Any]]] = {
    "max_new_tokens leaves no prompt room": (
        base(treinamento__max_seq_length=256, predicao__max_new_tokens=250),
        "predicao.max_new_tokens",
        gen({"max_new_tokens": 250}, 256),
    ),
    "predict batch 0": (base(predicao__batch_size=0), "predicao.batch_size", gen({"batch_size": 0})),
    "top_p 0": (base(predicao__top_p=0), "predicao.top_p", gen({"top_p": 1.5})),
    "negative temperature": (
        base(predicao__temperatura=-1),
        "predicao.temperatura",
        gen({"temperatura": -1}),
    ),
    "eval_steps not steps": (
        base(treinamento__eval_steps="abc"),
        "treinamento.eval_steps",
        eval_steps("abc"),
    ),
    "eval_steps over 100%": (
        base(treinamento__eval_steps="150%"),
        "treinamento.eval_steps",
        eval_steps("150%"),
    ),
    "padding_free not yes/no": (
        base(treinamento__padding_free="sometimes"),
        "treinamento.padding_free",
        padding_free,
    ),
    "token budget below max_seq_length": (
        base(treinamento__tokens_por_lote=1000, treinamento__max_seq_length=2048),
        "treinamento.tokens_por_lote",
        token_budget(1000, 2048, False),
    ),
    "token budget with packing": (
        base(treinamento__tokens_por_lote=8192, treinamento__packing=True),
        "treinamento.tokens_por_lote",
        token_budget(8192, 4096, True),
    ),
    "unknown backend": (base(treinamento__backend="tpu"), "treinamento.backend", backend),
    "unknown precision": (base(treinamento__precisao="fp8"), "treinamento.precisao", precision),
    "unknown token filter action": (
        base(treinamento__filtro_tokens={"acao": "cortar"}),
        "treinamento.filtro_tokens.acao",
        token_filter_action,
    ),
    "proportions sum to 0": (
        base(pastas__divisao={"proporcao": [0, 0, 0]}),
        "pastas.divisao.proporcao",
        splits_sum_zero,
    ),
    "empty test split": (
        base(pastas__divisao={"proporcao": [1.0, 0, 0]}),
        "pastas.divisao.proporcao",
        empty_test_split,
    ),
    "dataframe as a boolean": (
        base(pastas__entrada={"dataframe": True}),
        "pastas.entrada.dataframe",
        pair({"dataframe": True}),
    ),
    "neither pasta nor dataframe": (
        base(pastas__entrada={"pasta": ""}),
        "pastas.entrada",
        pair({}),
    ),
    "dataframe without its columns": (
        base(pastas__entrada={"dataframe": "t.parquet"}),
        "pastas.entrada",
        pair({"dataframe": "t.parquet"}),
    ),
    "GGUF type": (base(exportacao__gguf="q4 k"), "exportacao.gguf", gguf_type),
    "no base model": (base(modelo={"base": ""}), "modelo.base", no_base),
    "fsdp with a 4-bit model": (
        base(treinamento__nbits=4, treinamento__distribuido={"gpus": 2, "estrategia": "fsdp"}),
        "treinamento.distribuido.estrategia",
        distributed_check({"nbits": 4, "distribuido": {"gpus": 2, "estrategia": "fsdp"}}),
    ),
    "global batch not a multiple": (
        base(treinamento__batch_size=4, treinamento__distribuido={"gpus": 2, "batch_global": 12}),
        "treinamento.distribuido.batch_global",
        distributed_check({"batch_size": 4, "distribuido": {"gpus": 2, "batch_global": 12}}),
    ),
}

# key: why validate cannot know it from the config alone
EXEMPT = {
    "treinamento.backend": "unsloth needs CUDA and an importable unsloth: the machine that runs the job decides",
    "treinamento.precisao": "fp16/bf16 support is a property of the GPU the job runs on",
    "treinamento.nbits": "4/8-bit loading needs CUDA and bitsandbytes on the machine that runs the job",
    "treinamento.max_seq_length": "the limit is the base model's (its config.json), read when the job runs",
    "treinamento.continuar_de": "an adapter folder's contents and its base model",
    "treinamento.report_to": "whether the tracker is installed in the train job's environment",
    "treinamento.liger_kernel": "Liger's Triton kernels need CUDA and liger-kernel on the machine that runs the job",
    "treinamento.train_on_responses_only": "the chat template's markers, known once the tokenizer loads",
    "modelo.base": "whether the model folder or Hub id loads (a missing modelo.base is walked)",
    "pastas.entrada.dataframe": "the parquet file's contents (a boolean value is walked)",
    "pastas.divisao.arquivo": "the division file's contents against the paired ids",
    "dataset.colunas": "the dataset file's columns",
    "dataset.train_file": "the dataset file's records",
    "exportacao.llama_cpp": "the llama.cpp checkout's contents",
    "exportacao.gguf": "whether the converter or llama-quantize is installed (a malformed type is walked)",
    "exportacao.gguf_pre_tokenizer": "the pre-tokenizer names the installed llama.cpp converter knows",
    "treinamento.distribuido.gpus": "how many GPUs the job was given (the combinations are walked)",
    "treinamento.distribuido.nos": "whether the job runs in a SLURM allocation of that many nodes",
    "treinamento.distribuido.estrategia": "whether the job's processes got GPUs (fsdp with 4-bit is walked)",
}


def stage_errors() -> dict[str, list[str]]:
    """Config key → the stage files whose AfinarError messages start with it."""
    found: dict[str, list[str]] = {}
    for path in sorted(SCRIPTS.rglob("*.py")):
        if path.relative_to(SCRIPTS).parts[0] == "config":
            continue
        text = path.read_text(encoding="utf-8")
        for match in STAGE_ERROR.finditer(text):
            line = text[: match.start()].count("\n") + 1
            found.setdefault(match.group(1), []).append(f"{path.relative_to(SCRIPTS)}:{line}")
    return found


@pytest.mark.parametrize("name", list(WALKED))
def test_validate_names_what_the_stage_would_reject(name, tmp_path, monkeypatch):
    raw, key, stage = WALKED[name]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AfinarError, match=re.escape(key)):
        stage(tmp_path)
    found = problems(raw, paths=False, env=False)
    assert any(p.startswith(f"{key}:") or p.startswith(f"{key}.") for p in found), found


def test_every_stage_error_about_a_config_value_is_walked_or_exempt():
    walked = {key for _, key, _ in WALKED.values()}
    errors = stage_errors()
    assert len(errors) >= 15, errors  # the scan itself works
    unclassified = {key: where for key, where in errors.items() if key not in walked and key not in EXEMPT}
    assert not unclassified, f"walk these in WALKED or explain them in EXEMPT: {unclassified}"
    stale = [key for key in EXEMPT if key not in errors]
    assert not stale, f"no stage raises these any more: {stale}"
