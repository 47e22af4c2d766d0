rule fetch_data:
    input:
        dvcfile=f"{RAW_DATA}.dvc",
    output:
        RAW_DATA,
    log:
        "logs/fetch_data.log",
    message:
        "Pulling {output} from the DVC remote"
    shell:
        "dvc pull --force {input.dvcfile} > {log} 2>&1"
