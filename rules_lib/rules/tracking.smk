# Bookkeeping steps (seconds each) run where Snakemake runs, not as cluster jobs: on LUMI a job per tiny step
# would wait in the queue and floods Slurm with small jobs (CSC asks users not to).
localrules:
    start_tracking,
    log_training,
    record_provenance,
    register_model,


# A run file or registration naming what the MLflow store does not have (the store deleted or replaced, the run or
# version deleted in the UI) is removed, with one warning line, before the jobs are planned: this run then starts a
# new MLflow run (or registers again) instead of failing on a run that is gone. Only where Snakemake was started.
if workflow.is_main_process:
    from smkml import mlflow_store
    from snakemake.logging import logger

    for warning in mlflow_store.retire_stale(
        RUN_FILE,
        [REGISTERED_FILE, SWEEP_REGISTERED_FILE],
        TRACKING_URI,
        redaction.redact_uri,
    ):
        logger.warning(f"warning: {warning}")


onstart:
    # Before the first job of a real run (not -n), once, where Snakemake was started (jobs run with --no-hooks):
    # the executor must be the one the cluster description maps for, and a Kubernetes pod image must be given.
    vocabulary.check_executor(CLUSTER, workflow.executor_plugin.name)
    vocabulary.check_pod_image(
        CLUSTER, workflow.remote_execution_settings.container_image
    )


onerror:
    # prepare_data runs beside start_tracking: when it failed before the run was created, it noted the failure,
    # and the run, created since (Snakemake waits for running jobs before this), is marked FAILED now.
    if Path(FAILURE_NOTE).is_file():
        shell(
            "python -m {PACKAGE:q}.tracking settle --run-file {RUN_FILE:q} --note {FAILURE_NOTE:q} || true"
        )


rule start_tracking:
    output:
        RUN_FILE,
    log:
        "logs/start_tracking.log",
    conda:
        "../envs/pipeline.yaml"
    resources:
        **step("start_tracking").resources,
        mlflow_db=1,
    params:
        experiment=config["tracking"]["experiment"],
        config=RUN_CONFIG,
        package=PACKAGE,
    message:
        "Creating the pipeline's MLflow run in experiment {params.experiment}"
    shell:
        "python -m {params.package:q}.tracking start --out {output:q} "
        "--experiment {params.experiment:q} --params {params.config:q} > {log:q} 2>&1"


# The compute steps record what they log (pipeline_run.record) and do not wait for MLflow; these steps send the
# records to the run: the data's and the training's (with the model) while evaluation runs, the evaluation's with the
# provenance when the model is registered. The files a record names are inputs here, so that they are on this
# machine wherever the steps ran (pods: the bucket).
rule log_training:
    input:
        run=RUN_FILE,
        records=[RECORDS["prepare_data"], RECORDS["train_model"]],
        samples="results/plots/samples.png",
        model="results/model/model.pt",
    output:
        "results/mlflow/logged/training.json",
    log:
        "logs/log_training.log",
    conda:
        "../envs/pipeline.yaml"
    resources:
        **step("log_training").resources,
        mlflow_db=1,
    params:
        package=PACKAGE,
    message:
        "Sending the data preparation's and the training's records and the model to the MLflow run"
    shell:
        "python -m {params.package:q}.tracking publish --run-file {input.run:q} --out {output:q} {input.records:q} "
        "> {log:q} 2>&1 || (python -m {params.package:q}.tracking fail --run-file {input.run:q} --step log_training "
        ">> {log:q} 2>&1; exit 1)"


rule record_provenance:
    input:
        metrics="results/metrics.json",
        model="results/model/model.pt",
        run=RUN_FILE,
        records=list(RECORDS.values()),
    output:
        json="results/provenance.json",
        html=report(
            "results/provenance.html",
            caption="../report/provenance.rst",
            category="Provenance",
        ),
    log:
        "logs/record_provenance.log",
    conda:
        "../envs/pipeline.yaml"
    resources:
        **step("record_provenance").resources,
    params:
        config=RUN_CONFIG,
        package=PACKAGE,
    message:
        "Recording provenance (git, data, lockfile, container, Slurm jobs) for the run and the report"
    shell:
        "python -m {params.package:q}.provenance --config {params.config:q} --run-file {input.run:q} "
        "--records {input.records:q} --out-json {output.json:q} --out-html {output.html:q} > {log:q} 2>&1 "
        "|| (python -m {params.package:q}.tracking fail --run-file {input.run:q} --step record_provenance "
        ">> {log:q} 2>&1; exit 1)"


rule register_model:
    input:
        metrics="results/metrics.json",
        provenance="results/provenance.json",
        run=RUN_FILE,
        logged="results/mlflow/logged/training.json",
        record=RECORDS["evaluate_model"],
        # What the evaluation's record sends as artifacts (evaluate.smk's outputs).
        evaluation=[
            "results/metrics.html",
            "results/plots/confusion_matrix.png",
            "results/predictions.csv",
            "results/plots/training_curves.png",
        ],
    output:
        REGISTERED_FILE,
    log:
        "logs/register_model.log",
    conda:
        "../envs/pipeline.yaml"
    resources:
        **step("register_model").resources,
        mlflow_db=1,
    params:
        name=config["tracking"]["registered_model"],
        package=PACKAGE,
    message:
        "Registering the trained model as a new version of {params.name} in the MLflow model registry"
    shell:
        "python -m {params.package:q}.tracking register --run-file {input.run:q} --name {params.name:q} "
        "--metrics {input.metrics:q} --provenance {input.provenance:q} --records {input.record:q} "
        "--out {output:q} > {log:q} 2>&1 || (python -m "
        "{params.package:q}.tracking fail --run-file {input.run:q} --step register_model >> {log:q} 2>&1; exit 1)"
