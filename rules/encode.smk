rule encode_shard:
    """Invert one shard of training images and their flips to noise latents (one job per shard)."""
    input:
        teacher=TEACHER,
        data=data_file("train", BASE),
    output:
        shard=f"{R}/latents/shard-{{shard}}.npz",
    log:
        f"{R}/logs/encode_shard_{{shard}}.log",
    wildcard_constraints:
        shard=r"\d{5}",
    params:
        parameters=json.dumps(encode_parameters()),
    conda:
        "../envs/pagoda.yaml"
    threads: workflow.cores
    shell:
        "PYTHONPATH=src OMP_NUM_THREADS={threads} python -m pagoda.encode --shard {wildcards.shard} "
        "{params.parameters:q} > {log} 2>&1"


rule encode_latents:
    """Summarise the latents: statistics, round trip through the teacher, teacher pairs (notebook 05)."""
    input:
        notebook="notebooks/05_encode.ipynb",
        shards=LATENT_SHARDS,
    output:
        summary=LATENTS,
    log:
        notebook=f"{R}/notebooks/05_encode.ipynb",
        stderr=f"{R}/logs/encode_latents.log",
    params:
        parameters=notebook_parameters(
            **encode_parameters(),
            summary_path=LATENTS,
            teacher_pairs=config["encode"]["teacher_pairs"],
            roundtrip_images=config["encode"]["roundtrip_images"],
        ),
    conda:
        "../envs/pagoda.yaml"
    threads: workflow.cores
    shell:
        PAPERMILL
