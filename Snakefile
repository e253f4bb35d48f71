# The PaGoDA study as a workflow: every stage is one papermill-executed notebook (see README.md).
import sys

from snakemake.utils import min_version, validate

# validate() imports jsonschema, which builds an IRI grammar when rfc3987_syntax is importable (1.4 s of every
# snakemake start) for a format check that validate() never runs: it passes no format checker.
sys.modules.setdefault("rfc3987_syntax", None)

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/schema.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/teacher.smk"
include: "rules/encode.smk"
include: "rules/judge.smk"
include: "rules/decoder.smk"
include: "rules/evaluate.smk"
include: "rules/inverse.smk"
include: "rules/report.smk"
include: "rules/ablations.smk"
include: "rules/guidance.smk"


rule all:
    """Default target: the whole study, ending in results/fid_table.csv and the report."""
    input:
        f"{R}/fid_table.csv",
