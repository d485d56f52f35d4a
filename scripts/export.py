"""Rules `export_merged`, `export_gguf`, `export_onnx`: the optional exports of one experiment's model."""

from afinar.errors import AfinarError, run_rule


def main(smk) -> None:
    p = smk.params
    if smk.rule == "export_merged":
        from afinar.export.merged import merge_adapter, merged_dtype

        merge_adapter(
            smk.input.adapter,
            p.base,
            smk.output.merged,
            dtype=merged_dtype(p.precisao),
            trained_nbits=int(p.nbits),
        )
    elif smk.rule == "export_gguf":
        from afinar.export.gguf import convert_to_gguf

        convert_to_gguf(
            smk.input.merged, smk.output.gguf, p.tipo, llama_cpp=p.llama_cpp, pre_tokenizer=p.pre_tokenizer
        )
    elif smk.rule == "export_onnx":
        from afinar.export.onnx import export_onnx

        export_onnx(smk.input.merged, smk.output.onnx)
    else:
        raise AfinarError(
            f"scripts/export.py: unknown rule {smk.rule!r} — only the export_* rules use this script"
        )


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
