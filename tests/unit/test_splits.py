"""Division and split files: deterministic, honouring (never rewriting) the user's division file."""

import json
import os
import stat

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from afinar.data.pairing import PAIRS_SCHEMA
from afinar.data.splits import (
    SplitOutputs,
    assign_splits,
    build_prompt,
    read_division,
    run_split,
    shuffle_ids,
    split_counts,
)
from afinar.errors import AfinarError

PROP = {"treino": 0.7, "validacao": 0.1, "teste": 0.2}


def divisao(arquivo="", proporcao=None, validar_ids=True, seed=42):
    return {
        "arquivo": str(arquivo) if arquivo else "",
        "proporcao": proporcao or dict(PROP),
        "seed": seed,
        "validar_ids": validar_ids,
    }


def make_pairs(path, n=20):
    ids = [f"{i:03d}" for i in range(1, n + 1)]
    pq.write_table(
        pa.table([ids, [f"texto {i}" for i in ids], [f'{{"n": "{i}"}}' for i in ids]], schema=PAIRS_SCHEMA),
        path,
    )
    return ids


def test_shuffle_is_deterministic_and_order_independent():
    ids = [str(i) for i in range(50)]
    assert shuffle_ids(ids, 1) == shuffle_ids(list(reversed(ids)), 1)
    assert shuffle_ids(ids, 1) != shuffle_ids(ids, 2)
    # adding a record keeps the relative order of the others
    assert [i for i in shuffle_ids(ids + ["new"], 1) if i != "new"] == shuffle_ids(ids, 1)


@pytest.mark.parametrize(
    ("n", "expected"), [(10, (7, 1, 2)), (11, (8, 1, 2)), (3, (2, 0, 1)), (360, (252, 36, 72))]
)
def test_counts_sum_to_n(n, expected):
    counts = split_counts(n, PROP)
    assert (counts["treino"], counts["validacao"], counts["teste"]) == expected


def test_assign_splits_is_reproducible():
    ids = [f"{i:03d}" for i in range(100)]
    a, b = assign_splits(ids, PROP, 7), assign_splits(list(reversed(ids)), PROP, 7)
    pd.testing.assert_frame_equal(a, b)
    assert a["alvo"].value_counts().to_dict() == {"treino": 70, "teste": 20, "validacao": 10}


def test_build_prompt():
    assert build_prompt("", "<T>", "abc") == "abc"
    assert build_prompt("Leia: <T>. De novo: <T>", "<T>", "abc") == "Leia: abc. De novo: abc"
    assert build_prompt("Extraia os campos.\n", "<T>", "abc") == "Extraia os campos.\n\nabc"


def test_run_split_writes_contract_files(tmp_path):
    ids = make_pairs(tmp_path / "pairs.parquet")
    (tmp_path / "prompt.txt").write_text("Documento:\n<<--TEXTO-->>", encoding="utf-8")
    out = SplitOutputs.in_folder(tmp_path / "data")
    report = run_split(tmp_path / "pairs.parquet", out, divisao(), tmp_path / "prompt.txt", "<<--TEXTO-->>")
    assert report["contagens"] == {"treino": 14, "validacao": 2, "teste": 4, "total": 20}
    assert report["proporcao_efetiva"] == {"treino": 0.7, "validacao": 0.1, "teste": 0.2}
    assert json.loads(out.divisao_json.read_text())["origem"] == "gerado"
    seen = []
    for name in ("treino", "validacao", "teste"):
        path = out.split_path(name)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        rows = pq.read_table(path).to_pylist()
        seen += [r["id"] for r in rows]
        first = rows[0]
        assert first["messages"][0] == {"role": "user", "content": f"Documento:\ntexto {first['id']}"}
        assert first["messages"][1] == {"role": "assistant", "content": f'{{"n": "{first["id"]}"}}'}
    assert sorted(seen) == ids
    csv = pd.read_csv(out.divisao_csv, dtype=str)
    assert list(csv.columns) == ["id_arquivo", "alvo"] and sorted(csv["id_arquivo"]) == ids


def test_configured_missing_division_file_is_created_once_and_protected(tmp_path):
    make_pairs(tmp_path / "pairs.parquet")
    user = tmp_path / "minha" / "divisao.csv"
    out = SplitOutputs.in_folder(tmp_path / "data")
    first = run_split(tmp_path / "pairs.parquet", out, divisao(user), None, "")
    assert first["origem"] == "criado"
    assert stat.S_IMODE(os.stat(user).st_mode) == 0o444
    created = user.read_bytes()
    assert out.divisao_csv.read_bytes() == created
    second = run_split(tmp_path / "pairs.parquet", out, divisao(user, seed=999), None, "")
    assert second["origem"] == "arquivo" and user.read_bytes() == created
    assert second["contagens"] == first["contagens"]


def test_old_labels_migrated_without_touching_user_file(tmp_path):
    make_pairs(tmp_path / "pairs.parquet", n=6)
    user = tmp_path / "div.csv"
    user.write_text(
        "id_arquivo,alvo,obs\n001,train,x\n002,avaliação,\n003,eval,\n004,test,\n005,Treino,\n006,validation,\n"
    )
    before = user.read_bytes()
    out = SplitOutputs.in_folder(tmp_path / "data")
    report = run_split(tmp_path / "pairs.parquet", out, divisao(user), None, "")
    assert user.read_bytes() == before
    assert report["contagens"] == {"treino": 2, "validacao": 3, "teste": 1, "total": 6}
    assert out.divisao_csv.read_text().splitlines() == [
        "id_arquivo,alvo",
        "001,treino",
        "002,validacao",
        "003,validacao",
        "004,teste",
        "005,treino",
        "006,validacao",
    ]
    frame, migrated = read_division(user)
    assert migrated == 6 and frame["id_arquivo"].tolist()[0] == "001"


