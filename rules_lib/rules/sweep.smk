# Sweeps (config `sweep:`, docs/sweeps.md): every member trains and is evaluated as a wildcard instance of the rules
# below, then one aggregate step compares them. Without a sweep SWEEP_MEMBERS is empty and nothing here is a target.
# Members and their ids come from workflow/lib/smkml/sweep.py; a bad sweep config stops the run here, while parsing.
from smkml import sweep as sweeps

try:
    SWEEP_MEMBERS = sweeps.members(
        config,
        schemas.node("config", "properties", "train", "properties", "hyperparameters"),
    )
except sweeps.SweepError as error:
    from snakemake.exceptions import WorkflowError

    raise WorkflowError(str(error)) from None

SWEEP = config["sweep"]
SWEEP_DIR = "results/sweep"
# The sweep's parent run is the pipeline's run (start_tracking; the prepare step logs the data there too): one
# child run per member is nested under it.
SWEEP_RUN_FILE = RUN_FILE
SWEEP_TARGETS = [
    f"{SWEEP_DIR}/aggregate.csv",
    f"{SWEEP_DIR}/aggregate.html",
    f"{SWEEP_DIR}/plots/metric_vs_params.png",
    f"{SWEEP_DIR}/best.json",
    SWEEP_REGISTERED_FILE,
]


wildcard_constraints:
    member=sweeps.MEMBER_ID,


localrules:
    sweep_params,
    start_member,
    register_best_member,


rule sweep_params:
    output:
        f"{SWEEP_DIR}/{{member}}/params.json",
    log:
        "logs/sweep/{member}/params.log",
    conda:
        "../envs/pipeline.yaml"
    params:
        values=lambda wildcards: json.dumps(
            SWEEP_MEMBERS[wildcards.member], sort_keys=True
        ),
    message:
        "Writing the parameters of sweep member {wildcards.member}"
    shell:
        "printf '%s\\n' {params.values:q} > {output:q} 2> {log:q}"


rule start_member:
    input:
        parent=SWEEP_RUN_FILE,
        params=f"{SWEEP_DIR}/{{member}}/params.json",
    output:
        f"{SWEEP_DIR}/{{member}}/run.json",
    log:
        "logs/sweep/{member}/start_member.log",
    conda:
        "../envs/pipeline.yaml"
    resources:
        **step("start_tracking").resources,
        mlflow_db=1,
    params:
        package=PACKAGE,
    message:
        "Creating the MLflow run of sweep member {wildcards.member} under the sweep's run"
    shell:
        "python -m {params.package:q}.tracking start-child --out {output:q} --parent-run-file {input.parent:q} "
        "--name {wildcards.member:q} --params {input.params:q} > {log:q} 2>&1"


# A failed member marks its MLflow run FAILED, naming the step (tracking fail), and fails its job; with --keep-going
# the other members go on. A member whose training failed gets a new run when it is trained again.


rule train_member:
    input:
        train=f"{PROCESSED_DIR}/train.npz",
        run=f"{SWEEP_DIR}/{{member}}/run.json",
        params=f"{SWEEP_DIR}/{{member}}/params.json",
    output:
        model=f"{SWEEP_DIR}/{{member}}/model/model.pt",
        history=f"{SWEEP_DIR}/{{member}}/model/history.json",
    log:
        "logs/sweep/{member}/train.log",
    conda:
        "../envs/pipeline.yaml"
    threads: TRAIN.threads
    resources:
        **TRAIN.resources,
        mlflow_db=1,
    params:
        package=PACKAGE,
        probe=lambda wildcards, input: container_probe(TRAIN_CONTAINER),
        # The member id holds a hash of its parameters: how and where the ranks start is provenance (see train.smk).
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
                "--run-file",
                input.run,
                "--params",
                json.dumps(SWEEP_MEMBERS[wildcards.member], sort_keys=True),
                "--checkpoint-dir",
                f"results/checkpoints/sweep/{wildcards.member}",
                "--checkpoint-every",
                str(config["train"]["checkpoint_every"]),
            ],
        ),
    message:
        "Training sweep member {wildcards.member}"
    shell:
        "({params.probe}; {params.command}) > {log:q} 2>&1 || (python -m {params.package:q}.tracking fail "
        "--run-file {input.run:q} --step train_member --new-run >> {log:q} 2>&1; exit 1)"


