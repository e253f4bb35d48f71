# Classifier-free guidance in one step (`snakemake --cores all results/guidance_table.csv`; README, "Guidance";
# PaGoDA Sec. 4): a teacher with a null class, guided latents, the omega estimator, omega-conditioned decoders,
# and the teacher's and PaGoDA's guidance curves (pagoda.guidance_study). Jobs that can run side by side take
# one thread (see rules/ablations.smk); the teacher and the encoding, which everything waits for, take all.


if GUIDED_TEACHER != TEACHER:  # the default teacher has no null class (guidance.label_dropout)

    rule train_guided_teacher:
        """Train the teacher with label dropout, so that it is also the unconditional denoiser of CFG."""
        input:
            data=data_file("train", BASE),
        output:
            teacher=GUIDED_TEACHER,
        log:
            f"{R}/logs/train_guided_teacher.log",
        params:
            kwargs=json.dumps(guided_teacher_kwargs()),
        conda:
            "../envs/pagoda.yaml"
        threads: workflow.cores
        shell:
            guidance_job("teacher")


rule encode_guided_latents:
    """Invert the training images with the guided PF-ODE, each at its own omega ~ U(omega_range)."""
    input:
        teacher=GUIDED_TEACHER,
        data=data_file("train", BASE),
    output:
        latents=GUIDED_LATENTS,
    log:
        f"{R}/logs/encode_guided_latents.log",
    params:
        kwargs=json.dumps(guided_encode_kwargs()),
    conda:
        "../envs/pagoda.yaml"
    threads: workflow.cores
    shell:
        guidance_job("encode")


rule train_omega_estimator:
    """Train omega_phi(x, c) on the teacher's guided samples and label every real training image with it."""
    input:
        teacher=GUIDED_TEACHER,
        data=data_file("train", BASE),
    output:
        estimator=guidance_study.estimator_path(config),
        summary=guidance_study.estimator_summary_path(config),
        labels=guidance_study.real_omegas_path(config),
    log:
        f"{R}/logs/train_omega_estimator.log",
    params:
        kwargs=lambda wildcards, input, output: json.dumps(dict(
            teacher_path=input.teacher, run_dir=f"{R}/guidance/estimator", out_path=output.estimator,
            labels_path=output.labels, summary_path=output.summary, data_dir=f"{R}/data",
            omega_range=GUIDE["omega_range"], seed=config["seed"],
            device=config["device"], **GUIDE["estimator"])),
    conda:
        "../envs/pagoda.yaml"
    threads: 1
    shell:
        guidance_job("estimator")


rule train_guided_decoder:
    """Train one omega-conditioned decoder stage (real images labelled by the estimator, or uniformly)."""
    input:
        unpack(guided_stage_inputs),
    output:
        decoder=f"{R}/guidance/decoder-{{real}}/{{res}}/decoder.pt",
    log:
        f"{R}/logs/train_guided_decoder_{{real}}_{{res}}.log",
    wildcard_constraints:
        real="|".join(guidance_study.REAL_OMEGAS),
        res="|".join(str(r) for r in RESOLUTIONS),
    params:
        kwargs=lambda wildcards: json.dumps(guided_stage(wildcards)),
    conda:
        "../envs/pagoda.yaml"
    threads: 1
    shell:
        guidance_job("train")


rule evaluate_guided:
    """Score one guided row: the teacher's CFG ODE (upsampled above its resolution) or PaGoDA at one omega."""
    input:
        unpack(guided_evaluation_inputs),
    output:
        record=f"{R}/guidance/eval/{{name}}-w{{omega}}_{{res}}.json",
        samples=f"{R}/guidance/eval/samples/{{name}}-w{{omega}}_{{res}}.npz",
    log:
        f"{R}/logs/evaluate_guided_{{name}}_{{omega}}_{{res}}.log",
    wildcard_constraints:
        name=r"teacher_ode|teacher_ode_bicubic|pagoda-(" + "|".join(guidance_study.REAL_OMEGAS) + ")",
        omega=r"[0-9.]+",
        res="|".join(str(r) for r in RESOLUTIONS),
    params:
        kwargs=lambda wildcards, input, output: guided_evaluate_kwargs(wildcards, input, output),
    conda:
        "../envs/pagoda.yaml"
    threads: 1
    shell:
        guidance_job("evaluate")


rule tabulate_guidance:
    """Collect the guided rows into results/guidance_table.csv, draw the curves and grids (notebook 11)."""
    input:
        notebook="notebooks/11_guidance.ipynb",
        records=[row["record"] for row in GUIDED_ROWS],
        estimator=guidance_study.estimator_summary_path(config),
        real_omegas=guidance_study.real_omegas_path(config),
        samples=[layout.record_samples_path(row["record"]) for row in GUIDED_ROWS],
    output:
        table=f"{R}/guidance_table.csv",
        figures=GUIDANCE_FIGURES,
    log:
        notebook=f"{R}/notebooks/11_guidance.ipynb",
        stderr=f"{R}/logs/tabulate_guidance.log",
    params:
        parameters=lambda wildcards, input: notebook_parameters(
            rows=GUIDED_ROWS, estimator_summary=input.estimator, real_omegas_path=input.real_omegas, base_resolution=BASE,
            table_path=f"{R}/guidance_table.csv", figures_dir=f"{R}/figures"),
    conda:
        "../envs/pagoda.yaml"
    threads: 1
    shell:
        PAPERMILL
