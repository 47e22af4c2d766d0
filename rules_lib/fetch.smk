rule fetch_data:
    input:
        dvcfile=local(f"{RAW_DATA}.dvc"),
    output:
        RAW_DATA,
    log:
        "logs/fetch_data.log",
    conda:
        "../envs/pipeline.yaml"
    resources:
        **step_resources("fetch_data"),
    message:
        "Pulling {output} from the DVC remote"
    shell:
        "dvc pull --force {input.dvcfile} > {log} 2>&1"
