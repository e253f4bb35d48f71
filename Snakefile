# The PaGoDA study as a workflow: every stage is one papermill-executed notebook (see README.md).
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/schema.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/teacher.smk"
include: "rules/encode.smk"
include: "rules/decoder.smk"


rule all:
    """Default target: everything implemented so far (the decoder at every resolution)."""
    input:
        [decoder_path(r) for r in RESOLUTIONS],
