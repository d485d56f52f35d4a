"""The ``decrypt`` stage: Fernet-encrypted input texts → plain texts, readable only by their owner.

Only the dataframe's text column (``pastas.entrada.dataframe_col``, ``texto`` in ``pairs.parquet``) is
ever encrypted; text files, answers and ids never are. The key comes from the environment variable
named by ``misc.env_chave_criptografia``; a ``.env`` file in the working directory is read too, without
overriding a variable that is already set. The original tool silently trained on ciphertext when that
variable was unset (bug B9): here a named-but-missing key is an error raised before anything is written.

Keys and decrypted text are never logged; only counts and record ids are.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from cryptography.fernet import Fernet, InvalidToken

from afinar.data.pairing import PAIRS_SCHEMA, PRIVATE_MODE, format_ids
from afinar.errors import AfinarError
from afinar.io import atomic_path

log = logging.getLogger("afinar.data.crypto")

KEY_SETTING = "misc.env_chave_criptografia"
TEXT_COLUMN = "texto"
# Every Fernet token starts with version byte 0x80, which is "gAAAAA" in URL-safe base64.
TOKEN_PREFIX = "gAAAAA"


def generate_key() -> str:
    """A new random Fernet key (URL-safe base64 text), for tests, the example generator and users."""
    return Fernet.generate_key().decode("ascii")


def parse_dotenv(text: str) -> dict[str, str]:
    """Parse ``.env`` content: ``NAME=value`` lines, optional ``export``, quotes, ``#`` comments.

    Deliberately small (no interpolation, no multi-line values): a Fernet key is one token, and a
    parser we own cannot be surprised by a dependency's syntax extensions.
    """
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not name.replace("_", "").isalnum():
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].rstrip()
        values[name] = value
    return values


def read_dotenv(path: str | Path = ".env") -> dict[str, str]:
    """The variables of a ``.env`` file, or ``{}`` when there is none."""
    path = Path(path)
    if not path.is_file():
        return {}
    return parse_dotenv(path.read_text(encoding="utf-8-sig"))


def key_from_env(
    var_name: str, environ: Mapping[str, str] | None = None, dotenv_path: str | Path | None = ".env"
) -> str:
    """The Fernet key held by ``var_name``: the environment first, then the ``.env`` file.

    The environment wins so that ``CHAVE=... snakemake ...`` overrides a stale ``.env``; the
    process environment is not modified (no global state).
    """
    environ = os.environ if environ is None else environ
    value = environ.get(var_name)
    source = "the environment"
    if value is None and dotenv_path is not None:
        value = read_dotenv(dotenv_path).get(var_name)
        source = f"{dotenv_path}"
    if value is None:
        raise AfinarError(
            f"{KEY_SETTING}: the variable {var_name!r} is not set (nor in .env) — export {var_name}=<Fernet key> "
            "or put it in a .env file in the working directory; refusing to train on ciphertext"
        )
    if not value.strip():
        raise AfinarError(
            f"{KEY_SETTING}: the variable {var_name!r} is empty in {source} — set it to the Fernet key"
        )
    return value.strip()


def make_fernet(key: str | bytes, var_name: str = "") -> Fernet:
    """A Fernet object for ``key``; a malformed key is a user error (the key itself is never shown)."""
    try:
        return Fernet(key)
    except (ValueError, TypeError):
        where = f"the variable {var_name!r}" if var_name else "the key"
        raise AfinarError(
            f"{KEY_SETTING}: {where} does not hold a valid Fernet key (32 bytes, URL-safe base64, 44 characters) "
            "— check the value; generate one with afinar.data.crypto.generate_key()"
        ) from None


def encrypt_texts(texts: Sequence[str], key: str | bytes) -> list[str]:
    """Encrypt each text (UTF-8) into a Fernet token string."""
    fernet = make_fernet(key)
    return [fernet.encrypt(t.encode("utf-8")).decode("ascii") for t in texts]


def encrypt_frame(frame: pd.DataFrame, column: str, key: str | bytes) -> pd.DataFrame:
    """A copy of ``frame`` with ``column`` encrypted: how a user's encrypted export looks."""
    out = frame.copy()
    out[column] = encrypt_texts([str(v) for v in frame[column]], key)
    return out


