rule train_decoder:
    """Train the one-step decoder at one resolution: Stage 2 at the base, a growth stage above (notebook 04)."""
    input:
        notebook="notebooks/04_decoder.ipynb",
        init=lambda wildcards: decoder_init(wildcards.res),
        latents=LATENTS,
        data=lambda wildcards: data_file("train", wildcards.res),
    output:
        decoder=f"{R}/decoder/{{res}}/decoder.pt",
    log:
        notebook=f"{R}/notebooks/04_decoder_{{res}}.ipynb",
        stderr=f"{R}/logs/train_decoder_{{res}}.log",
    wildcard_constraints:
        res="|".join(str(r) for r in RESOLUTIONS),
    params:
        parameters=lambda wildcards: decoder_parameters(wildcards.res),
    conda:
        "../envs/pagoda.yaml"
    threads: workflow.cores
    shell:
        PAPERMILL
