"""Token-length filter: real tokenizer and chat template of the tiny model, real split parquets."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from afinar.errors import AfinarError
from afinar.train import chat, models, token_filter

LIMIT = 80
ANSWER = '{"nome": "Ana Silva", "idade": 30, "cidade": "Recife"}'


def conv(prompt: str, answer: str = ANSWER) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    tok = models.load_tokenizer(str(tiny_model_dir))
    chat.ensure_chat_template(tok, str(tiny_model_dir))
    return tok


@pytest.fixture()
def rows():
    long_text = " ".join(f"Cadastro {i} recebido na cidade de Recife." for i in range(40))
    ids = ["curto", "prompt-longo", "resposta-longa"]
    messages = [
        conv("Extraia nome, idade e cidade em JSON. Ana Silva, 30 anos, Recife."),
        conv("Extraia nome, idade e cidade em JSON. " + long_text),
        conv("Extraia.", " ".join([ANSWER] * 12)),
    ]
    return ids, messages


def test_descartar_drops_what_does_not_fit(tokenizer, rows):
    ids, messages = rows
    lengths = [token_filter.conversation_length(tokenizer, m) for m in messages]
    assert lengths[0] <= LIMIT < min(lengths[1:])  # the fixture really has one short and two long records
    d = token_filter.decide_split(tokenizer, ids, messages, LIMIT, "descartar")
    assert d.as_dict() == {
        "total": 3,
        "mantidos": 1,
        "descartados": ["prompt-longo", "resposta-longa"],
        "truncados": [],
    }


def test_truncar_cuts_the_prompt_never_the_answer(tokenizer, rows):
    ids, messages = rows
    d = token_filter.decide_split(tokenizer, ids, messages, LIMIT, "truncar", batch=2)
    # the answer alone does not fit: dropped even with truncar
    assert d.truncados == ["prompt-longo"] and d.descartados == ["resposta-longa"]
    fitted, status = token_filter.fit_conversation(tokenizer, messages[1], LIMIT, "truncar")
    assert status == "truncado"
    assert token_filter.conversation_length(tokenizer, fitted) <= LIMIT
    assert fitted[-1] == messages[1][-1]  # answer intact
    assert messages[1][0]["content"].startswith(fitted[0]["content"][:30])
    assert len(fitted[0]["content"]) < len(messages[1][0]["content"])
    kept = token_filter.apply_decision(tokenizer, ids, messages, d.as_dict(), LIMIT, "truncar", "treino")
    assert kept == [messages[0], fitted]


def test_rule_writes_ids_per_split_and_checks_the_model_context(tiny_model_dir, rows, tmp_path):
    ids, messages = rows
    splits = {}
    for name in ("treino", "validacao", "teste"):
        splits[name] = tmp_path / f"{name}.parquet"
        pd.DataFrame({"id": ids, "messages": messages}).to_parquet(splits[name], index=False)
    out = tmp_path / "filtro_tokens" / "exp.json"
    token_filter.run_filter(splits, out, str(tiny_model_dir), 256, {"max_tokens": LIMIT, "acao": "descartar"})
    report = json.loads(out.read_text())
    assert report["max_tokens"] == LIMIT and report["acao"] == "descartar"
    assert report["aplicado_em"] == ["treino", "validacao"]
    assert report["splits"]["teste"]["descartados"] == ["prompt-longo", "resposta-longa"]
    # null max_tokens = max_seq_length
    token_filter.run_filter(splits, out, str(tiny_model_dir), 256, {"max_tokens": None, "acao": "descartar"})
    assert json.loads(out.read_text())["max_tokens"] == 256

    small = tmp_path / "small-context"
    shutil.copytree(tiny_model_dir, small)
    cfg = json.loads((small / "config.json").read_text())
    cfg["max_position_embeddings"] = 64
    (small / "config.json").write_text(json.dumps(cfg))
    out2 = tmp_path / "other.json"
    with pytest.raises(AfinarError) as err:
        token_filter.run_filter(splits, out2, str(small), 256, {"max_tokens": 128, "acao": "descartar"})
    assert "filtro_tokens.max_tokens: 128 is above the context of" in str(err.value)
    assert "(max_position_embeddings 64)" in str(err.value) and "\n" not in str(err.value)
    assert not out2.exists()


def test_stale_or_mismatched_report_is_refused(tmp_path, tokenizer, rows):
    ids, messages = rows
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"max_tokens": 100, "acao": "descartar", "splits": {}}))
    with pytest.raises(AfinarError, match="made for max_tokens 100 / acao descartar, but training uses 80"):
        token_filter.read_report(path, LIMIT, "descartar")
    with pytest.raises(AfinarError, match="counts 5 records, the split has 3"):
        token_filter.apply_decision(tokenizer, ids, messages, {"total": 5}, LIMIT, "descartar", "treino")


HUGE_RECORD = """
import json, resource, sys
sys.path.insert(0, sys.argv[1])
from afinar.train import chat, models, token_filter

tok = models.load_tokenizer(sys.argv[2])
chat.ensure_chat_template(tok, sys.argv[2])
unit = "Cadastro recebido na cidade de Recife, processo numero 1234. "
huge = [{"role": "user", "content": unit * (6_000_000 // len(unit))}, {"role": "assistant", "content": "{}"}]
ok = [{"role": "user", "content": "Extraia."}, {"role": "assistant", "content": "{}"}]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
drop = token_filter.decide_split(tok, ["huge", "ok"], [huge, ok], 256, "descartar")
cut = token_filter.decide_split(tok, ["huge", "ok"], [huge, ok], 256, "truncar")
fitted, status = token_filter.fit_conversation(tok, huge, 256, "truncar")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"kb": after - before, "drop": drop.as_dict(), "cut": cut.as_dict(), "status": status,
                  "fitted": token_filter.conversation_length(tok, fitted)}))
"""


def test_a_huge_record_costs_what_the_limit_needs(tiny_model_dir, tmp_path):
    """A 6 MB record (~1.5 million tokens) against a 256-token limit: decided from a prefix, so the peak
    memory stays flat (tokenizing it whole took gigabytes: 8.7 GB for 50 MB), in both actions."""
    import subprocess
    import sys

    from conftest import REPO

    script = tmp_path / "huge.py"
    script.write_text(HUGE_RECORD)
    proc = subprocess.run(
        [sys.executable, str(script), str(REPO / "scripts"), str(tiny_model_dir)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["drop"]["descartados"] == ["huge"] and out["drop"]["mantidos"] == 1
    assert out["cut"]["truncados"] == ["huge"] and out["cut"]["descartados"] == []
    assert out["status"] == "truncado" and 200 < out["fitted"] <= 256
    assert out["kb"] < 300_000, f"peak memory grew by {out['kb'] // 1024} MB"
