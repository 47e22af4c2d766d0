"""A sweep in a generated project: bad sweep configs refused by a dry run, a real 2 x 2-seed sweep on the demo
data (aggregate table, best member, nested MLflow runs, the report's Sweep category, a rerun with nothing to do), and
an adaptive search of 2 rounds of 3 trials interrupted between its rounds and resumed."""

from __future__ import annotations

import csv
import hashlib
import json
import statistics

import pytest
import yaml

from conftest import generate, project_helper, run
from test_pipeline_e2e import embedded_files

pytestmark = pytest.mark.e2e

# Small and quick: one rank, one epoch, no checkpoints; 2 learning rates x 2 seeds = 4 members.
SMALL_TRAIN = {
    "processes": 1,
    "checkpoint_every": 0,
    "hyperparameters": {"epochs": 1, "batch_size": 64, "learning_rate": 0.001, "hidden_sizes": [32],
                        "dropout": 0.0, "seed": 42},
}
SWEEP = {"grid": {"learning_rate": [0.001, 0.01]}, "seeds": 2, "metric": "accuracy", "direction": "maximize"}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("sweep"), training_backend="torch_ddp")


def with_sweep(project, sweep, name="sweep.yaml", train=SMALL_TRAIN) -> list[str]:
    """--configfile arguments: the project's config, then a file with the small training and `sweep`."""
    config = yaml.safe_load((project / "config/config.yaml").read_text())
    config["train"] = {**config["train"], **train}
    config["sweep"] = sweep
    path = project / name
    path.write_text(yaml.safe_dump(config))
    return ["--configfile", str(path)]


