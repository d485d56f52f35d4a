# Charts, the per-experiment Markdown report and the multi-experiment comparison.
# Every output is registered with report() so `snakemake --report results/report.html` is browsable:
# one category per experiment (subcategories Training / Data / Evaluation / Report), one for the comparison.


rule charts:
    input:
        training="results/{exp}/treinamento/training_metrics.jsonl",
        hardware="results/{exp}/treinamento/hardware_metrics.jsonl",
        metricas="results/{exp}/avaliacao/metricas.json",
        treino=f"{DATA}/treino.parquet",
        validacao=f"{DATA}/validacao.parquet",
        teste=f"{DATA}/teste.parquet",
        base=base_model_input,
    output:
        loss=report(
            "results/{exp}/treinamento/grafico_loss.png",
            caption="captions/grafico_loss.rst",
            category="{exp}",
            subcategory="Training",
        ),
        learning_rate=report(
            "results/{exp}/treinamento/grafico_learning_rate.png",
            caption="captions/grafico_learning_rate.rst",
            category="{exp}",
            subcategory="Training",
        ),
        grad_norm=report(
            "results/{exp}/treinamento/grafico_grad_norm.png",
            caption="captions/grafico_grad_norm.rst",
            category="{exp}",
            subcategory="Training",
        ),
        hardware=report(
            "results/{exp}/treinamento/grafico_hardware.png",
            caption="captions/grafico_hardware.rst",
            category="{exp}",
            subcategory="Training",
        ),
        tokens=report(
            "results/{exp}/treinamento/grafico_tokens.png",
            caption="captions/grafico_tokens.rst",
            category="{exp}",
            subcategory="Data",
        ),
        campos=report(
            "results/{exp}/treinamento/grafico_campos.png",
            caption="captions/grafico_campos.rst",
            category="{exp}",
            subcategory="Evaluation",
        ),
        token_stats="results/{exp}/treinamento/estatisticas_tokens.json",
    log:
        "results/logs/charts/{exp}.log",
    benchmark:
        "results/benchmarks/charts/{exp}.tsv"
    conda:
        "../envs/report.yaml"
    params:
        codigo=library_code("charts.py"),
        base=exp_value("modelo", "base"),
        max_seq_length=exp_value("treinamento", "max_seq_length"),
        max_grad_norm=exp_value("treinamento", "max_grad_norm"),
        formato_saida=CFG["formatos"]["formato_saida"],
    script:
        "../scripts/charts.py"


rule report:
    input:
        unpack(report_data_inputs),
        metricas="results/{exp}/avaliacao/metricas.json",
        por_registro="results/{exp}/avaliacao/por_registro.csv",
        predicoes="results/{exp}/predicoes/teste.jsonl",
        training="results/{exp}/treinamento/training_metrics.jsonl",
        hardware="results/{exp}/treinamento/hardware_metrics.jsonl",
        summary="results/{exp}/metrics_summary.json",
        token_stats=rules.charts.output.token_stats,
        # the Jinja2 template is an input so that editing it reruns the report (and nothing else)
        template=f"{workflow.basedir}/scripts/afinar/report/templates/relatorio.md.j2",
        charts=[
            rules.charts.output.loss,
            rules.charts.output.learning_rate,
            rules.charts.output.grad_norm,
            rules.charts.output.hardware,
            rules.charts.output.tokens,
            rules.charts.output.campos,
        ],
    output:
        md="results/{exp}/relatorio.md",
        # the same report as one self-contained page: snakemake --report shows HTML, not Markdown
        html=report(
            "results/{exp}/relatorio.html",
            caption="captions/relatorio.rst",
            category="{exp}",
            subcategory="Report",
        ),
    log:
        "results/logs/report/{exp}.log",
    benchmark:
        "results/benchmarks/report/{exp}.tsv"
    conda:
        "../envs/report.yaml"
    params:
        codigo=library_code("report.py"),
        experimento=exp_config,
        dados=data_config,
        misc=report_misc,
        relatorio=CFG["relatorio"],
    script:
        "../scripts/report.py"


rule compare:
    input:
        unpack(compare_inputs),
    output:
        md=report(
            "results/comparacao.md",
            caption="captions/comparacao.rst",
            category="Comparison",
        ),
        png=report(
            "results/comparacao.png",
            caption="captions/comparacao.rst",
            category="Comparison",
        ),
    log:
        "results/logs/compare/compare.log",
    benchmark:
        "results/benchmarks/compare/compare.tsv"
    conda:
        "../envs/report.yaml"
    params:
        codigo=library_code("compare.py"),
        experimentos=compare_configs,
    script:
        "../scripts/compare.py"
