"""Fernet decryption with real keys and real parquet files; keys never leak into messages."""

import os
import stat

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from afinar.data.crypto import (
    encrypt_frame,
    encrypt_texts,
    generate_key,
    key_from_env,
    make_fernet,
    parse_dotenv,
    run_decrypt,
)
from afinar.data.pairing import PAIRS_SCHEMA
from afinar.errors import AfinarError


def write_pairs(path, ids, texts, answers=None):
    answers = answers or ['{"a": 1}'] * len(ids)
    pq.write_table(pa.table([ids, texts, answers], schema=PAIRS_SCHEMA), path)


def test_parse_dotenv():
    text = "# comment\nexport A=1\nB = 'dois dois'\nC=\"x=y\"\nD=abc # note\nnot a line\n\nE=\n"
    assert parse_dotenv(text) == {"A": "1", "B": "dois dois", "C": "x=y", "D": "abc", "E": ""}


def test_key_from_env_prefers_environment_over_dotenv(tmp_path):
    k1, k2 = generate_key(), generate_key()
    (tmp_path / ".env").write_text(f"CHAVE={k2}\n")
    assert key_from_env("CHAVE", {"CHAVE": k1}, tmp_path / ".env") == k1
    assert key_from_env("CHAVE", {}, tmp_path / ".env") == k2


def test_missing_and_empty_key_variables(tmp_path):
    with pytest.raises(AfinarError, match="'CHAVE' is not set .* refusing to train on ciphertext"):
        key_from_env("CHAVE", {}, tmp_path / ".env")
    with pytest.raises(AfinarError, match="is empty"):
        key_from_env("CHAVE", {"CHAVE": " "}, None)


def test_invalid_key_message_does_not_show_the_key():
    with pytest.raises(AfinarError) as info:
        make_fernet("segredo-invalido", "CHAVE")
    assert "segredo-invalido" not in str(info.value) and "valid Fernet key" in str(info.value)


def test_encrypted_pairs_are_decrypted_with_mode_0600(tmp_path):
    key = generate_key()
    frame = encrypt_frame(pd.DataFrame({"id": ["1", "2"], "texto": ["olá", "ação"]}), "texto", key)
    assert all(t.startswith("gAAAAA") for t in frame["texto"])
    write_pairs(tmp_path / "pairs.parquet", list(frame["id"]), list(frame["texto"]))
    skipped = run_decrypt(
        tmp_path / "pairs.parquet", tmp_path / "plain.parquet", "CHAVE", False, True, {"CHAVE": key}
    )
    assert skipped == []
    assert pq.read_table(tmp_path / "plain.parquet").column("texto").to_pylist() == ["olá", "ação"]
    assert stat.S_IMODE(os.stat(tmp_path / "plain.parquet").st_mode) == 0o600


def test_unencrypted_pairs_are_hard_linked(tmp_path):
    write_pairs(tmp_path / "pairs.parquet", ["1"], ["claro"])
    run_decrypt(tmp_path / "pairs.parquet", tmp_path / "plain.parquet", "", False, True, {})
    assert os.stat(tmp_path / "plain.parquet").st_ino == os.stat(tmp_path / "pairs.parquet").st_ino
    assert stat.S_IMODE(os.stat(tmp_path / "plain.parquet").st_mode) == 0o600
    # rerunning replaces the link atomically
    run_decrypt(tmp_path / "pairs.parquet", tmp_path / "plain.parquet", "", False, True, {})
    assert pq.read_table(tmp_path / "plain.parquet").column("texto").to_pylist() == ["claro"]


def test_text_file_inputs_are_never_decrypted(tmp_path):
    write_pairs(tmp_path / "pairs.parquet", ["1"], ["claro"])
    run_decrypt(tmp_path / "pairs.parquet", tmp_path / "plain.parquet", "CHAVE", False, False, {})
    assert pq.read_table(tmp_path / "plain.parquet").column("texto").to_pylist() == ["claro"]


def test_wrong_key_names_count_and_ids(tmp_path):
    tokens = encrypt_texts(["a", "b", "c"], generate_key())
    write_pairs(tmp_path / "pairs.parquet", ["1", "2", "3"], tokens)
    with pytest.raises(
        AfinarError, match=r"3 of 3 texts could not be decrypted \(ids 1, 2, 3\): none decrypts with this key"
    ):
        run_decrypt(
            tmp_path / "pairs.parquet", tmp_path / "plain.parquet", "K", True, True, {"K": generate_key()}
        )
    assert not (tmp_path / "plain.parquet").exists()


def test_some_bad_cells_skipped_or_fatal(tmp_path):
    key = generate_key()
    tokens = encrypt_texts(["a", "b"], key) + ["texto em claro", encrypt_texts(["x"], generate_key())[0]]
    write_pairs(tmp_path / "pairs.parquet", ["1", "2", "3", "4"], tokens)
    with pytest.raises(
        AfinarError, match=r"2 of 4 texts could not be decrypted \(ids 3, 4\).*skip_invalidos"
    ):
        run_decrypt(tmp_path / "pairs.parquet", tmp_path / "plain.parquet", "K", False, True, {"K": key})
    skipped = run_decrypt(tmp_path / "pairs.parquet", tmp_path / "plain.parquet", "K", True, True, {"K": key})
    assert skipped == ["3", "4"]
    assert pq.read_table(tmp_path / "plain.parquet").column("id").to_pylist() == ["1", "2"]


def test_plain_column_with_a_key_is_spotted(tmp_path):
    write_pairs(tmp_path / "pairs.parquet", ["1", "2"], ["claro", "também"])
    with pytest.raises(AfinarError, match="not Fernet tokens"):
        run_decrypt(
            tmp_path / "pairs.parquet", tmp_path / "plain.parquet", "K", False, True, {"K": generate_key()}
        )
