# Tables, figures and the HTML report from the whole results tree. The outputs are also marked
# for `snakemake --report` (captions in workflow/report/).

from rdiunet.report.figure_kinds import FIGURE_KINDS

TABLES = expand("reports/{table}.{ext}", table=["table1", "table2"], ext=["csv", "md"])

REPORT_TARGETS = TABLES + ["reports/paper_check.csv", "reports/report.html", "reports/robustness.csv"]


# Light work that reads the whole results tree: never worth a cluster job.
localrules:
    tables,
    figures,
    report,


rule tables:
    input:
        metrics=all_metrics(),
        bench=all_bench(),
        speed=all_speed(),
        data=expand("data/prepared/{dataset}.json", dataset=DATASETS),
    output:
        report(TABLES[0], caption="../report/table1.rst", category="Tables"),
        report(TABLES[1], caption="../report/table1.rst", category="Tables"),
        report(TABLES[2], caption="../report/table2.rst", category="Tables"),
        report(TABLES[3], caption="../report/table2.rst", category="Tables"),
        report("reports/paper_check.csv", caption="../report/paper_check.rst", category="Tables"),
    log:
        "logs/report/tables.log",
    conda:
        "../../envs/report.yaml"
    params:
        config=config_json,
    shell:
        "python -m rdiunet.cli tables --results results --data data/prepared --config-json {params.config} "
        "--out reports > {log} 2>&1"


rule figures:
    input:
        metrics=all_metrics(),
        data=expand("data/prepared/{dataset}.npz", dataset=DATASETS),
    output:
        png=report(
            expand("reports/figures/{kind}_{dataset}.png", kind=FIGURE_KINDS, dataset=DATASETS),
            caption="../report/figures.rst",
            category="Figures",
        ),
        svg=expand("reports/figures/{kind}_{dataset}.svg", kind=FIGURE_KINDS, dataset=DATASETS),
    log:
        "logs/report/figures.log",
    conda:
        "../../envs/report.yaml"
    params:
        config=config_json,
    shell:
        "python -m rdiunet.cli figures --results results --data data/prepared --config-json {params.config} "
        "--out reports/figures > {log} 2>&1"


rule report:
    input:
        tables=TABLES,
        figures=rules.figures.output.png,
        bench=all_bench(),
        speed=all_speed(),
    output:
        html=report("reports/report.html", caption="../report/report.rst", category="Report"),
        claims=report("reports/claims.csv", caption="../report/claims.rst", category="Report"),
        robustness=report("reports/robustness.csv", caption="../report/robustness.rst", category="Report"),
    log:
        "logs/report/report.log",
    conda:
        "../../envs/report.yaml"
    params:
        config=config_json,
    shell:
        "python -m rdiunet.cli report --results results --data data/prepared --figures reports/figures "
        "--timing logs/timing --config-json {params.config} --out {output.html} > {log} 2>&1"
