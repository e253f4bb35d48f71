# Both rules take one thread: their jobs are short and largely single-threaded (kernel start, imports,
# k-NN), so on a CPU two of them side by side finish sooner than one on two threads (measured: 29.6 s
# vs 36.6 s for two pagoda@32 rows). profiles/slurm sets their threads for GPU nodes.

rule compute_reference:
    """Reference features (judge, EfficientNet) and pixels of the training images at one resolution (notebook 03)."""
    input:
        notebook="notebooks/03_reference.ipynb",
        data=lambda wildcards: data_file("train", wildcards.res),
        judge=lambda wildcards: judge_path(wildcards.res),
    output:
        reference=f"{R}/eval/reference_{{res}}.npz",
    log:
        notebook=f"{R}/notebooks/03_reference_{{res}}.ipynb",
        stderr=f"{R}/logs/compute_reference_{{res}}.log",
    wildcard_constraints:
        res="|".join(str(r) for r in RESOLUTIONS),
    params:
        parameters=lambda wildcards: notebook_parameters(
            data_dir=f"{R}/data",
            resolutions=[int(wildcards.res)],
            eval_dir=f"{R}/eval",
            judges_dir=f"{R}/judge",
            n_images=config["evaluate"]["n_reference"],
            swd_images=config["evaluate"]["swd_images"],
            feature_size=config["evaluate"]["feature_size"],
            inception_dir=config["evaluate"]["inception_dir"],
            seed=config["seed"],
            device=config["device"],
        ),
    conda:
        "../envs/pagoda.yaml"
    threads: 1
    shell:
        PAPERMILL


rule evaluate_method:
    """Score one method's images at one resolution against the training images (notebook 07)."""
    input:
        unpack(evaluation_inputs),
        notebook="notebooks/07_evaluate.ipynb",
        reference=lambda wildcards: reference_path(wildcards.res),
        judge=lambda wildcards: judge_path(wildcards.res),
    output:
        record=f"{R}/eval/{{method}}_{{res}}.json",
        samples=f"{R}/eval/samples/{{method}}_{{res}}.npz",
    log:
        notebook=f"{R}/notebooks/07_evaluate_{{method}}_{{res}}.ipynb",
        stderr=f"{R}/logs/evaluate_{{method}}_{{res}}.log",
    wildcard_constraints:
        method="|".join(plan.METHODS),
        res="|".join(str(r) for r in RESOLUTIONS),
    params:
        parameters=evaluation_parameters,
    conda:
        "../envs/pagoda.yaml"
    threads: 1
    shell:
        PAPERMILL
