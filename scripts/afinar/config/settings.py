"""Frozen typed settings: an experiment's normalized config sections as dataclasses, built once.

Why: the normalized config is a dict, and code that reads a dict re-decides what the config layer already
knew (``tr.get("gradient_checkpointing", False)`` once disagreed with the schema's ``true``). These classes
have no defaults of their own: every field must be present in the section they are built from, so the
defaults stay in config/schema.yaml alone, and a key the schema gains without a field here (or the
reverse) is an error the unit tests catch.

Rule params stay plain dicts (Snakemake's rerun-on-params compares them); each rule script builds the
typed object with :meth:`Experiment.from_sections`. Tests and tools that only have some keys use
:func:`experiment_from_partial`, which fills the rest from the schema exactly as ``load_config`` does.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from afinar.errors import AfinarError

T = TypeVar("T")


@dataclass(frozen=True)
class ModelSettings:
    """``modelo``: the base model (a Hub id or a local folder) and the run's name."""

    base: str
    saida: str


@dataclass(frozen=True)
class TokenFilterSettings:
    """``treinamento.filtro_tokens``: what happens to examples longer than the limit."""

    max_tokens: int | None
    acao: str


@dataclass(frozen=True)
class DistributedSettings:
    """``treinamento.distribuido``: one training on several GPUs/nodes (afinar.train.distributed)."""

    gpus: int
    nos: int
    estrategia: str
    batch_global: int | None


@dataclass(frozen=True)
class TrainSettings:
    """``treinamento``: every key of the section, typed (docs/config.md explains each one)."""

    backend: str
    epochs: int
    batch_size: int
    grad_batch_size: int
    max_seq_length: int
    learning_rate: float
    warmup_steps: int
    eval_steps: int | str
    save_checkpoints: bool
    resume_from_checkpoint: bool
    checkpoint_minutos: float
    nbits: int
    seed: int
    train_on_responses_only: bool
    paciencia: int | None
    max_grad_norm: float
    precisao: str
    report_to: tuple[str, ...]
    packing: bool
    padding_free: bool | None
    save_total_limit: int | None
    limpar_checkpoints: bool
    continuar_de: str
    weight_decay: float
    optim: str
    lr_scheduler_type: str
    gradient_checkpointing: bool
    agrupar_por_tamanho: bool
    tokens_por_lote: int | None
    liger_kernel: bool
    embedding_na_cpu: bool | None
    pad_to_multiple_of: int | None
    max_steps: int
    distribuido: DistributedSettings
    filtro_tokens: TokenFilterSettings

    @property
    def bits(self) -> int:
        """Bits the base model is loaded in: 4, 8, or 16 for no quantization (``nbits: 0``)."""
        return self.nbits if self.nbits in (4, 8) else 16


@dataclass(frozen=True)
class LoraSettings:
    """``lora``: rank 0 means full fine-tuning (no adapter)."""

    r: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...] | str

    @property
    def full_finetuning(self) -> bool:
        return self.r == 0

    @property
    def module_list(self) -> list[str] | None:
        """Target modules as a list; None for ``all-linear`` (each backend's own spelling of it)."""
        if isinstance(self.target_modules, str):
            return None if self.target_modules == "all-linear" else [self.target_modules]
        return list(self.target_modules) or None


@dataclass(frozen=True)
class PredictSettings:
    """``predicao``: decoding settings of the predict rules."""

    batch_size: int | str  # a number, or "auto" (afinar.predict.batching)
    max_new_tokens: int
    temperatura: float
    top_p: float
    n_exemplos: int
    comparar_base: bool


@dataclass(frozen=True)
class Experiment:
    """One experiment: its name (``results/<name>/``) and its merged modelo/treinamento/lora/predicao."""

    name: str
    modelo: ModelSettings
    treinamento: TrainSettings
    lora: LoraSettings
    predicao: PredictSettings

    @classmethod
    def from_sections(cls, name: str, sections: Mapping[str, Any]) -> Experiment:
        """Build from normalized sections (every key present, as ``experiments(cfg)`` or rule params give them).

        ``predicao`` may be absent (the train rule's params do not carry it); it then takes the schema's
        defaults, which training never reads.
        """
        predicao = sections.get("predicao")
        if predicao is None:
            predicao = section_defaults("predicao")
        return cls(
            name=name,
            modelo=build(ModelSettings, sections["modelo"], "modelo"),
            treinamento=build(TrainSettings, sections["treinamento"], "treinamento"),
            lora=build(LoraSettings, sections["lora"], "lora"),
            predicao=build(PredictSettings, predicao, "predicao"),
        )

    def sections(self) -> dict[str, dict[str, Any]]:
        """Back to plain normalized sections (lists, not tuples), as rule params and JSON files hold them."""
        out = {}
        for field in ("modelo", "treinamento", "lora", "predicao"):
            out[field] = _plain(dataclasses.asdict(getattr(self, field)))
        return out


