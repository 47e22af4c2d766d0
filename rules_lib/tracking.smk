rule start_tracking:
    output:
        RUN_FILE,
    params:
        experiment=config["tracking"]["experiment"],
        config=json.dumps(config, sort_keys=True),
        package=PACKAGE,
    log:
        "logs/start_tracking.log",
    message:
        "Creating the pipeline's MLflow run in experiment {params.experiment}"
    shell:
        "python -m {params.package}.tracking start --out {output} "
        "--experiment {params.experiment:q} --params {params.config:q} > {log} 2>&1"
