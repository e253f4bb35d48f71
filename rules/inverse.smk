rule solve_inverse_problems:
    """Super-resolution, inpainting, deblurring, class transfer, interpolation, measured (notebook 08)."""
    input:
        notebook="notebooks/08_inverse.ipynb",
        teacher=TEACHER,
        decoder=decoder_path(TOP),
        judge=judge_path(TOP),
        data=data_file("test", TOP),
    output:
        table=f"{R}/inverse_table.csv",
        transfer=f"{R}/class_transfer.csv",
        figures=[f"{R}/figures/{name}.png" for name in INVERSE_FIGURES],
    log:
        notebook=f"{R}/notebooks/08_inverse.ipynb",
        stderr=f"{R}/logs/solve_inverse_problems.log",
    params:
        parameters=notebook_parameters(
            data_dir=f"{R}/data",
            teacher_path=TEACHER,
            decoder_path=decoder_path(TOP),
            judge_path=judge_path(TOP),
            table_path=f"{R}/inverse_table.csv",
            transfer_path=f"{R}/class_transfer.csv",
            figures_dir=f"{R}/figures",
            seed=config["seed"],
            device=config["device"],
            **config["inverse"],
        ),
    conda:
        "../envs/pagoda.yaml"
    threads: workflow.cores
    shell:
        PAPERMILL
