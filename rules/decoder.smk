rule train_decoder:
    """Train the one-step decoder at the teacher's resolution from the teacher: Stage 2 (notebook 06_decoder)."""
    input:
        notebook="notebooks/06_decoder.ipynb",
        init=TEACHER,
        latents=LATENTS,
        data=lambda wildcards: data_file("train", wildcards.res),
    output:
        decoder=f"{R}/decoder/{{res}}/decoder.pt",
    log:
        notebook=f"{R}/notebooks/06_decoder_{{res}}.ipynb",
        stderr=f"{R}/logs/train_decoder_{{res}}.log",
    wildcard_constraints:
        res=str(BASE),
    params:
        parameters=lambda wildcards: decoder_parameters(wildcards.res),
    conda:
        "../envs/pagoda.yaml"
    threads: workflow.cores
    shell:
        PAPERMILL


rule grow_decoder:
    """Grow the previous resolution's decoder to the next resolution: a growth stage (notebook 06_growth)."""
    input:
        notebook="notebooks/06_growth.ipynb",
        init=lambda wildcards: decoder_init(wildcards.res),
        base=decoder_path(BASE),
        latents=LATENTS,
        data=lambda wildcards: data_file("train", wildcards.res),
        judge=lambda wildcards: judge_path(wildcards.res),
        reference=lambda wildcards: reference_path(wildcards.res),
    output:
        decoder=f"{R}/decoder/{{res}}/decoder.pt",
        curve=f"{R}/decoder/{{res}}/learning_curve.csv",
        figure=f"{R}/figures/learning_curve_{{res}}.png",
    log:
        notebook=f"{R}/notebooks/06_growth_{{res}}.ipynb",
        stderr=f"{R}/logs/grow_decoder_{{res}}.log",
    wildcard_constraints:
        res="|".join(str(r) for r in RESOLUTIONS[1:]),
    params:
        parameters=lambda wildcards: decoder_parameters(wildcards.res),
    conda:
        "../envs/pagoda.yaml"
    threads: workflow.cores
    shell:
        PAPERMILL
