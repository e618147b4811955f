# Tables, figures and the HTML report from the whole results tree.

import json

# The resolved configuration (defaults filled in by the schema) is what the report describes.
CONFIG_JSON = shlex.quote(json.dumps(config))

REPORT_TARGETS = expand("reports/{table}.{ext}", table=["table1", "table2"], ext=["csv", "md"])


rule tables:
    input:
        metrics=all_metrics(),
        bench=all_bench(),
    output:
        expand("reports/{table}.{ext}", table=["table1", "table2"], ext=["csv", "md"]),
    log:
        "logs/report/tables.log",
    conda:
        "../../envs/report.yaml"
    params:
        config=CONFIG_JSON,
    shell:
        "python -m rdiunet.cli tables --results results --config-json {params.config} --out reports > {log} 2>&1"
