# Bookkeeping steps (seconds each) run where Snakemake runs, not as cluster jobs: on LUMI a job per tiny step
# would wait in the queue and floods Slurm with small jobs (CSC asks users not to).
localrules:
    start_tracking,
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


rule record_provenance:
    input:
        metrics="results/metrics.json",
        model="results/model/model.pt",
        run=RUN_FILE,
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
        mlflow_db=1,
    params:
        config=RUN_CONFIG,
        package=PACKAGE,
    message:
        "Recording provenance (git, data, lockfile, container, Slurm jobs) on the run and in the report"
    shell:
        "python -m {params.package:q}.provenance --config {params.config:q} --run-file {input.run:q} "
        "--out-json {output.json:q} --out-html {output.html:q} > {log:q} 2>&1 || (python -m {params.package:q}.tracking "
        "fail --run-file {input.run:q} --step record_provenance >> {log:q} 2>&1; exit 1)"


rule register_model:
    input:
        metrics="results/metrics.json",
        provenance="results/provenance.json",
        run=RUN_FILE,
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
        "--metrics {input.metrics:q} --provenance {input.provenance:q} --out {output:q} > {log:q} 2>&1 || (python -m "
        "{params.package:q}.tracking fail --run-file {input.run:q} --step register_model >> {log:q} 2>&1; exit 1)"
