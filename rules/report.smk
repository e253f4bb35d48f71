rule make_report:
    """Collect the records into the tables, draw the figures, check the paper's claims (notebook 09)."""
    input:
        notebook="notebooks/09_report.ipynb",
        records=[record_path(m, r) for m, r in plan.rows(RESOLUTIONS)],
        stages=[TEACHER, LATENTS] + [decoder_path(r) for r in RESOLUTIONS],
        inverse=f"{R}/inverse_table.csv",
        transfer=f"{R}/class_transfer.csv",
        judges=[judge_path(r) for r in RESOLUTIONS],
    output:
        table=f"{R}/fid_table.csv",
        judges=f"{R}/judge.json",
        costs=f"{R}/stage_costs.csv",
        figures=[f"{R}/figures/{name}.png" for name in FIGURES],
    log:
        notebook=f"{R}/notebooks/09_report.ipynb",
        stderr=f"{R}/logs/make_report.log",
    params:
        parameters=notebook_parameters(
            results_dir=R,
            resolutions=RESOLUTIONS,
            record_paths=[record_path(m, r) for m, r in plan.rows(RESOLUTIONS)],
            samples_dir=f"{R}/eval/samples",
            table_path=f"{R}/fid_table.csv",
            inverse_path=f"{R}/inverse_table.csv",
            transfer_path=f"{R}/class_transfer.csv",
            judge_paths=[judge_path(r) for r in RESOLUTIONS],
            judges_path=f"{R}/judge.json",
            costs_path=f"{R}/stage_costs.csv",
            figures_dir=f"{R}/figures",
        ),
    conda:
        "../envs/pagoda.yaml"
    threads: 1
    shell:
        PAPERMILL
