TRAIN = step("train_model", TRAIN_RANKS)
# The container training runs in (config `container:`, cluster defaults from its description); checked while parsing.
TRAIN_CONTAINER = resolve_container(
    with_data_binds(config["container"], PROCESSED_DIR),
    CLUSTER,
    gpus=TRAIN.needs["gpus"],
    project_dir=Path.cwd(),
)
# A launcher that cannot start this backend stops the run here (e.g. torchrun with Horovod).
launcher_prefix(
    CLUSTER["launcher"],
    config["train"]["backend"],
    TRAIN.ranks,
    TRAIN.layout,
    package=PACKAGE,
)


rule train_model:
    input:
        train=f"{PROCESSED_DIR}/train.npz",
        run=RUN_FILE,
    output:
        model="results/model/model.pt",
        history="results/model/history.json",
        record=RECORDS["train_model"],
    log:
        "logs/train_model.log",
    conda:
        "../envs/pipeline.yaml"
    threads: TRAIN.threads
    resources:
        **TRAIN.resources,
    params:
        package=PACKAGE,
        probe=lambda wildcards, input: container_probe(TRAIN_CONTAINER),
        # Functions of input and output are not recorded as rule parameters by Snakemake: how and where the ranks
        # start (launcher, container, number of ranks) is provenance, not a reason to train again.
        command=lambda wildcards, input, output: training_command(
            launcher=CLUSTER["launcher"],
            backend=config["train"]["backend"],
            processes=TRAIN.ranks,
            package=PACKAGE,
            layout=TRAIN.layout,
            mpi=CLUSTER["mpi"],
            cache_dir=CLUSTER["cache_dir"],
            container=TRAIN_CONTAINER,
            args=[
                "--train",
                input.train,
                "--out-dir",
                str(Path(output.model).parent),
                "--record",
                output.record,
                "--params",
                json.dumps(config["train"]["hyperparameters"], sort_keys=True),
                # Not a declared output: Snakemake deletes those when a job fails, and a rerun resumes from here.
                "--checkpoint-dir",
                "results/checkpoints/train_model",
                "--checkpoint-every",
                str(config["train"]["checkpoint_every"]),
            ],
        ),
    message:
        f"Training with {config['train']['backend']} on {TRAIN.ranks} rank(s)"
    shell:
        "({params.probe}; {params.command}) > {log:q} 2>&1 || (python -m {params.package:q}.tracking fail "
        "--run-file {input.run:q} --step train_model --new-run >> {log:q} 2>&1; exit 1)"
