# The notebook is a git-tracked file of the project. Where the steps share this machine's files it is an input (a
# changed notebook reruns the step). In pods (Kubernetes) an input marked local() would keep the step on this
# machine, and any other input is read from the bucket: there the notebook comes with the sources Snakemake deploys
# to every pod, and its sha256, a parameter, reruns the step when it changes.
NOTEBOOK = project_file(config["prepare"]["notebook"])
# Seconds the notebook's kernel may take to start, in both prepare steps (prepare_data; prepare_sweep_data in
# sweep.smk): papermill's default, 60, is too short on a busy login node or CI machine (the first start in a new home
# also builds matplotlib's font cache).
KERNEL_START_TIMEOUT = 300


rule prepare_data:
    input:
        **({} if PODS else {"notebook": local(NOTEBOOK)}),
        # In pods the run file, for the failure handler, comes from the bucket (start_tracking runs on this machine
        # before any pod starts); elsewhere the step does not wait for it.
        **({"run": RUN_FILE} if PODS else {}),
        raw=RAW_DATA,
    output:
        train=f"{PROCESSED_DIR}/train.npz",
        test=f"{PROCESSED_DIR}/test.npz",
        notebook=report(
            "results/notebooks/prepare.ipynb",
            caption="../report/notebook.rst",
            category="Data",
        ),
        notebook_html=report(
            "results/notebooks/prepare.html",
            caption="../report/notebook_html.rst",
            category="Data",
        ),
        samples=report(
            "results/plots/samples.png",
            caption="../report/samples.rst",
            category="Data",
        ),
        record=RECORDS["prepare_data"],
    log:
        "logs/prepare_data.log",
    conda:
        "../envs/pipeline.yaml"
    threads: step("prepare_data").threads
    resources:
        **step("prepare_data").resources,
    params:
        **({"notebook_sha256": sha256_of(NOTEBOOK)} if PODS else {}),
        # The raw data is checked against its .dvc file before the notebook reads it (a file changed in place), and
        # its md5 goes in the step's record as the data used. Git-tracked, so also in a pod's deployed sources.
        dvcfile=project_file(f"{RAW_DATA}.dvc"),
        processed_dir=lambda wildcards, output: Path(output.train).parent,
        test_fraction=config["prepare"]["test_fraction"],
        seed=config["prepare"]["seed"],
        package=PACKAGE,
        # Not an input (but in pods): the MLflow run is created beside this step (start_tracking); a failure before
        # it exists is noted and marked when Snakemake stops (onerror, tracking.smk).
        run=lambda wildcards, input: input.get("run", RUN_FILE),
        failure_note=FAILURE_NOTE,
        # Where the executed notebook, with the error, is kept when the step fails (Snakemake deletes the outputs
        # of a failed job). Not a `log:` entry: a failed job's logs are printed whole, and a notebook is JSON.
        failed_notebook="logs/prepare_data.ipynb",
        kernel_start_timeout=KERNEL_START_TIMEOUT,
        # The notebook papermill runs: the input, or in pods the deployed source (a function of the input: not
        # recorded as a parameter, so where the steps run is no reason to rerun).
        notebook=lambda wildcards, input: input.get("notebook", NOTEBOOK),
    message:
        "Executing {params.notebook} with papermill"
    shell:
        "python -m {params.package:q}.integrity {params.dvcfile:q} --file {input.raw:q} --record {output.record:q} "
        "> {log:q} 2>&1; "
        "rm -f {params.failed_notebook:q} {params.failure_note:q}; "
        "(papermill --no-progress-bar --kernel python3 --start-timeout {params.kernel_start_timeout} "
        "{params.notebook:q} {output.notebook:q} "
        "-r raw_path {input.raw:q} -r processed_dir {params.processed_dir:q} "
        "-r samples_plot {output.samples:q} -r record_file {output.record:q} "
        "-p test_fraction {params.test_fraction:q} -p seed {params.seed:q} && "
        "python -m {params.package:q}.notebook_html {output.notebook:q} {output.notebook_html:q}) >> {log:q} 2>&1 "
        "|| (if [ -f {output.notebook:q} ]; then mv -f {output.notebook:q} {params.failed_notebook:q}; fi; "
        "python -m {params.package:q}.tracking fail --run-file {params.run:q} --step prepare_data --new-run "
        "--notebook {params.failed_notebook:q} --failure-note {params.failure_note:q} >> {log:q} 2>&1; exit 1)"
