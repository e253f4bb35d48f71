if config["teacher"].get("import_path"):

    rule import_teacher:
        """Import the public ADM-format teacher checkpoint (EDM ImageNet-64) and sample it (notebook 04)."""
        input:
            notebook="notebooks/04_teacher.ipynb",
            data=data_file("train", BASE),
            # The checkpoint itself is not an input, so that a dry run plans the study before the
            # download; the import stops with a clear error if the file is missing.
        output:
            teacher=TEACHER,
        log:
            notebook=f"{R}/notebooks/04_teacher.ipynb",
            stderr=f"{R}/logs/import_teacher.log",
        params:
            parameters=teacher_parameters(),
        conda:
            "../envs/pagoda.yaml"
        threads: 1  # mapping the weights is one thread's work (profiles/slurm sets more for its sampling)
        shell:
            PAPERMILL

else:

    rule train_teacher:
        """Train the EDM teacher at the base resolution and sample it with the Heun solver (notebook 04)."""
        input:
            notebook="notebooks/04_teacher.ipynb",
            data=data_file("train", BASE),
        output:
            teacher=TEACHER,
            snapshots=TEACHER_SNAPSHOTS,
        log:
            notebook=f"{R}/notebooks/04_teacher.ipynb",
            stderr=f"{R}/logs/train_teacher.log",
        params:
            parameters=teacher_parameters(),
        conda:
            "../envs/pagoda.yaml"
        threads: workflow.cores
        shell:
            PAPERMILL
