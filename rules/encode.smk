rule encode_latents:
    """Invert training images and their flips to noise latents with the teacher's PF-ODE (notebook 03)."""
    input:
        notebook="notebooks/03_encode.ipynb",
        teacher=TEACHER,
        data=data_file("train", BASE),
    output:
        summary=LATENTS,
    log:
        notebook=f"{R}/notebooks/03_encode.ipynb",
        stderr=f"{R}/logs/encode_latents.log",
    params:
        parameters=notebook_parameters(
            teacher_path=TEACHER,
            data_dir=f"{R}/data",
            resolution=BASE,
            out_dir=f"{R}/latents",
            summary_path=LATENTS,
            n_images=config["encode"]["n_images"],
            flips=True,
            num_points=config["encode"]["num_points"],
            clamp=config["encode"]["clamp"],
            shard_size=config["encode"]["shard_size"],
            batch_size=config["encode"]["batch_size"],
            teacher_pairs=config["encode"]["teacher_pairs"],
            roundtrip_images=config["encode"]["roundtrip_images"],
            seed=config["seed"],
            device=config["device"],
        ),
    conda:
        "../envs/pagoda.yaml"
    threads: workflow.cores
    shell:
        PAPERMILL
