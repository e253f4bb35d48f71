rule prepare_data:
    """Locate the dataset and write every split at every configured resolution (notebook 01)."""
    input:
        notebook="notebooks/01_data.ipynb",
    output:
        expand(data_file("{split}", "{res}"), split=SPLITS, res=RESOLUTIONS),
    log:
        notebook=f"{R}/notebooks/01_data.ipynb",
        stderr=f"{R}/logs/prepare_data.log",
    params:
        parameters=notebook_parameters(
            data_dir=f"{R}/data",
            resolutions=RESOLUTIONS,
            source=config["data"]["source"],
            root=config["data"]["root"],
            test_root=config["data"]["test_root"],
            channels=config["data"]["channels"],
            download_dir=config["data"]["download_dir"],
            workers=config["data"].get("workers", 8),
            skip_unreadable=config["data"]["skip_unreadable"],
        ),
    conda:
        "../envs/pagoda.yaml"
    threads: 1
    shell:
        PAPERMILL
