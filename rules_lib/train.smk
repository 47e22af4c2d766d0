rule train_model:
    input:
        train=f"{PROCESSED_DIR}/train.npz",
        run=RUN_FILE,
    output:
        model="results/model/model.pt",
        history="results/model/history.json",
    log:
        "logs/train_model.log",
    conda:
        "../envs/pipeline.yaml"
    threads: config["train"]["processes"]
    resources:
        **step_resources("train_model", tasks=TRAIN_RANKS),
    params:
        ranks=TRAIN_RANKS,
        command=lambda wildcards, input, output: training_command(
            launcher=config["launcher"],
            backend=config["train"]["backend"],
            processes=TRAIN_RANKS,
            package=PACKAGE,
            launcher_options=vocabulary.srun_options(TRAIN_NEEDS, CLUSTER),
            args=[
                "--train",
                input.train,
                "--out-dir",
                str(Path(output.model).parent),
                "--run-file",
                input.run,
                "--params",
                json.dumps(config["train"]["hyperparameters"], sort_keys=True),
            ],
        ),
    message:
        "Training with {config[train][backend]} on {params.ranks} rank(s)"
    shell:
        "{params.command} > {log} 2>&1"