rule evaluate_member:
    input:
        model=f"{SWEEP_DIR}/{{member}}/model/model.pt",
        test=f"{PROCESSED_DIR}/test.npz",
        run=f"{SWEEP_DIR}/{{member}}/run.json",
    output:
        metrics=f"{SWEEP_DIR}/{{member}}/metrics.json",
        predictions=f"{SWEEP_DIR}/{{member}}/predictions.csv",
        table=f"{SWEEP_DIR}/{{member}}/metrics.html",
        confusion=f"{SWEEP_DIR}/{{member}}/confusion_matrix.png",
    log:
        "logs/sweep/{member}/evaluate.log",
    conda:
        "../envs/pipeline.yaml"
    threads: step("evaluate_model").threads
    resources:
        **step("evaluate_model").resources,
        mlflow_db=1,
    params:
        package=PACKAGE,
    message:
        "Evaluating sweep member {wildcards.member} on the held-out split"
    shell:
        "(python -m {params.package:q}.evaluate --model {input.model:q} --test {input.test:q} "
        "--metrics {output.metrics:q} --table {output.table:q} "
        "--confusion-plot {output.confusion:q} --predictions {output.predictions:q} "
        "--run-file {input.run:q}) > {log:q} 2>&1 || (python -m {params.package:q}.tracking fail "
        "--run-file {input.run:q} --step evaluate_member >> {log:q} 2>&1; exit 1)"


rule aggregate_sweep:
    input:
        metrics=expand(f"{SWEEP_DIR}/{{member}}/metrics.json", member=SWEEP_MEMBERS),
        params=expand(f"{SWEEP_DIR}/{{member}}/params.json", member=SWEEP_MEMBERS),
        history=expand(
            f"{SWEEP_DIR}/{{member}}/model/history.json", member=SWEEP_MEMBERS
        ),
        parent=SWEEP_RUN_FILE,
    output:
        csv=report(
            f"{SWEEP_DIR}/aggregate.csv",
            caption="../report/sweep_table.rst",
            category="Sweep",
        ),
        html=report(
            f"{SWEEP_DIR}/aggregate.html",
            caption="../report/sweep_table.rst",
            category="Sweep",
        ),
        plot=report(
            f"{SWEEP_DIR}/plots/metric_vs_params.png",
            caption="../report/sweep_plot.rst",
            category="Sweep",
        ),
        best=f"{SWEEP_DIR}/best.json",
    log:
        "logs/sweep/aggregate.log",
    conda:
        "../envs/pipeline.yaml"
    resources:
        **step("evaluate_model").resources,
        mlflow_db=1,
    params:
        package=PACKAGE,
        members=[f"{SWEEP_DIR}/{member}" for member in SWEEP_MEMBERS],
        metric=SWEEP["metric"],
        direction=SWEEP["direction"],
        seed_key=SWEEP["seed_key"],
        sweep=json.dumps(SWEEP, sort_keys=True),
    message:
        f"Aggregating {len(SWEEP_MEMBERS)} sweep members by {SWEEP['metric']} ({SWEEP['direction']})"
    shell:
        "python -m {params.package:q}.sweep --members {params.members:q} --metric {params.metric:q} "
        "--direction {params.direction:q} --seed-key {params.seed_key:q} --csv {output.csv:q} "
        "--html {output.html:q} --plot {output.plot:q} --best {output.best:q} "
        "--parent-run-file {input.parent:q} --sweep-config {params.sweep:q} > {log:q} 2>&1"


rule register_best_member:
    input:
        best=f"{SWEEP_DIR}/best.json",
        parent=SWEEP_RUN_FILE,
    output:
        SWEEP_REGISTERED_FILE,
    log:
        "logs/sweep/register_best_member.log",
    conda:
        "../envs/pipeline.yaml"
    resources:
        **step("register_model").resources,
        mlflow_db=1,
    params:
        name=config["tracking"]["registered_model"],
        package=PACKAGE,
    message:
        "Registering the best sweep member's model as a new version of {params.name}"
    shell:
        "python -m {params.package:q}.tracking register --best {input.best:q} --name {params.name:q} "
        "--out {output:q} > {log:q} 2>&1"
