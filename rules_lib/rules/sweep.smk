# Sweeps (config `sweep:`, docs/sweeps.md): every member trains and is evaluated as a wildcard instance of the rules
# below, then one aggregate step compares them. Without a sweep SWEEP_MEMBERS is empty and nothing here is a target.
# Members and their ids come from workflow/lib/smkml/sweep.py; a bad sweep config stops the run here, while parsing.

from smkml import sweep as sweeps
from snakemake.exceptions import WorkflowError

HYPERPARAMETERS_SCHEMA = schemas.node(
    "config", "properties", "train", "properties", "hyperparameters"
)
try:
    SWEEP_MEMBERS = sweeps.members(config, HYPERPARAMETERS_SCHEMA)
    # An adaptive search (sweep.search): its members come round by round from the checkpoint search_round.
    SEARCH = sweeps.search(config, HYPERPARAMETERS_SCHEMA)
except sweeps.SweepError as error:
    raise WorkflowError(str(error)) from None

SWEEP = config["sweep"]
SWEEP_ON = bool(SWEEP_MEMBERS or SEARCH)
SWEEP_DIR = "results/sweep"
# Members that change the prepare notebook's parameters (prepare.seed, prepare.test_fraction) train on their own
# prepared data: one data set per distinct set of those parameters ({data id: parameters}; empty otherwise).
SWEEP_DATA = sweeps.data_sets(SWEEP_MEMBERS)
SWEEP_DATA_DIR = f"{PROCESSED_DIR}/sweep"
# One folder per study (sweep.search's sampler and a hash of what shapes its trials, but not `trials`: raising it
# continues the study): its rounds' files and its journal.
SEARCH_DIR = f"{SWEEP_DIR}/search/{SEARCH['study'] if SEARCH else 'none'}"
# What a round's trials depend on; not `trials`, so raising it adds rounds without redoing the earlier ones.
SEARCH_SHAPE = json.dumps(
    {
        key: value
        for key, value in (SEARCH or {}).items()
        if key not in ("trials", "rounds")
    },
    sort_keys=True,
)
# The sweep's parent run is the pipeline's run (start_tracking; the prepare step logs the data there too): one
# child run per member is nested under it.
SWEEP_RUN_FILE = RUN_FILE
SWEEP_TARGETS = [
    f"{SWEEP_DIR}/aggregate.csv",
    f"{SWEEP_DIR}/aggregate.html",
    f"{SWEEP_DIR}/plots/metric_vs_params.png",
    f"{SWEEP_DIR}/best.json",
    SWEEP_REGISTERED_FILE,
] + ([f"{SEARCH_DIR}/study.json"] if SEARCH else [])
SWEEP_TARGETS += expand(f"{SWEEP_DIR}/data/{{data}}/prepare.html", data=SWEEP_DATA)


# Which members a sweep has, and their parameters (a search's from its rounds' files): functions, kept out of this
# file of rules (snakemake --lint).
include: "sweep_members.smk"


# Packing (docs/sweeps.md "Packing"): the cluster description's `pack.members_per_job` (profiles/<name>/cluster.yaml)
# says how many members one job trains, one after another; 1 (this machine, the default) keeps the per-member rules
# below. Members that need whole nodes are never packed. SWEEP_PACKS: {pack id: member ids}, empty without packing.
SWEEP_PACK_SIZE = sweeps.pack_size(
    CLUSTER["pack"]["members_per_job"],
    int(TRAIN.needs["runtime"]),
    (
        CLUSTER["partitions"][TRAIN.partition].get("max_runtime")
        if TRAIN.partition
        else None
    ),
    TRAIN.whole_node,
)
SWEEP_PACKS = sweeps.packs(SWEEP_MEMBERS, SWEEP_PACK_SIZE)
# What a finished member has (a pack skips it): train_member's and evaluate_member's outputs.
MEMBER_OUTPUTS = [
    "model/model.pt",
    "model/history.json",
    "metrics.json",
    "predictions.csv",
    "metrics.html",
    "confusion_matrix.png",
]


# How every member's ranks start: the single run's launch (a dict: `container` opens a directive at a line's start).
MEMBER_LAUNCH = {
    "launcher": CLUSTER["launcher"],
    "backend": config["train"]["backend"],
    "processes": TRAIN.ranks,
    "package": PACKAGE,
    "layout": TRAIN.layout,
    "mpi": CLUSTER["mpi"],
    "cache_dir": CLUSTER["cache_dir"],
    "container": TRAIN_CONTAINER,
}


# One member's script inside a pack (workflow/lib/smkml/sweep.py member_script): the per-member rules' commands.
packed_member = lambda member, input: sweeps.member_script(
    member,
    f"{SWEEP_DIR}/{member}",
    SWEEP_MEMBERS[member],
    PACKAGE,
    input.parent,
    member_data(member, "test.npz"),
    training_command(
        **MEMBER_LAUNCH,
        args=sweeps.training_args(
            member,
            SWEEP_MEMBERS[member],
            member_data(member, "train.npz"),
            f"{SWEEP_DIR}/{member}",
            config["train"]["checkpoint_every"],
        ),
    ),
    container_probe(TRAIN_CONTAINER),
)


