# The paper's ablations (`snakemake --cores all results/ablations.csv`; README, "Ablations"): decoder variants
# trained from the default run's teacher, snapshots and decoders (pagoda.ablations), judged like the table's rows.
# Every job takes one thread: the jobs are independent, and on a CPU two one-thread trainings side by side
# finish sooner than one after the other on two threads (measured: 46.7 s for two 150-step Stage-2 runs
# side by side, against 35.9 s for one on two threads, i.e. 1.54x the throughput).


rule encode_teacher_snapshot:
    """Invert the training images with a weaker teacher and draw its noise -> sample pairs (teacher_quality)."""
    input:
        teacher=lambda wildcards: ablations.teacher_snapshot_path(R, int(wildcards.step)),
        data=data_file("train", BASE),
    output:
        latents=f"{R}/ablations/teacher{{step}}/latents/summary.json",
        pairs=f"{R}/ablations/teacher{{step}}/pairs/pairs-00000.npz",
    log:
        f"{R}/logs/encode_teacher_snapshot_{{step}}.log",
    wildcard_constraints:
        step=r"\d+",
    params:
        kwargs=lambda wildcards: encode_teacher_kwargs(wildcards.step),
    conda:
        "../envs/pagoda.yaml"
    threads: 1
    shell:
        ablation_job("encode")


rule draw_teacher_pairs:
    """Draw the teacher's noise -> sample pairs for L_dstl (teacher_quality at the full teacher)."""
    input:
        teacher=TEACHER,
    output:
        pairs=teacher_pairs_path(""),
    log:
        f"{R}/logs/draw_teacher_pairs.log",
    params:
        kwargs=encode_teacher_kwargs(""),
    conda:
        "../envs/pagoda.yaml"
    threads: 1
    shell:
        ablation_job("encode")


rule train_ablation_decoder:
    """Train one decoder stage of an ablation's variant at one training seed."""
    input:
        unpack(variant_stage_inputs),
    output:
        decoder=f"{R}/ablations/{{key}}/seed{{seed}}/{{res}}/decoder.pt",
    log:
        f"{R}/logs/train_ablation_decoder_{{key}}_seed{{seed}}_{{res}}.log",
    wildcard_constraints:
        key="|".join(VARIANTS),
        seed=r"\d+",
        res="|".join(str(r) for r in RESOLUTIONS),
    params:
        kwargs=lambda wildcards: json.dumps(variant_stage(wildcards)[2]),
    conda:
        "../envs/pagoda.yaml"
    threads: 1
    shell:
        ablation_job("train")


rule evaluate_ablation_decoder:
    """Score one variant's decoder at one training seed like the table's pagoda rows."""
    input:
        decoder=lambda wildcards: layout.decoder_path(
            ablations.decoder_dir(config, VARIANTS[wildcards.key], int(wildcards.seed)),
            VARIANTS[wildcards.key].resolution),
        reference=lambda wildcards: reference_path(VARIANTS[wildcards.key].resolution),
        judge=lambda wildcards: judge_path(VARIANTS[wildcards.key].resolution),
    output:
        record=f"{R}/ablations/eval/{{key}}_seed{{seed}}.json",
        samples=f"{R}/ablations/eval/samples/{{key}}_seed{{seed}}.npz",
    log:
        f"{R}/logs/evaluate_ablation_decoder_{{key}}_seed{{seed}}.log",
    wildcard_constraints:
        key="|".join(VARIANTS),
        seed=r"\d+",
    params:
        kwargs=lambda wildcards, input, output: evaluate_kwargs("pagoda", VARIANTS[wildcards.key].resolution,
                                                                output, decoder_path=input.decoder),
    conda:
        "../envs/pagoda.yaml"
    threads: 1
    shell:
        ablation_job("evaluate")


