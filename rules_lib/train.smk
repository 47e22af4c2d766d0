from smkml.launch import container_probe, resolve_container

# The container training runs in (config `container:`, cluster defaults from cluster.yaml); checked while parsing.
TRAIN_CONTAINER = resolve_container(
    config.get("container"),
    CLUSTER,
    gpus=TRAIN_NEEDS["gpus"] if CLUSTER else 0,
    project_dir=Path.cwd(),
)


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
    threads: step_threads("train_model", tasks=TRAIN_RANKS)
    resources:
        **step_resources("train_model", tasks=TRAIN_RANKS),
    params:
        ranks=TRAIN_RANKS,
        probe=container_probe(TRAIN_CONTAINER),
        command=lambda wildcards, input, output: training_command(
            launcher=config["launcher"],
            backend=config["train"]["backend"],
            processes=TRAIN_RANKS,
            package=PACKAGE,
            launcher_options=vocabulary.srun_options(TRAIN_NEEDS, CLUSTER),
            container=TRAIN_CONTAINER,
            args=[
                "--train",
                input.train,
                "--out-dir",
                str(Path(output.model).parent),
                "--run-file",
                input.run,
                "--params",
                json.dumps(config["train"]["hyperparameters"], sort_keys=True),
                # Not a declared output: Snakemake deletes those when a job fails, and a rerun resumes from here.
                "--checkpoint-dir",
                "results/checkpoints/train_model",
                "--checkpoint-every",  # the schema fills in its default when the config has none
                str(config["train"]["checkpoint_every"]),
            ],
        ),
    message:
        "Training with {config[train][backend]} on {params.ranks} rank(s)"
    shell:
        "({params.probe}; {params.command}) > {log} 2>&1"
