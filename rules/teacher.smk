rule train_teacher:
    """Train the EDM teacher at the base resolution and sample it with the Heun solver (notebook 02)."""
    input:
        notebook="notebooks/02_teacher.ipynb",
        data=data_file("train", BASE),
    output:
        teacher=TEACHER,
    log:
        notebook=f"{R}/notebooks/02_teacher.ipynb",
        stderr=f"{R}/logs/train_teacher.log",
    params:
        parameters=notebook_parameters(
            data_dir=f"{R}/data",
            resolution=BASE,
            run_dir=f"{R}/teacher",
            teacher_path=TEACHER,
            network=config["teacher"]["network"],
            steps=config["teacher"]["steps"],
            batch_size=config["teacher"]["batch_size"],
            lr=config["teacher"]["lr"],
            lr_warmup_steps=config["teacher"]["lr_warmup_steps"],
            ema_decay=config["teacher"]["ema_decay"],
            checkpoint_every=config["teacher"]["checkpoint_every"],
            sampler_points=config["teacher"]["sampler_points"],
            seed=config["seed"],
            device=config["device"],
        ),
    conda:
        "../envs/pagoda.yaml"
    threads: workflow.cores
    shell:
        PAPERMILL
