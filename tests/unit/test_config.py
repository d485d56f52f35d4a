"""afinar.config: the seed's forms and aliases load, defaults fill, experiments merge."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from afinar.config import (
    SCHEMA_PATH,
    check_env,
    check_paths,
    default_experiment_name,
    experiments,
    load_config,
    load_schema,
    parse_proporcao,
    problems,
    read_yaml,
    summary,
)
from afinar.errors import AfinarError

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "config" / "examples" / "seed-compat.yaml"


def base_cfg(**sections) -> dict:
    cfg = {
        "formatos": {"tipo_entrada": "pastas"},
        "pastas": {"entrada": {"pasta": "in"}, "predicao": {"pasta": "out"}},
        "modelo": {"base": "org/model"},
    }
    for name, value in sections.items():
        cfg.setdefault(name, {}).update(value)
    return cfg


def test_defaults_fill_every_key_of_the_contract():
    cfg = load_config(base_cfg())
    t, lo = cfg["treinamento"], cfg["lora"]
    assert (t["batch_size"], t["grad_batch_size"], t["epochs"], t["max_seq_length"]) == (2, 5, 1, 4096)
    assert (t["learning_rate"], t["warmup_steps"], t["eval_steps"], t["nbits"], t["seed"]) == (
        2e-4,
        5,
        "15%",
        4,
        3407,
    )
    assert t["train_on_responses_only"] is True and t["paciencia"] is None and t["max_steps"] == -1
    assert t["filtro_tokens"] == {"max_tokens": None, "acao": "descartar"}
    assert (lo["r"], lo["alpha"], lo["dropout"]) == (8, 32, 0.05)
    assert lo["target_modules"] == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    div = cfg["pastas"]["divisao"]
    assert div["proporcao"] == {"treino": 0.7, "validacao": 0.1, "teste": 0.2} and div["seed"] == 42
    assert (
        cfg["pastas"]["entrada"]["mascara"] == "*.txt"
        # formato_saida (default texto) decides: plain-text answers need no JSON (issue 13)
        and cfg["pastas"]["validacao"]["exigir_json_valido"] is (cfg["formatos"]["formato_saida"] == "json")
    )
    assert cfg["predicao"] == {
        "batch_size": "auto",
        "max_new_tokens": 512,
        "temperatura": 0.0,
        "top_p": 1.0,
        "n_exemplos": 0,
        "comparar_base": False,
    }
    assert cfg["dataset"]["hf_splits"] == {"treino": "train", "validacao": "validation", "teste": "test"}
    assert cfg["relatorio"] == {"mostrar_exemplos": None, "n_exemplos": 3}
    assert cfg["exportacao"] == {
        "merged": False,
        "gguf": "",
        "llama_cpp": "",
        "gguf_pre_tokenizer": "",
        "onnx": False,
    }
    assert cfg["avaliacao"] == {"campos": []} and cfg["experimentos"] == {}
    assert cfg["misc"] == {"log_level": "INFO", "env_chave_criptografia": ""}

    # every schema property is present in the normalized config
    def walk(schema, node, path):
        for key, sub in schema.get("properties", {}).items():
            if path == "" and key == "experimentos":
                continue
            assert key in node, f"{path}{key} missing"
            if "properties" in sub and isinstance(node[key], dict):
                walk(sub, node[key], f"{path}{key}.")

    walk(load_schema(), cfg, "")


def test_input_is_not_modified():
    raw = base_cfg(treinamento={"num_train_epochs": 3, "lora_r": 4})
    before = copy.deepcopy(raw)
    load_config(raw)
    assert raw == before


def test_seed_example_loads_unchanged_and_num_train_epochs_takes_effect():
    raw = read_yaml(SEED)
    raw["treinamento"]["num_train_epochs"] = 5  # B3: the original always trained 1 epoch
    cfg = load_config(raw)
    assert cfg["modelo"]["base"] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert cfg["treinamento"]["epochs"] == 5
    assert cfg["pastas"]["divisao"]["proporcao"] == {"treino": 0.7, "validacao": 0.1, "teste": 0.2}
    assert cfg["pastas"]["divisao"]["validar_ids"] is False
    assert cfg["misc"] == {"log_level": "DEBUG", "env_chave_criptografia": "CHAVE_CRIPT"}
    assert cfg["treinamento"]["eval_steps"] == "15%"
    assert list(experiments(cfg)) == ["Qwen2.5-1.5B-Instruct_summa_qualifica_full"]


@pytest.mark.parametrize(
    "form",
    [
        [0.6, 0.15, 0.25],
        "0.6, 0.15, 0.25",
        {"treino": 0.6, "validacao": 0.15, "teste": 0.25},
        {"train": 0.6, "validation": 0.15, "test": 0.25},
        {"Treino": 0.6, "Avaliação": 0.15, "TESTE": 0.25},
        [{"treino": 0.6}, {"validação": 0.15}, {"teste": 0.25}],
        [{"train": 0.6}, {"eval": 0.15}, {"test": 0.25}],
        [{"teste": 0.25}, {"avaliacao": 0.15}, {"treino": 0.6}],
        ["0.6", "0.15", "0.25"],
    ],
)
def test_the_four_proporcao_forms_with_portuguese_and_english_names(form):
    cfg = load_config(base_cfg(pastas={"divisao": {"proporcao": form}}))
    assert cfg["pastas"]["divisao"]["proporcao"] == {"treino": 0.6, "validacao": 0.15, "teste": 0.25}


def test_mapping_with_a_missing_split_counts_it_as_zero():
    assert parse_proporcao({"treino": 0.8, "teste": 0.2}) == {"treino": 0.8, "validacao": 0.0, "teste": 0.2}


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("sim", True),
        ("true", True),
        ("1", True),
        (1, True),
        ("Sim", True),
        ("não", False),
        ("false", False),
        ("0", False),
        (0, False),
    ],
)
def test_boolean_words(word, expected):
    cfg = load_config(base_cfg(treinamento={"train_on_responses_only": word, "save_checkpoints": word}))
    assert cfg["treinamento"]["train_on_responses_only"] is expected
    assert cfg["treinamento"]["save_checkpoints"] is expected


@pytest.mark.parametrize(
    ("nbits", "expected"), [(None, 0), (16, 0), (0, 0), (4, 4), (8, 8), ("4", 4), ("16", 0)]
)
def test_nbits_null_and_16_mean_no_quantization(nbits, expected):
    assert load_config(base_cfg(treinamento={"nbits": nbits}))["treinamento"]["nbits"] == expected


def test_aliases_and_misplaced_lora_keys_take_effect(caplog):
    raw = base_cfg(
        treinamento={
            "num_train_epochs": 4,
            "lora_r": 16,
            "lora_alpha": 8,
            "lora_dropout": 0.2,
            "target_modules": ["q_proj"],
        }
    )
    raw["modelo"] = {"base_model_name": "org/m", "saida": "x"}
    with caplog.at_level("WARNING", logger="afinar.config"):
        cfg = load_config(raw)
    assert cfg["modelo"]["base"] == "org/m" and "base_model_name" not in cfg["modelo"]
    assert cfg["treinamento"]["epochs"] == 4 and "num_train_epochs" not in cfg["treinamento"]
    assert cfg["lora"] == {"r": 16, "alpha": 8, "dropout": 0.2, "target_modules": ["q_proj"]}
    assert "lora_r" not in cfg["treinamento"]
    assert "belong under lora" in caplog.text


def test_lora_dropout_and_target_modules_are_kept():
    cfg = load_config(base_cfg(lora={"dropout": 0.0, "target_modules": "q_proj, v_proj", "r": None}))
    assert cfg["lora"]["dropout"] == 0.0 and cfg["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert cfg["lora"]["r"] == 0  # null = full fine-tuning
    assert (
        load_config(base_cfg(lora={"target_modules": "all-linear"}))["lora"]["target_modules"] == "all-linear"
    )


def test_yaml_and_snakemake_strings_are_coerced():
    # PyYAML reads 2e-4 as a string; snakemake --config 'treinamento={epochs: 3}' gives strings
    cfg = load_config(
        base_cfg(
            treinamento={"learning_rate": "2e-4", "epochs": "3", "paciencia": "null", "report_to": "none"}
        )
    )
    t = cfg["treinamento"]
    assert t["learning_rate"] == 2e-4 and t["epochs"] == 3 and t["paciencia"] is None and t["report_to"] == []
    assert load_config(base_cfg(misc={"log_level": "debug"}))["misc"]["log_level"] == "DEBUG"


@pytest.mark.parametrize(
    ("value", "expected"), [("15%", "15%"), (" 7.5 % ", "7.5%"), (20, 20), ("100", 100), (0, 0)]
)
def test_eval_steps_forms(value, expected):
    assert load_config(base_cfg(treinamento={"eval_steps": value}))["treinamento"]["eval_steps"] == expected


def test_dataset_block_in_pastas_mode_is_ignored(caplog):
    raw = base_cfg()
    raw["dataset"] = {"train_file": "a.parquet", "eval_file": "b.parquet"}
    with caplog.at_level("INFO", logger="afinar.config"):
        cfg = load_config(raw)
    assert cfg["dataset"]["train_file"] == "" and "dataset section ignored" in caplog.text


def test_input_mode_is_inferred():
    raw = base_cfg()
    del raw["formatos"]
    assert load_config(raw)["formatos"]["tipo_entrada"] == "pastas"
    ds = {"modelo": {"base": "m"}, "dataset": {"train_file": "t.jsonl"}}
    assert load_config(ds)["formatos"]["tipo_entrada"] == "dataset"


def test_seed_regex_mask_becomes_the_glob_it_meant():
    raw = base_cfg(pastas={"predicao": {"pasta": "out", "mascara": r"^(.+)\.txt$"}})
    assert load_config(raw)["pastas"]["predicao"]["mascara"] == "*.txt"


def test_experiments_merge_over_top_level_sections():
    raw = base_cfg(
        treinamento={"epochs": 2, "learning_rate": 1e-4},
        lora={"r": 16},
        experimentos={
            "r32": {"lora": {"r": 32}},
            "long": {"treinamento": {"num_train_epochs": 5}, "predicao": {"max_new_tokens": 64}},
            "other-base_1.0": {"modelo": {"base_model_name": "org/other"}},
        },
    )
    cfg = load_config(raw)
    exps = experiments(cfg)
    assert list(exps) == ["r32", "long", "other-base_1.0"]
    assert exps["r32"]["lora"]["r"] == 32 and exps["r32"]["lora"]["alpha"] == 32
    assert exps["r32"]["treinamento"]["epochs"] == 2
    assert exps["long"]["treinamento"]["epochs"] == 5 and exps["long"]["treinamento"]["learning_rate"] == 1e-4
    assert exps["long"]["predicao"]["max_new_tokens"] == 64 and exps["long"]["lora"]["r"] == 16
    assert exps["other-base_1.0"]["modelo"]["base"] == "org/other"
    assert set(exps["r32"]) == {"modelo", "treinamento", "lora", "predicao"}
    # overrides stay overrides (no defaults filled into them)
    assert cfg["experimentos"]["r32"] == {"lora": {"r": 32}}
    # merging does not leak between experiments
    exps["r32"]["lora"]["r"] = 99
    assert experiments(cfg)["r32"]["lora"]["r"] == 32


@pytest.mark.parametrize(
    ("saida", "name"), [("", "modelo"), ("demo", "demo"), ("./treinados/run-1/", "run-1"), (".", "modelo")]
)
def test_default_experiment_name(saida, name):
    cfg = load_config(base_cfg(modelo={"saida": saida}))
    assert default_experiment_name(cfg) == name and list(experiments(cfg)) == [name]


def test_relative_paths_stay_relative_unless_base_dir_is_given(tmp_path):
    raw = base_cfg()
    assert load_config(raw)["pastas"]["entrada"]["pasta"] == "in"
    cfg = load_config(raw, base_dir=tmp_path)
    assert cfg["pastas"]["entrada"]["pasta"] == str(tmp_path / "in")
    assert cfg["modelo"]["base"] == "org/model"  # a Hub id is never re-rooted


def test_check_paths_is_separate_and_names_each_missing_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = base_cfg(pastas={"entrada": {"pasta": "in", "prompt_template": "p.txt", "tag_texto": "<<T>>"}})
    cfg = load_config(raw)  # parses although nothing exists
    found = check_paths(cfg)
    assert [line.split(":")[0] for line in found] == [
        "pastas.predicao.pasta",
        "pastas.entrada.pasta",
        "pastas.entrada.prompt_template",
    ]
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "p.txt").write_text("x <<T>>")
    assert check_paths(cfg) == []


def test_check_env_reports_an_unset_variable_and_reads_dotenv(tmp_path, monkeypatch):
    from cryptography.fernet import Fernet

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AFINAR_TEST_KEY", raising=False)
    cfg = load_config(base_cfg(misc={"env_chave_criptografia": "AFINAR_TEST_KEY"}))
    (problem,) = check_env(cfg)
    assert problem.startswith("misc.env_chave_criptografia: environment variable AFINAR_TEST_KEY is not set")
    key = Fernet.generate_key().decode()
    (tmp_path / ".env").write_text(f"# keys\nexport AFINAR_TEST_KEY='{key}'\n")
    assert check_env(cfg) == []
    monkeypatch.setenv("AFINAR_TEST_KEY", "not-a-key")
    (problem,) = check_env(cfg)
    assert "not a Fernet key" in problem and "not-a-key" not in problem  # the value is never shown


def test_problems_collects_everything_at_once():
    raw = {
        "modelo": {},
        "treinamento": {"batch_size": "dois", "learnig_rate": 1, "epochs": 0},
        "pastas": {"divisao": {"proporcao": [0.5, 0.1, 0.1]}},
    }
    found = problems(raw, paths=False)
    keys = [line.split(":")[0] for line in found]
    for key in (
        "treinamento.learnig_rate",
        "modelo.base",
        "treinamento.batch_size",
        "treinamento.epochs",
        "pastas.divisao.proporcao",
        "pastas.predicao.pasta",
    ):
        assert key in keys, (key, found)
    with pytest.raises(AfinarError):
        load_config(raw)


def test_summary_mentions_the_main_settings():
    raw = base_cfg(experimentos={"a": {"lora": {"r": 4}}, "b": {}})
    text = summary(load_config(raw))
    assert "modelo.base: org/model" in text and "batch 2 x grad 5 = 10" in text
    assert "a: lora.r=4" in text and "experimentos (2): a, b" in text


def test_read_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("modelo:\n  base: x\ntreinamento:\n  epochs: [1,\n")
    with pytest.raises(AfinarError, match=r"c\.yaml: line \d+, column \d+: malformed YAML"):
        read_yaml(path)


def test_shipped_configs_are_valid():
    for path in [REPO / "config" / "config.yaml", *sorted((REPO / "config" / "examples").glob("*.yaml"))]:
        load_config(read_yaml(path))
    for path in (REPO / "scripts" / "afinar" / "config" / "templates").glob("config_*.yaml"):
        raw = read_yaml(path)
        raw["modelo"]["base"] = "org/model"
        load_config(raw)


def test_schema_is_a_valid_draft_2020_12_schema_and_every_key_is_documented():
    import jsonschema

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    doc = (REPO / "docs" / "config.md").read_text(encoding="utf-8")

    def keys(node, path):
        for key, sub in node.get("properties", {}).items():
            yield f"{path}{key}"
            yield from keys(sub, f"{path}{key}.")

    missing = [k for k in keys(schema, "") if not re.search(rf"`{re.escape(k.split('.')[-1])}`", doc)]
    assert not missing, f"keys not documented in docs/config.md: {missing}"
