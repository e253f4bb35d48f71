rule train_judge:
    """Train the judge of one resolution, a CNN classifier of the real training images only (notebook 02)."""
    input:
        notebook="notebooks/02_judge.ipynb",
        data=lambda wildcards: data_file("train", wildcards.res),
    output:
        judge=f"{R}/judge/{{res}}/judge.pt",
    log:
        notebook=f"{R}/notebooks/02_judge_{{res}}.ipynb",
        stderr=f"{R}/logs/train_judge_{{res}}.log",
    wildcard_constraints:
        res="|".join(str(r) for r in RESOLUTIONS),
    params:
        parameters=lambda wildcards: notebook_parameters(
            data_dir=f"{R}/data",
            resolutions=[int(wildcards.res)],
            judges_dir=f"{R}/judge",
            steps=config["judge"]["steps"],
            batch_size=config["judge"]["batch_size"],
            lr=config["judge"]["lr"],
            width=config["judge"]["width"],
            feature_dim=config["judge"]["feature_dim"],
            seed=config["seed"],
            device=config["device"],
        ),
    conda:
        "../envs/pagoda.yaml"
    # One thread: a small CNN uses one core nearly as well as two. Priority: the judges start first, so the
    # 32x32 judge (the longest) runs beside the short one-thread jobs instead of alone before the teacher.
    threads: 1
    priority: 1
    shell:
        PAPERMILL