@pytest.mark.parametrize(
    ("sweep", "named"),
    [
        ({"grid": {"learning_rat": [0.1, 0.2]}}, "sweep.grid.learning_rat"),
        ({"grid": {"epochs": []}}, "epochs"),
        ({"seeds": -2}, "seeds"),
        ({"list": [{"momentum": 0.9}]}, "sweep.list[0].momentum"),
        ({"seeds": 2, "seed_key": "rng"}, "sweep.seed_key"),
        ({"random": {"count": 2, "space": {"dropout": {"sampler": "tpe"}}}}, "sweep.random.space.dropout"),
        ({"random": {"count": 0, "space": {"dropout": {"low": 0, "high": 0.5}}}}, "count"),
        ({"grid": {"dropout": [0.5, 1.0]}}, "train.hyperparameters.dropout"),
        ({"search": {"sampler": "cmaes", "trials": 4, "batch": 2, "space": {"dropout": {"low": 0, "high": 0.5}}}},
         "sampler"),
        ({"search": {"trials": 2, "batch": 3, "space": {"dropout": {"low": 0, "high": 0.5}}}}, "sweep.search.trials"),
        ({"grid": {"prepare.test_fraction": [0.2, 1.5]}}, "prepare.test_fraction"),
    ],
    ids=["unknown-key", "empty-list", "negative-seeds", "list-unknown-key", "seed-key-missing", "bad-space",
         "no-samples", "out-of-range", "unknown-sampler", "trials-below-batch", "prepare-out-of-range"],
)
@pytest.mark.reliability(tried="A bad `sweep:` config", sees="an error naming the key", left="nothing: no results")
def test_bad_sweep_refused_before_anything_runs(project, sweep, named):
    result = run(["snakemake", "-n", *with_sweep(project, sweep, "bad.yaml")], project, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert named in output, output[-3000:]
    assert not (project / "results").exists()


def test_no_sweep_plans_the_single_run(project):
    dry = run(["snakemake", "-n", *with_sweep(project, {}, "none.yaml")], project).stdout
    assert "train_model" in dry and "train_member" not in dry and "aggregate_sweep" not in dry


@pytest.fixture(scope="module")
def swept(project):
    """The real sweep, its report, and a second run."""
    args = ["snakemake", "--profile", "profiles/local", *with_sweep(project, SWEEP)]
    first = run(args, project, timeout=1500)
    run([*args, "--report", "results/report.html"], project)
    again = run(args, project)
    return project, first, again


def test_every_member_trained_and_was_evaluated(swept):
    project, first, _ = swept
    output = first.stdout + first.stderr
    for rule in ("train_member", "evaluate_member"):
        assert output.count(f"(Rule: {rule})") == 4
    assert "(Rule: train_model)" not in output  # a sweep trains its members, not the single run
    members = sorted(p.parent.name for p in (project / "results/sweep").glob("*/params.json"))
    assert len(members) == 4
    for member in members:
        params = json.loads((project / "results/sweep" / member / "params.json").read_text())
        assert member.startswith(f"learning_rate={params['learning_rate']:g}_seed={params['seed']}_")
        history = json.loads((project / "results/sweep" / member / "model/history.json").read_text())
        assert history["params"] == params


def test_aggregate_table_and_best_member(swept):
    project, _, _ = swept
    with (project / "results/sweep/aggregate.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    assert {(r["learning_rate"], r["seed"]) for r in rows} == {(lr, s) for lr in ("0.001", "0.01") for s in ("42", "43")}
    for row in rows:
        metrics = json.loads((project / "results/sweep" / row["member"] / "metrics.json").read_text())
        assert float(row["accuracy"]) == pytest.approx(metrics["accuracy"])
    best = json.loads((project / "results/sweep/best.json").read_text())
    top = max(rows, key=lambda r: float(r["accuracy"]))
    assert best["member"] == top["member"] and best["value"] == pytest.approx(float(top["accuracy"]))
    assert best["swept"] == ["learning_rate", "seed"]
    # mean and spread across the 2 seeds of each learning rate
    for entry in best["sets"]:
        values = [float(r["accuracy"]) for r in rows if float(r["learning_rate"]) == entry["params"]["learning_rate"]]
        assert entry["n"] == 2
        assert entry["mean"] == pytest.approx(statistics.fmean(values))
        assert entry["std"] == pytest.approx(statistics.stdev(values))
    page = (project / "results/sweep/aggregate.html").read_text()
    assert best["member"] in page and "mean ± std" in page
    assert (project / "results/sweep/plots/metric_vs_params.png").read_bytes()[:4] == b"\x89PNG"


def test_mlflow_parent_with_a_child_per_member_and_the_best_registered(swept):
    import mlflow

    project, _, _ = swept
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project}/mlflow.db")
    parent = json.loads((project / "results/mlflow/run.json").read_text())
    runs = client.search_runs([parent["experiment_id"]])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent["run_id"]]
    assert len(runs) == 5 and len(children) == 4
    members = {p.parent.name: json.loads(p.read_text()) for p in (project / "results/sweep").glob("*/run.json")}
    assert {c.info.run_id for c in children} == {info["run_id"] for info in members.values()}
    for child in children:
        assert child.info.status == "FINISHED"
        member = child.data.tags["sweep.member"]
        params = json.loads((project / "results/sweep" / member / "params.json").read_text())
        assert child.data.params["train.hyperparameters.learning_rate"] == str(params["learning_rate"])
        metrics = json.loads((project / "results/sweep" / member / "metrics.json").read_text())
        assert child.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])
    best = json.loads((project / "results/sweep/best.json").read_text())
    top = client.get_run(parent["run_id"])
    assert top.data.tags["sweep.best_member"] == best["member"]
    assert top.data.tags["sweep.best_run_id"] == best["run_id"]
    assert top.data.metrics["best_accuracy"] == pytest.approx(best["value"])
    # The members trained on the pipeline's prepared data: its record reached the sweep's run.
    assert top.data.params["data.n_train"] == "1437"
    assert top.data.tags["dvc.md5.data/raw/digits.csv"] == hashlib.md5(
        (project / "data/raw/digits.csv").read_bytes()).hexdigest()
    registered = json.loads((project / "results/sweep/mlflow/registered_model.json").read_text())
    assert registered["run_id"] == best["run_id"]
    version = client.get_model_version(registered["name"], str(registered["version"]))
    assert version.tags["sweep.parent_run_id"] == parent["run_id"]


def test_report_has_a_sweep_category(swept):
    project, _, _ = swept
    report = (project / "results/report.html").read_text()
    assert "Sweep" in report
    files = embedded_files(report)
    assert {"aggregate.csv", "aggregate.html", "metric_vs_params.png"} <= set(files), sorted(files)