def experiment_settings(cfg: Mapping[str, Any]) -> dict[str, Experiment]:
    """Per experiment name, its typed settings (the config is normalized by ``load_config``)."""
    from afinar.config.experiments import experiments

    return {
        name: Experiment.from_sections(name, sections) for name, sections in experiments(dict(cfg)).items()
    }


def experiment_from_partial(sections: Mapping[str, Any], name: str = "experimento") -> Experiment:
    """An Experiment from hand-written sections with only some keys: the rest come from config/schema.yaml.

    The sections go through the same pipeline as a config file (aliases, coercion, schema with its
    defaults, cross-key checks), so a test builds exactly what the workflow would run.
    """
    from afinar.config.aliases import _translate
    from afinar.config.checks import check_experiment
    from afinar.config.common import _Problems
    from afinar.config.reading import load_schema
    from afinar.config.schema import _check_unknown, _coerce, _finish, _validate_schema

    raw = {key: dict(value or {}) for key, value in sections.items()}
    with_predicao = "predicao" in raw
    found = _Problems(collect=False)
    schema = load_schema()
    _translate(raw, "", found)
    _check_unknown(raw, schema, "", found, top=False)
    _coerce(raw, schema, "", found)
    _validate_schema(raw, "", found)
    _finish(raw)
    # without predicao the caller only trains: its defaults are not checked against max_seq_length
    check_experiment(raw if with_predicao else {k: v for k, v in raw.items() if k != "predicao"}, "", found)
    return Experiment.from_sections(name, raw)


def section_defaults(section: str) -> dict[str, Any]:
    """The schema's defaults of one top-level section, nested objects included."""
    from afinar.config.reading import load_schema

    def fill(node: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, sub in node.get("properties", {}).items():
            if sub.get("type") == "object" and "properties" in sub:
                out[key] = fill(sub)
            elif "default" in sub:
                out[key] = sub["default"]
        return out

    return fill(load_schema()["properties"][section])


# ------------------------------------------------------------------------------------- the builder


def build(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """A settings dataclass from a mapping whose keys are exactly its fields, each value checked by type.

    A missing or extra key means the schema and this module disagree (or a rule passed the wrong
    section): an error that names the key, never a silent default.
    """
    if not isinstance(data, Mapping):
        raise AfinarError(f"{where}: got {type(data).__name__} — expected a mapping of settings")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    extra = [key for key in data if key not in names]
    if extra:
        raise AfinarError(
            f"{where}.{extra[0]}: not a setting of {cls.__name__} — add it to afinar.config.settings"
        )
    missing = [name for name in names if name not in data]
    if missing:
        raise AfinarError(
            f"{where}.{missing[0]}: missing — normalize the config with afinar.config.load_config"
        )
    values = {name: _convert(data[name], hints[name], f"{where}.{name}") for name in names}
    return cls(**values)


def _convert(value: Any, hint: Any, where: str) -> Any:
    """``value`` as type ``hint`` (int, float, bool, str, None, tuple[str, ...], a dataclass, or a union)."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        for option in options:  # exact type matches first: 3 stays an int in ``int | str``
            if _matches(value, option):
                return _convert(value, option, where)
        for option in options:
            try:
                return _convert(value, option, where)
            except AfinarError:
                continue
        raise AfinarError(f"{where}: got {value!r} — expected {_name(hint)}")
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise AfinarError(f"{where}: got {value!r} — expected a list")
        (item,) = typing.get_args(hint)[:1]
        return tuple(_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is type(None):
        if value is None:
            return None
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    raise AfinarError(f"{where}: got {value!r} — expected {_name(hint)}")


def _matches(value: Any, hint: Any) -> bool:
    if hint is type(None):
        return value is None
    if hint is bool or hint is int:
        return type(value) is hint
    if hint is float:
        return isinstance(value, float)
    if hint is str:
        return isinstance(value, str)
    if typing.get_origin(hint) is tuple:
        return isinstance(value, list | tuple)
    return False


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