rule evaluate_teacher_snapshot:
    """Score a weaker teacher's Heun samples at the base resolution (teacher_quality's teacher axis)."""
    input:
        teacher=lambda wildcards: ablations.teacher_snapshot_path(R, int(wildcards.step)) if wildcards.step else TEACHER,
        reference=reference_path(BASE),
        judge=judge_path(BASE),
    output:
        record=f"{R}/ablations/eval/teacher{{step}}.json",
        samples=f"{R}/ablations/eval/samples/teacher{{step}}.npz",
    log:
        f"{R}/logs/evaluate_teacher_snapshot_{{step}}.log",
    wildcard_constraints:
        step=r"\d*",
    params:
        kwargs=lambda wildcards, input, output: evaluate_kwargs(
            "teacher_ode", BASE, output, teacher_path=input.teacher, num_points=config["evaluate"]["num_points"]),
    conda:
        "../envs/pagoda.yaml"
    threads: 1
    shell:
        ablation_job("evaluate")


rule evaluate_teacher_steps:
    """Score the teacher's Heun sampler with few grid points, bicubic-upsampled above its resolution."""
    input:
        teacher=TEACHER,
        reference=lambda wildcards: reference_path(wildcards.res),
        judge=lambda wildcards: judge_path(wildcards.res),
        base=lambda wildcards: [] if int(wildcards.res) == BASE else
        f"{R}/ablations/eval/samples/teacher_steps-points{wildcards.points}_{BASE}.npz",
    output:
        record=f"{R}/ablations/eval/teacher_steps-points{{points}}_{{res}}.json",
        samples=f"{R}/ablations/eval/samples/teacher_steps-points{{points}}_{{res}}.npz",
    log:
        f"{R}/logs/evaluate_teacher_steps_{{points}}_{{res}}.log",
    wildcard_constraints:
        points=r"\d+",
        res="|".join(str(r) for r in RESOLUTIONS),
    params:
        kwargs=lambda wildcards, input, output: evaluate_kwargs(
            "teacher_ode" if int(wildcards.res) == BASE else "teacher_ode_bicubic", wildcards.res, output,
            teacher_path=input.teacher, num_points=int(wildcards.points), base_samples_path=input.base or None),
    conda:
        "../envs/pagoda.yaml"
    threads: 1
    shell:
        ablation_job("evaluate")


rule compare_sr_compute:
    """Super-resolution by inversion against latent optimisation at the same and at more time per image."""
    input:
        teacher=TEACHER,
        decoder=decoder_path(TOP),
        judge=judge_path(TOP),
        data=data_file("test", TOP),
    output:
        table=SR_COMPUTE,
    log:
        f"{R}/logs/compare_sr_compute.log",
    params:
        kwargs=lambda wildcards, input, output: json.dumps(dict(
            data_dir=f"{R}/data", teacher_path=input.teacher, decoder_path=input.decoder, judge_path=input.judge,
            out_path=output.table, n_images=config["inverse"]["n_images"], num_points=config["inverse"]["num_points"],
            feature_size=config["inverse"]["feature_size"], multiples=ABL["sr_multiples"],
            lr=config["inverse"]["opt_lr"], seed=config["seed"], device=config["device"])),
    conda:
        "../envs/pagoda.yaml"
    threads: 1  # timed: one thread for inversion and optimisation alike
    shell:
        ablation_job("sr")


rule tabulate_ablations:
    """Collect the ablations' rows into results/ablations.csv, draw their figures, judge the claims (notebook 10)."""
    input:
        notebook="notebooks/10_ablations.ipynb",
        records=sorted({row["record"] for row in ablation_rows()}),
        samples=sorted({row[k] for row in ablation_rows() for k in ("samples", "base_samples") if row.get(k)}),
        sr=SR_COMPUTE,
    output:
        table=f"{R}/ablations.csv",
        figures=ABLATION_FIGURES,
    log:
        notebook=f"{R}/notebooks/10_ablations.ipynb",
        stderr=f"{R}/logs/tabulate_ablations.log",
    params:
        parameters=notebook_parameters(rows=ablation_rows(), sr_path=SR_COMPUTE, sr_resolution=TOP,
                                       seed=config["seed"], table_path=f"{R}/ablations.csv",
                                       figures_dir=f"{R}/figures"),
    conda:
        "../envs/pagoda.yaml"
    threads: 1
    shell:
        PAPERMILL