def test_rerun_has_nothing_to_do(swept):
    _, _, again = swept
    assert "Nothing to be done" in again.stdout + again.stderr


def test_failed_members_are_marked_and_the_others_kept(swept):
    """Two more members that cannot train (a batch larger than the data), with --keep-going: their child runs are
    FAILED, the finished members are not trained again and the pipeline's run is kept."""
    import mlflow

    project, _, _ = swept
    parent = json.loads((project / "results/mlflow/run.json").read_text())
    before = {p: p.stat().st_mtime_ns for p in (project / "results/sweep").glob("*/model/model.pt")}
    failing = {**SWEEP, "list": [{"batch_size": 100000}]}
    result = run(["snakemake", "--profile", "profiles/local", "--keep-going", *with_sweep(project, failing, "fail.yaml")],
                 project, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert output.count("Training sweep member ") == 2, output[-3000:]  # only the two new members
    assert "(Rule: start_tracking)" not in output and "(Rule: prepare_data)" not in output
    assert {p: p.stat().st_mtime_ns for p in before} == before
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project}/mlflow.db")
    children = [r for r in client.search_runs([parent["experiment_id"]])
                if r.data.tags.get("mlflow.parentRunId") == parent["run_id"]]
    failed = [r for r in children if r.info.status == "FAILED"]
    assert len(children) == 6 and len(failed) == 2
    assert all(r.data.tags["sweep.member"].startswith("batch_size=100000_seed=") for r in failed)
    # The failing step is named, and a failed member's training gets a new run when it is trained again.
    assert all(r.data.tags["pipeline.failed_step"] == "train_member" for r in failed)
    assert not any((project / "results/sweep" / r.data.tags["sweep.member"] / "run.json").exists() for r in failed)


# The prepare notebook's parameters swept: two test fractions, so two prepared data sets, one member each.
DATA_SWEEP = {"grid": {"prepare.test_fraction": [0.2, 0.3]}, "metric": "accuracy", "direction": "maximize"}


@pytest.fixture(scope="module")
def data_swept(project):
    args = ["snakemake", "--profile", "profiles/local", *with_sweep(project, DATA_SWEEP, "data.yaml")]
    first = run(args, project, timeout=1500)
    again = run(args, project)
    return project, first, again


def test_prepare_parameters_swept_each_member_on_its_own_data(data_swept):
    import mlflow
    import numpy as np

    project, first, again = data_swept
    output = first.stdout + first.stderr
    assert output.count("(Rule: prepare_sweep_data)") == 2, output[-3000:]
    with (project / "results/sweep/aggregate.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["prepare.test_fraction"] for r in rows) == ["0.2", "0.3"]
    sweep = project_helper(project, "sweep")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project}/mlflow.db")
    sizes = set()
    for row in rows:
        params = json.loads((project / "results/sweep" / row["member"] / "params.json").read_text())
        training, prepare = sweep.split(params)
        folder = project / "data/processed/sweep" / sweep.data_id(prepare)
        with np.load(folder / "test.npz") as test, np.load(folder / "train.npz") as train:
            n_test, n_train = len(test["labels"]), len(train["labels"])
        # evaluated on its own test split, trained on its own training split with the hyper-parameters only
        assert int(row["n_test"]) == n_test
        history = json.loads((project / "results/sweep" / row["member"] / "model/history.json").read_text())
        assert history["params"] == training
        assert f"{n_train} samples" in (project / "logs/sweep" / row["member"] / "train.log").read_text()
        assert (project / "results/sweep/data" / sweep.data_id(prepare) / "prepare.html").is_file()
        child = client.get_run(json.loads((project / "results/sweep" / row["member"] / "run.json").read_text())["run_id"])
        assert child.data.params["prepare.test_fraction"] == row["prepare.test_fraction"]
        sizes.add(n_test)
    assert len(sizes) == 2
    assert "Nothing to be done" in again.stdout + again.stderr


# 2 rounds of 3 trials: round 0 sampled at random (startup = batch), round 1 by TPE from round 0's results; the
# study also samples the prepare notebook's test fraction (each trial on its own prepared data).
SEARCH = {"search": {"sampler": "tpe", "trials": 6, "batch": 3, "seed": 0,
                     "space": {"learning_rate": {"low": 0.0001, "high": 0.05, "log": True},
                               "dropout": {"low": 0.0, "high": 0.3},
                               "prepare.test_fraction": {"low": 0.2, "high": 0.3}}},
          "metric": "accuracy", "direction": "maximize"}