def decrypt_texts(tokens: Sequence[str | None], fernet: Fernet) -> tuple[list[str | None], list[int]]:
    """Decrypt tokens; return the plain texts (``None`` where it failed) and the failed positions."""
    plain: list[str | None] = []
    failed: list[int] = []
    decrypt = fernet.decrypt
    for pos, token in enumerate(tokens):
        try:
            if token is None:
                raise TypeError("no token")
            plain.append(decrypt(token).decode("utf-8"))
        except (InvalidToken, TypeError, ValueError, UnicodeDecodeError):
            plain.append(None)
            failed.append(pos)
    return plain, failed


def _failure_message(ids: list[str], tokens: list[str], failed: list[int], total: int) -> str:
    not_tokens = sum(1 for i in failed if not str(tokens[i] or "").startswith(TOKEN_PREFIX))
    failed_ids = [ids[i] for i in failed]
    if not_tokens == len(failed):
        cause = (
            f"they are not Fernet tokens (a token starts with {TOKEN_PREFIX!r}) — is this column encrypted?"
        )
    elif len(failed) == total:
        cause = "none decrypts with this key — is it the key the data was encrypted with?"
    else:
        cause = "wrong key for these records or corrupted cells"
    return f"{len(failed)} of {total} texts could not be decrypted (ids {format_ids(failed_ids)}): {cause}"


