"""afinar.config.settings: frozen typed settings built from the normalized config, defaults only in the schema."""

from __future__ import annotations

import dataclasses

import pytest

from afinar.config import load_config, load_schema
from afinar.config.settings import (
    Experiment,
    LoraSettings,
    ModelSettings,
    PredictSettings,
    TokenFilterSettings,
    TrainSettings,
    build,
    experiment_from_partial,
    experiment_settings,
    section_defaults,
)
from afinar.errors import AfinarError

CFG = {
    "formatos": {"tipo_entrada": "pastas"},
    "pastas": {"entrada": {"pasta": "in"}, "predicao": {"pasta": "out"}},
    "modelo": {"base": "org/model", "saida": "runs/first"},
}


@pytest.mark.parametrize(
    ("cls", "section"),
    [
        (ModelSettings, ("modelo",)),
        (TrainSettings, ("treinamento",)),
        (TokenFilterSettings, ("treinamento", "filtro_tokens")),
        (LoraSettings, ("lora",)),
        (PredictSettings, ("predicao",)),
    ],
)
def test_every_schema_key_is_a_field_and_nothing_else(cls, section):
    """A key added to config/schema.yaml without a field (or the reverse) fails here, not in a stage."""
    node = load_schema()
    for name in section:
        node = node["properties"][name]
    assert [f.name for f in dataclasses.fields(cls)] == list(node["properties"])


def test_settings_hold_no_defaults_of_their_own():
    """Defaults live only in config/schema.yaml."""
    for cls in (ModelSettings, TrainSettings, TokenFilterSettings, LoraSettings, PredictSettings, Experiment):
        for field in dataclasses.fields(cls):
            assert field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def test_built_once_from_the_normalized_config_and_frozen():
    cfg = load_config({**CFG, "treinamento": {"eval_steps": 20, "report_to": "tensorboard"}})
    (exp,) = experiment_settings(cfg).values()
    assert exp.name == "first" and exp.modelo.base == "org/model"
    t = exp.treinamento
    assert t.gradient_checkpointing is True  # the schema's default, on every backend (issue 18)
    assert t.eval_steps == 20 and t.report_to == ("tensorboard",) and t.learning_rate == 0.0002
    assert t.filtro_tokens == TokenFilterSettings(max_tokens=None, acao="descartar")
    assert exp.lora.module_list == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert exp.predicao.max_new_tokens == 512
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.epochs = 3  # type: ignore[misc]
    # back to the plain sections the rule params hold
    assert exp.sections()["treinamento"] == cfg["treinamento"]


def test_partial_sections_are_filled_from_the_schema_like_a_config_file():
    exp = experiment_from_partial(
        {"modelo": {"base_model_name": "org/m"}, "treinamento": {"num_train_epochs": "3", "nbits": 16}}
    )
    defaults = section_defaults("treinamento")
    assert exp.modelo.base == "org/m" and exp.treinamento.epochs == 3 and exp.treinamento.nbits == 0
    assert exp.treinamento.bits == 16
    assert exp.treinamento.batch_size == defaults["batch_size"]
    assert exp.lora.r == section_defaults("lora")["r"] and exp.lora.alpha == 32.0
    with pytest.raises(AfinarError, match="treinamento.lr: unknown key — did you mean 'learning_rate'"):
        experiment_from_partial({"modelo": {"base": "m"}, "treinamento": {"lr": 0.1}})
    with pytest.raises(AfinarError, match="treinamento.epochs: got 0"):
        experiment_from_partial({"modelo": {"base": "m"}, "treinamento": {"epochs": 0}})


def test_build_rejects_a_dict_that_disagrees_with_the_fields():
    good = {"base": "m", "saida": ""}
    assert build(ModelSettings, good, "modelo") == ModelSettings("m", "")
    with pytest.raises(AfinarError, match="modelo.extra: not a setting of ModelSettings"):
        build(ModelSettings, {**good, "extra": 1}, "modelo")
    with pytest.raises(AfinarError, match="modelo.saida: missing"):
        build(ModelSettings, {"base": "m"}, "modelo")
    with pytest.raises(AfinarError, match="modelo.base: got 3 — expected str"):
        build(ModelSettings, {"base": 3, "saida": ""}, "modelo")
    lora = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}
    assert build(LoraSettings, lora, "lora").module_list is None
    assert build(LoraSettings, {**lora, "target_modules": ["q_proj"]}, "lora").target_modules == ("q_proj",)
    with pytest.raises(AfinarError, match="lora.r: got True"):
        build(LoraSettings, {**lora, "r": True}, "lora")
    with pytest.raises(AfinarError, match=r"lora.target_modules\[0\]: got 1"):
        build(LoraSettings, {**lora, "target_modules": [1]}, "lora")


def test_experiments_of_a_sweep_each_get_their_settings():
    cfg = load_config({**CFG, "experimentos": {"a": {"lora": {"r": 4}}, "b": {"treinamento": {"nbits": 8}}}})
    exps = experiment_settings(cfg)
    assert list(exps) == ["a", "b"]
    assert exps["a"].lora.r == 4 and exps["b"].lora.r == 8 and exps["b"].treinamento.bits == 8
    # the train rule's params carry no predicao: its defaults stand in (training never reads them)
    sections = exps["a"].sections()
    del sections["predicao"]
    assert Experiment.from_sections("a", sections).predicao == exps["a"].predicao
