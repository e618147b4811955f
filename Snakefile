# rdiunet-bench: reproduce RDIU-Net (ICCAS 2023).
#
#   snakemake --cores all --use-conda            the paper run (config.yaml)
#   snakemake --cores all --profile profiles/demo    a CPU-sized run on synthetic stand-ins
#
# WHAT runs is config.yaml (validated against workflow/schemas/config.schema.yaml); HOW it runs
# (cores, cluster, demo sizes) lives in profiles/.

import os

from snakemake.utils import min_version

min_version("9.0")


# Absolute: the working directory changes (config `workdir`) and the report re-reads it.
configfile: os.path.join(workflow.basedir, "config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
