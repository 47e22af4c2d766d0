rule start_tracking:
    output:
        RUN_FILE,
    log:
        "logs/start_tracking.log",
    conda:
        "../envs/pipeline.yaml"
    resources:
        **step_resources("start_tracking"),
    params:
        experiment=config["tracking"]["experiment"],
        config=json.dumps(config, sort_keys=True),
        package=PACKAGE,
    message:
        "Creating the pipeline's MLflow run in experiment {params.experiment}"
    shell:
        "python -m {params.package}.tracking start --out {output} "
        "--experiment {params.experiment:q} --params {params.config:q} > {log} 2>&1"