wildcard_constraints:
    member=sweeps.MEMBER_ID,
    data=sweeps.MEMBER_ID,
    round=r"\d+",
    pack=r"pack[0-9]+",


localrules:
    sweep_params,
    search_round,
    search_study,
    start_member,
    register_best_member,


rule sweep_params:
    input:
        member_round_file,
    output:
        f"{SWEEP_DIR}/{{member}}/params.json",
    log:
        "logs/sweep/{member}/params.log",
    conda:
        "../envs/pipeline.yaml"
    params:
        values=lambda wildcards: json.dumps(
            member_params(wildcards.member), sort_keys=True
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


# The prepared data of members that change the prepare notebook's parameters: the notebook run as prepare_data runs
# it, with those parameters, into a folder of its own. It logs nothing to MLflow (the members' runs carry the
# parameters); the executed notebook and its HTML are kept, the HTML in the report.


rule prepare_sweep_data:
    input:
        **({} if PODS else {"notebook": local(NOTEBOOK)}),
        raw=RAW_DATA,
    output:
        train=f"{SWEEP_DATA_DIR}/{{data}}/train.npz",
        test=f"{SWEEP_DATA_DIR}/{{data}}/test.npz",
        notebook=f"{SWEEP_DIR}/data/{{data}}/prepare.ipynb",
        notebook_html=report(
            f"{SWEEP_DIR}/data/{{data}}/prepare.html",
            caption="../report/notebook_html.rst",
            category="Sweep",
        ),
        samples=f"{SWEEP_DIR}/data/{{data}}/samples.png",
    log:
        "logs/sweep/data/{data}/prepare.log",
    conda:
        "../envs/pipeline.yaml"
    threads: step("prepare_data").threads
    resources:
        **step("prepare_data").resources,
    params:
        **({"notebook_sha256": sha256_of(NOTEBOOK)} if PODS else {}),
        dvcfile=project_file(f"{RAW_DATA}.dvc"),
        processed_dir=lambda wildcards, output: Path(output.train).parent,
        test_fraction=lambda wildcards: data_params(wildcards.data).get(
            "test_fraction", config["prepare"]["test_fraction"]
        ),
        seed=lambda wildcards: data_params(wildcards.data).get(
            "seed", config["prepare"]["seed"]
        ),
        package=PACKAGE,
        failed_notebook=lambda wildcards: f"logs/sweep/data/{wildcards.data}/prepare.ipynb",
        kernel_start_timeout=KERNEL_START_TIMEOUT,
        notebook=lambda wildcards, input: input.get("notebook", NOTEBOOK),
    message:
        "Executing {params.notebook} with papermill for the sweep's data set {wildcards.data}"
    shell:
        "python -m {params.package:q}.integrity {params.dvcfile:q} --file {input.raw:q} > {log:q} 2>&1; "
        "rm -f {params.failed_notebook:q}; "
        "(papermill --no-progress-bar --kernel python3 --start-timeout {params.kernel_start_timeout} "
        "{params.notebook:q} {output.notebook:q} "
        "-r raw_path {input.raw:q} -r processed_dir {params.processed_dir:q} -r samples_plot {output.samples:q} "
        "-p test_fraction {params.test_fraction:q} -p seed {params.seed:q} && "
        "python -m {params.package:q}.notebook_html {output.notebook:q} {output.notebook_html:q}) >> {log:q} 2>&1 "
        "|| (if [ -f {output.notebook:q} ]; then mv -f {output.notebook:q} {params.failed_notebook:q}; fi; exit 1)"


rule train_member:
    input:
        train=lambda wildcards: member_data(wildcards.member, "train.npz"),
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
        command=lambda wildcards, input: training_command(
            **MEMBER_LAUNCH,
            args=sweeps.training_args(
                wildcards.member,
                member_params(wildcards.member),
                input.train,
                f"{SWEEP_DIR}/{wildcards.member}",
                config["train"]["checkpoint_every"],
            ),
        ),
    message:
        "Training sweep member {wildcards.member}"
    shell:
        "({params.probe}; {params.command}) > {log:q} 2>&1 || (python -m {params.package:q}.tracking fail "
        "--run-file {input.run:q} --step train_member --new-run >> {log:q} 2>&1; exit 1)"


rule evaluate_member:
    input:
        model=f"{SWEEP_DIR}/{{member}}/model/model.pt",
        test=lambda wildcards: member_data(wildcards.member, "test.npz"),
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


# A pack: one job trains and evaluates its members one after another, skipping those that finished before; a
# member that fails does not stop the others, but fails the pack's job (its marker is not kept), so a rerun runs
# the pack again and trains only its members that did not finish. Without packing nothing asks for a pack.


rule train_pack:
    input:
        train=lambda wildcards: sorted(
            {member_data(m, "train.npz") for m in SWEEP_PACKS[wildcards.pack]}
        ),
        test=lambda wildcards: sorted(
            {member_data(m, "test.npz") for m in SWEEP_PACKS[wildcards.pack]}
        ),
        parent=SWEEP_RUN_FILE,
    output:
        f"{sweeps.PACK_DIR}/{{pack}}.json",
    log:
        "logs/sweep/packs/{pack}.log",
    threads: TRAIN.threads
    resources:
        **TRAIN.packed(SWEEP_PACK_SIZE),
        mlflow_db=1,
    params:
        members=lambda wildcards: SWEEP_PACKS[wildcards.pack],
    message:
        "Training and evaluating the sweep members of {wildcards.pack}, one after another"
    run:
        sweeps.run_pack(
            output[0],
            log[0],
            wildcards.pack,
            params.members,
            SWEEP_DIR,
            MEMBER_OUTPUTS,
            lambda member: shell(packed_member(member, input), threads=threads),
        )


rule aggregate_sweep:
    input:
        done=(
            expand(f"{sweeps.PACK_DIR}/{{pack}}.json", pack=SWEEP_PACKS)
            if SWEEP_PACKS
            else member_files("metrics.json")
        ),
        params=[] if SWEEP_PACKS else member_files("params.json"),
        history=[] if SWEEP_PACKS else member_files("model/history.json"),
        parent=SWEEP_RUN_FILE,
        records=pipeline_data_record,
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
        # The members' folders, or with packing the packs' markers that list them (a short command line).
        members=lambda wildcards, input: (
            ["--packs", *(f"{sweeps.PACK_DIR}/{pack}.json" for pack in SWEEP_PACKS)]
            if SWEEP_PACKS
            else ["--members", *(str(Path(path).parent) for path in input.params)]
        ),
        metric=SWEEP["metric"],
        direction=SWEEP["direction"],
        seed_key=SWEEP["seed_key"],
        sweep=json.dumps(SWEEP, sort_keys=True),
    message:
        f"Aggregating the sweep members by {SWEEP['metric']} ({SWEEP['direction']})"
    shell:
        "python -m {params.package:q}.sweep {params.members:q} --metric {params.metric:q} "
        "--direction {params.direction:q} --seed-key {params.seed_key:q} --csv {output.csv:q} "
        "--html {output.html:q} --plot {output.plot:q} --best {output.best:q} "
        "--parent-run-file {input.parent:q} --records {input.records:q} --sweep-config {params.sweep:q} "
        "> {log:q} 2>&1 || (python -m "
        "{params.package:q}.tracking fail --run-file {input.parent:q} --step aggregate_sweep >> {log:q} 2>&1; exit 1)"


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
        "--out {output:q} > {log:q} 2>&1 || (python -m {params.package:q}.tracking fail --run-file {input.parent:q} "
        "--step register_best_member >> {log:q} 2>&1; exit 1)"


# Adaptive search (sweep.search): round R asks the study for its trials once every earlier trial has been evaluated
# and told; Snakemake re-reads the round's file to train and evaluate them as members. The study is the journal
# file next to the rounds, so a rerun after an interruption goes on where it stopped (trials asked are never asked
# again).


checkpoint search_round:
    input:
        rounds=lambda wildcards: [
            checkpoints.search_round.get(round=str(earlier)).output[0]
            for earlier in range(int(wildcards.round))
        ],
        metrics=lambda wildcards: expand(
            f"{SWEEP_DIR}/{{member}}/metrics.json",
            member=search_members_before(int(wildcards.round)),
        ),
    output:
        f"{SEARCH_DIR}/round-{{round}}.json",
    log:
        f"logs/sweep/search/{Path(SEARCH_DIR).name}/round-{{round}}.log",
    conda:
        "../envs/pipeline.yaml"
    params:
        package=PACKAGE,
        journal=f"{SEARCH_DIR}/study.journal",
        search=SEARCH_SHAPE,
        size=lambda wildcards: sweeps.round_size(SEARCH, int(wildcards.round)),
        told=lambda wildcards: told(search_members_before(int(wildcards.round))),
    message:
        "Asking the study {params.journal} for round {wildcards.round} of the search ({params.size} trials)"
    shell:
        "python -m {params.package:q}.search ask --journal {params.journal:q} --search {params.search:q} "
        "--rounds {input.rounds:q} --told {params.told:q} --round {wildcards.round:q} --size {params.size:q} "
        "--out {output:q} > {log:q} 2>&1"


rule search_study:
    input:
        rounds=lambda wildcards: [
            checkpoints.search_round.get(round=str(earlier)).output[0]
            for earlier in range(SEARCH["rounds"])
        ],
        metrics=member_files("metrics.json"),
    output:
        f"{SEARCH_DIR}/study.json",
    log:
        f"logs/sweep/search/{Path(SEARCH_DIR).name}/study.log",
    conda:
        "../envs/pipeline.yaml"
    params:
        package=PACKAGE,
        journal=f"{SEARCH_DIR}/study.journal",
        search=json.dumps(SEARCH, sort_keys=True),
        told=lambda wildcards: told(sweep_members()),
    message:
        "Telling the study {params.journal} the last round and writing its trials"
    shell:
        "python -m {params.package:q}.search summary --journal {params.journal:q} --search {params.search:q} "
        "--rounds {input.rounds:q} --told {params.told:q} --out {output:q} > {log:q} 2>&1"