def decrypt_table(table: pa.Table, fernet: Fernet, skip_invalid: bool) -> tuple[pa.Table, list[str]]:
    """Decrypt the ``texto`` column of a pairs table; return the plain table and the skipped ids.

    Failures stop the run with their count and first ids, unless ``skip_invalid`` (then those
    records are dropped and reported). When every record fails, the run stops regardless: that is
    a wrong key or an unencrypted column, never something to skip.
    """
    ids = table.column("id").to_pylist()
    tokens = table.column(TEXT_COLUMN).to_pylist()
    plain, failed = decrypt_texts(tokens, fernet)
    total = len(ids)
    if failed and (not skip_invalid or len(failed) == total):
        hint = (
            ""
            if len(failed) == total
            else " — fix them, or set pastas.validacao.skip_invalidos: true to skip them"
        )
        raise AfinarError(f"{KEY_SETTING}: " + _failure_message(ids, tokens, failed, total) + hint)
    empty = [i for i, text in enumerate(plain) if text is not None and not text.strip()]
    if empty and not skip_invalid:
        raise AfinarError(
            f"pastas.entrada.dataframe: {len(empty)} text(s) are empty once decrypted (ids "
            f"{format_ids([ids[i] for i in empty])}) — fix them, or set pastas.validacao.skip_invalidos: true"
        )
    dropped = set(failed) | set(empty)
    if len(dropped) == total:
        raise AfinarError(
            f"pastas.entrada.dataframe: no usable text once decrypted ({total} records) — check the data"
        )
    skipped = [ids[i] for i in sorted(dropped)]
    keep = [i for i in range(total) if i not in dropped]
    out = pa.table(
        [[ids[i] for i in keep], [plain[i] for i in keep], table.column("resposta").take(keep).to_pylist()],
        schema=PAIRS_SCHEMA,
    )
    return out, skipped


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Make ``dst`` the same content as ``src`` without copying data where the filesystem allows it.

    A hard link is created under a temporary name and renamed over ``dst`` (atomic); filesystems
    without hard links get a copy. Both keep mode 0600.
    """
    src, dst = Path(src), Path(dst)
    os.chmod(src, PRIVATE_MODE)
    with atomic_path(dst, PRIVATE_MODE) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def run_decrypt(
    pairs_path: str | Path,
    plain_path: str | Path,
    env_var: str,
    skip_invalid: bool,
    encrypted_input: bool = True,
    environ: Mapping[str, str] | None = None,
    dotenv_path: str | Path | None = ".env",
) -> list[str]:
    """The whole ``decrypt`` stage; return the ids skipped because they could not be decrypted.

    ``env_var`` is the *name* in ``misc.env_chave_criptografia`` ("" = nothing is encrypted);
    ``encrypted_input`` is false when inputs come from text files, which are never encrypted.
    """
    env_var = (env_var or "").strip()
    if env_var and not encrypted_input:
        log.warning(
            "%s is set but inputs are text files, which are never encrypted: passing them through",
            KEY_SETTING,
        )
    if not env_var or not encrypted_input:
        link_or_copy(pairs_path, plain_path)
        log.info("nothing to decrypt: %s linked to %s", plain_path, pairs_path)
        return []
    fernet = make_fernet(key_from_env(env_var, environ, dotenv_path), env_var)
    try:
        table = pq.read_table(pairs_path)
    except (pa.ArrowException, OSError) as exc:
        raise AfinarError(
            f"{pairs_path}: not a readable parquet file ({exc}) — rerun the pair stage"
        ) from None
    plain, skipped = decrypt_table(table, fernet, skip_invalid)
    if skipped:
        log.warning("skipped %d record(s) that could not be decrypted: %s", len(skipped), format_ids(skipped))
    with atomic_path(plain_path, PRIVATE_MODE) as tmp:
        pq.write_table(plain, tmp)
    log.info("decrypted %d texts into %s (mode 0600)", plain.num_rows, plain_path)
    return skipped


def check_key_before_run(
    entrada: Mapping[str, str],
    env_var: str,
    environ: Mapping[str, str] | None = None,
    dotenv_path: str | Path | None = ".env",
    sample: int = 20,
) -> None:
    """Check the key before any job runs: present, well-formed, and it decrypts the source's texts.

    Called from the workflow's ``onstart``, so a missing, empty, malformed or wrong key stops the run
    before ``pair`` writes anything. Up to ``sample`` non-empty cells of the text column are tried and
    one that decrypts is enough (a few corrupt cells are the decrypt stage's business, with
    ``skip_invalidos``); the texts are decrypted in memory only and never shown.
    """
    env_var = (env_var or "").strip()
    dataframe = str(entrada.get("dataframe") or "").strip()
    column = str(entrada.get("dataframe_col") or "").strip()
    if not env_var or not dataframe or not column or not Path(dataframe).is_file():
        return  # nothing encrypted, or the pair stage reports the bad source itself
    fernet = make_fernet(key_from_env(env_var, environ, dotenv_path), env_var)
    tokens: list[str] = []
    try:
        for batch in pq.ParquetFile(dataframe).iter_batches(batch_size=sample, columns=[column]):
            tokens += [t for t in batch.column(0).to_pylist() if isinstance(t, str) and t.strip()]
            if len(tokens) >= sample:
                break
    except (pa.ArrowException, OSError, KeyError):
        return  # unreadable or without that column: the pair stage says so in its own words
    if not tokens:
        return
    plain, failed = decrypt_texts(tokens[:sample], fernet)
    if len(failed) < len(plain):
        return
    if not any(t.startswith(TOKEN_PREFIX) for t in tokens):
        cause = f"its texts are not Fernet tokens (a token starts with {TOKEN_PREFIX!r}) — is this column encrypted?"
    else:
        cause = f"the key in {env_var} decrypts none of them — is it the key the data was encrypted with?"
    raise AfinarError(
        f"{KEY_SETTING}: checked the first {len(plain)} texts of pastas.entrada.dataframe {dataframe!r} "
        f"before running: {cause}"
    )
