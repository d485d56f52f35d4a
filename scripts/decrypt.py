"""Rule `decrypt`: pairs.parquet → pairs.plain.parquet (mode 0600), with the Fernet key from the environment."""

from afinar.data.crypto import run_decrypt
from afinar.errors import run_rule


def main(smk) -> None:
    p = smk.params
    run_decrypt(
        smk.input.pairs, smk.output.plain, p.env_var, p.skip_invalidos, encrypted_input=p.encrypted_input
    )


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