def test_validar_ids_false_leaves_unlisted_pairs_out(tmp_path):
    make_pairs(tmp_path / "pairs.parquet", n=5)
    user = tmp_path / "div.csv"
    user.write_text("id_arquivo,alvo\n001,treino\n002,teste\n")
    report = run_split(
        tmp_path / "pairs.parquet",
        SplitOutputs.in_folder(tmp_path / "d"),
        divisao(user, validar_ids=False),
        None,
        "",
    )
    assert report["contagens"]["total"] == 2


def test_ids_skipped_upstream_are_not_unknown(tmp_path):
    make_pairs(tmp_path / "pairs.parquet", n=3)
    (tmp_path / "pareamento.json").write_text(json.dumps({"invalidos": [{"id": "004", "motivo": "x"}]}))
    user = tmp_path / "div.csv"
    user.write_text("id_arquivo,alvo\n001,treino\n002,teste\n003,treino\n004,teste\n")
    report = run_split(
        tmp_path / "pairs.parquet",
        SplitOutputs.in_folder(tmp_path / "d"),
        divisao(user),
        None,
        "",
        summary_path=tmp_path / "pareamento.json",
    )
    assert report["contagens"]["total"] == 3


def test_empty_validation_allowed_when_proportion_zero(tmp_path):
    make_pairs(tmp_path / "pairs.parquet", n=10)
    out = SplitOutputs.in_folder(tmp_path / "data")
    report = run_split(
        tmp_path / "pairs.parquet",
        out,
        divisao(proporcao={"treino": 0.8, "validacao": 0.0, "teste": 0.2}),
        None,
        "",
    )
    assert report["contagens"]["validacao"] == 0
    empty = pq.read_table(out.validacao)
    assert empty.num_rows == 0 and empty.schema.field("messages").type.value_type.names == ["role", "content"]


def test_empty_test_split_is_an_error(tmp_path):
    make_pairs(tmp_path / "pairs.parquet", n=2)
    out = SplitOutputs.in_folder(tmp_path / "data")
    with pytest.raises(AfinarError, match="the teste split is empty"):
        run_split(
            tmp_path / "pairs.parquet",
            out,
            divisao(proporcao={"treino": 0.9, "validacao": 0.0, "teste": 0.1}),
            None,
            "",
        )
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_a_division_csv_written_in_nfd_matches_nfc_pair_ids(tmp_path):
    """Pair ids are NFC; a division file saved by a tool that decomposes accents still matches them."""
    import unicodedata

    from afinar.data.splits import check_division, read_division

    nfc, nfd = (unicodedata.normalize(form, "ação") for form in ("NFC", "NFD"))
    path = tmp_path / "divisao.csv"
    path.write_text(f"id_arquivo,alvo\n{nfd},treino\nb,teste\n", encoding="utf-8")
    division, _ = read_division(path)
    assert list(division["id_arquivo"]) == [nfc, "b"]
    assert len(check_division(division, [nfc, "b"], True, path)) == 2


def _blocked_on(lock_file) -> bool:
    """Whether a process waits for a flock on ``lock_file`` (Linux /proc/locks: blocked requests "->")."""
    inode = os.stat(lock_file).st_ino  # a file or, as here, a folder
    for line in open("/proc/locks").read().splitlines():
        fields = line.split()
        if "->" in fields and fields[fields.index("->") + 1] == "FLOCK":
            if int(fields[fields.index("->") + 5].split(":")[-1]) == inode:
                return True
    return False


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs Linux /proc/locks")
def test_two_first_runs_sharing_a_division_file_agree_with_it(tmp_path):
    """Run 1 is creating the shared file (the test holds its lock); run 2, another process with another
    seed, waits for it and then uses the file run 1 wrote instead of creating its own."""
    import fcntl
    import subprocess
    import sys
    import time

    from conftest import REPO

    from afinar.data.splits import save_created_division

    shared = tmp_path / "shared" / "divisao.csv"
    shared.parent.mkdir()
    lock_file = shared.parent  # the lock is taken on the folder (no file is added there)
    ids = make_pairs(tmp_path / "pairs.parquet", n=30)
    script = f"""
import sys
sys.path.insert(0, {str(REPO / "scripts")!r})
from afinar.data.splits import SplitOutputs, run_split
run_split({str(tmp_path / "pairs.parquet")!r}, SplitOutputs.in_folder({str(tmp_path / "run2")!r}),
          {divisao(shared, seed=2)!r}, None, "")
"""
    fd = os.open(lock_file, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        run2 = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while not _blocked_on(lock_file):
            assert run2.poll() is None, run2.communicate()[1][-2000:]  # finished without waiting: no lock
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # run 1 (seed 1) creates the file while run 2 waits
        save_created_division(assign_splits(ids, PROP, 1), divisao(shared, seed=1))
    finally:
        os.close(fd)
    assert run2.wait(timeout=300) == 0, run2.stderr.read()[-2000:]
    on_disk = pd.read_csv(shared, dtype=str).sort_values("id_arquivo", ignore_index=True)
    used = pd.read_csv(tmp_path / "run2" / "divisao.csv", dtype=str).sort_values(
        "id_arquivo", ignore_index=True
    )
    assert used.equals(on_disk)
    assert not on_disk.equals(assign_splits(ids, PROP, 2).sort_values("id_arquivo", ignore_index=True))
    assert json.loads((tmp_path / "run2" / "divisao.json").read_text())["origem"] == "arquivo"