@pytest.fixture(scope="module")
def searched(project):
    """The search interrupted between its rounds (the first run's target: round 1's trials, asked from the study
    once round 0 is told), round 1's file lost as if the run had crashed right after asking, then the whole run."""
    args = with_sweep(project, SEARCH, "search.yaml")
    config = yaml.safe_load((project / "search.yaml").read_text())
    study = project / "results/sweep/search" / project_helper(project, "sweep").search(config)["study"]
    first = run(["snakemake", str(study.relative_to(project) / "round-1.json"), "--profile", "profiles/local", *args],
                project, timeout=1500)
    asked = json.loads((study / "round-1.json").read_text())
    round0 = json.loads((study / "round-0.json").read_text())
    trained = {p: p.stat().st_mtime_ns for p in (project / "results/sweep").glob("trial=*/model/model.pt")}
    (study / "round-1.json").unlink()
    second = run(["snakemake", "--profile", "profiles/local", *args], project, timeout=1500)
    again = run(["snakemake", "-n", *args], project)
    return project, study, first, second, again, round0, asked, trained


def test_search_rounds_resumed_without_training_again(searched):
    project, study, first, second, again, round0, asked, trained = searched
    out1, out2 = first.stdout + first.stderr, second.stdout + second.stderr
    assert out1.count("Training sweep member trial=") == 3 and len(trained) == 3
    # every trial prepared its own data set (its sampled test fraction), round by round
    assert out1.count("(Rule: prepare_sweep_data)") == 3 and out2.count("(Rule: prepare_sweep_data)") == 3
    import numpy as np

    sweep = project_helper(project, "sweep")
    for member in trained:
        params = json.loads((member.parents[1] / "params.json").read_text())
        assert 0.2 <= params["prepare.test_fraction"] <= 0.3
        data = project / "data/processed/sweep" / sweep.data_id(sweep.split(params)[1])
        with np.load(data / "test.npz") as test:
            assert json.loads((member.parents[1] / "metrics.json").read_text())["n_test"] == len(test["labels"])
    assert {t["number"] for t in round0["trials"]} == {0, 1, 2} and {t["number"] for t in asked["trials"]} == {3, 4, 5}
    assert [t["params"] for t in asked["trials"]] != [t["params"] for t in round0["trials"]]
    # the resumed run trains round 1 only, with the trials the study gave before the interruption
    trained_now = sorted(line.split("Training sweep member ")[1].split()[0] for line in out2.splitlines()
                         if "Training sweep member " in line)
    assert [m.split("_")[0] for m in trained_now] == ["trial=3", "trial=4", "trial=5"], out2[-3000:]
    assert {p: p.stat().st_mtime_ns for p in trained} == trained
    assert json.loads((study / "round-1.json").read_text())["trials"] == asked["trials"]
    assert "Nothing to be done" in again.stdout + again.stderr


def test_search_study_told_every_trial(searched):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    project, study, *_ = searched
    summary = json.loads((study / "study.json").read_text())
    assert [t["number"] for t in summary["trials"]] == list(range(6)) and summary["complete"] == 6
    for trial in summary["trials"]:
        member = project / "results/sweep" / trial["member"]
        assert trial["value"] == pytest.approx(json.loads((member / "metrics.json").read_text())["accuracy"])
        assert {k: json.loads((member / "params.json").read_text())[k] for k in trial["params"]} == trial["params"]
    journal = optuna.load_study(study_name=study.name,
                                storage=JournalStorage(JournalFileBackend(str(study / "study.journal"))))
    assert [t.state.name for t in journal.trials] == ["COMPLETE"] * 6
    best = json.loads((project / "results/sweep/best.json").read_text())
    assert best["member"] == summary["best"]["member"] and best["members"] == 6
    with (project / "results/sweep/aggregate.csv").open() as handle:
        assert sorted(row["member"] for row in csv.DictReader(handle)) == sorted(t["member"] for t in summary["trials"])
