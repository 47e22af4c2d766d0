"""A sweep's members (rules_lib/lib/smkml/sweep.py): what config `sweep:` expands to, the ids, what is refused."""

from __future__ import annotations

import json
import re

import pytest
from smkml import schemas
from smkml.sweep import (
    MEMBER_ID,
    SweepError,
    configured,
    data_id,
    data_sets,
    members,
    search,
    split,
    swept_keys,
    training_args,
    trial_members,
    trial_number,
)

from conftest import project_config

HYPER = schemas.node("config", "properties", "train", "properties", "hyperparameters")
SPACE = {"learning_rate": {"low": 0.0001, "high": 0.1, "log": True}, "hidden_sizes": {"choices": [[32], [64, 32]]}}


def expand(**sweep) -> dict[str, dict]:
    return members(project_config(sweep=sweep), HYPER)


def test_no_sweep_is_the_single_run():
    config = project_config()
    assert not configured(config["sweep"]) and config["sweep"]["metric"] == "accuracy"  # the schema's defaults
    assert members(config, HYPER) == {}
    assert expand() == {}


def test_grid_times_seeds():
    found = expand(grid={"learning_rate": [0.001, 0.01], "hidden_sizes": [[64], [128, 64]]}, seeds=2)
    assert len(found) == 8
    base = project_config()["train"]["hyperparameters"]
    assert {p["seed"] for p in found.values()} == {base["seed"], base["seed"] + 1}
    assert {(p["learning_rate"], tuple(p["hidden_sizes"])) for p in found.values()} == {
        (0.001, (64,)), (0.001, (128, 64)), (0.01, (64,)), (0.01, (128, 64))}
    for member, params in found.items():
        assert re.fullmatch(MEMBER_ID, member) and len(member) <= 48 + 9
        assert set(params) == set(base) and params["epochs"] == base["epochs"]
    first = next(iter(found))
    assert first.startswith("learning_rate=0.001_hidden_sizes=64_seed=42_"), first
    assert swept_keys(found) == ["learning_rate", "hidden_sizes", "seed"]


def test_ids_are_stable_and_follow_the_parameters():
    sweep = {"grid": {"dropout": [0.0, 0.2]}, "list": [{"batch_size": 32}], "seeds": 1}
    assert list(expand(**sweep)) == list(expand(**sweep))
    ids = list(expand(**sweep))
    assert ids[0].startswith("dropout=0_seed=42_") and ids[2].startswith("batch_size=32_seed=42_")
    other = project_config(sweep=sweep)
    other["train"]["hyperparameters"]["epochs"] += 1  # a parameter not in the id still changes its hash
    assert set(members(other, HYPER)).isdisjoint(ids)


def test_random_samples_are_reproducible_and_in_range():
    space = {"learning_rate": {"low": 0.0001, "high": 0.1, "log": True}, "batch_size": {"choices": [16, 32, 64]},
             "epochs": {"low": 1, "high": 3}}
    found = expand(random={"count": 5, "seed": 7, "space": space})
    assert list(found) == list(expand(random={"count": 5, "seed": 7, "space": space}))
    assert list(found) != list(expand(random={"count": 5, "seed": 8, "space": space}))
    for params in found.values():
        assert 0.0001 <= params["learning_rate"] <= 0.1
        assert params["batch_size"] in (16, 32, 64)
        assert isinstance(params["epochs"], int) and 1 <= params["epochs"] <= 3


def test_seeds_alone_replicate_the_configured_parameters():
    found = expand(seeds=3)
    assert [p["seed"] for p in found.values()] == [42, 43, 44]


def test_prepare_parameters_are_swept_with_their_own_data():
    """prepare.seed / prepare.test_fraction: each distinct set is one prepared data set; training gets only the
    hyper-parameters; every member carries the swept prepare keys, a hyper-parameter sweep none (same ids as before)."""
    found = expand(grid={"prepare.test_fraction": [0.2, 0.3], "learning_rate": [0.001, 0.01]})
    assert len(found) == 4
    base = project_config()["train"]["hyperparameters"]
    for member, params in found.items():
        assert re.fullmatch(MEMBER_ID, member) and "prepare.test_fraction=" in member
        training, prepare = split(params)
        assert set(training) == set(base) and set(prepare) == {"test_fraction"}
        args = training_args(member, params, "data/x/train.npz", f"results/sweep/{member}", 0)
        assert json.loads(args[args.index("--params") + 1]) == training
    datasets = data_sets(found)
    assert list(datasets.values()) == [{"test_fraction": 0.2}, {"test_fraction": 0.3}]
    assert all(re.fullmatch(MEMBER_ID, d) and d.startswith("test_fraction=") for d in datasets)
    assert data_id({}) is None and data_id({"seed": 1, "test_fraction": 0.2}) == data_id({"test_fraction": 0.2, "seed": 1})
    # A list that changes prepare for one member only: every member gets the key, at its configured value.
    listed = expand(list=[{"prepare.seed": 7}, {"dropout": 0.1}])
    assert [p["prepare.seed"] for p in listed.values()] == [7, project_config()["prepare"]["seed"]]
    assert swept_keys(listed) == ["dropout", "prepare.seed"]
    # Seeds may replicate the data split instead of the training seed.
    splits = expand(seeds=2, seed_key="prepare.seed")
    first_seed = project_config()["prepare"]["seed"]
    assert [split(p)[1] for p in splits.values()] == [{"seed": first_seed + k} for k in range(2)]
    assert len(data_sets(splits)) == 2
    # No prepare key swept: exactly the hyper-parameters, as before.
    assert all(set(p) == set(base) for p in expand(grid={"dropout": [0.0, 0.2]}).values())


@pytest.mark.parametrize(
    ("sweep", "named"),
    [
        ({"grid": {"learning_rat": [0.1]}}, "sweep.grid.learning_rat"),
        ({"grid": {"epochs": []}}, "sweep.grid.epochs"),
        ({"list": [{"momentum": 0.9}]}, "sweep.list[0].momentum"),
        ({"list": [{}]}, "sweep.list[0]"),
        ({"seeds": -1}, "sweep.seeds"),
        ({"seeds": 2, "seed_key": "rng"}, "sweep.seed_key"),
        ({"seeds": 2, "grid": {"seed": [1, 2]}}, "sweep.seeds"),
        ({"random": {"count": 0, "space": {"dropout": {"low": 0, "high": 0.5}}}}, "sweep.random.count"),
        ({"random": {"count": 2, "space": {"dropout": {"low": 0.5, "high": 0.1}}}}, "sweep.random.space.dropout"),
        ({"random": {"count": 2, "space": {"dropout": {"sampler": "tpe"}}}}, "sweep.random.space.dropout"),
        ({"grid": {"dropout": [1.5]}}, "train.hyperparameters.dropout"),
        ({"grid": {"prepare.notebook": ["other.ipynb"]}}, "sweep.grid.prepare.notebook"),
        ({"grid": {"prepare.test_fraction": [0.2, 1.5]}}, "prepare.test_fraction"),
        ({"list": [{"prepare.seed": -1}]}, "prepare.seed"),
        ({"search": {"trials": 4, "batch": 2, "space": {"prepare.test_fraction": {"low": 0.5, "high": 1.5}}}},
         "prepare.test_fraction"),
        ({"grid": {"dropout": [0.1]}, "list": [{"dropout": 0.1}]}, "given twice"),
        # adaptive search (sweep.search)
        ({"search": {"trials": 2, "batch": 3, "space": SPACE}}, "sweep.search.trials"),
        ({"search": {"sampler": "cmaes", "trials": 4, "batch": 2, "space": SPACE}}, "sweep.search.sampler"),
        ({"search": {"trials": 4, "batch": 2, "space": SPACE, "metric": "loss"}}, "sweep.search.metric"),
        ({"search": {"trials": 4, "batch": 0, "space": SPACE}}, "sweep.search.batch"),
        ({"search": {"trials": 4, "batch": 2, "space": {"momentum": {"low": 0.1, "high": 0.9}}}},
         "sweep.search.space.momentum"),
        ({"search": {"trials": 4, "batch": 2, "space": {}}}, "sweep.search.space"),
        ({"search": {"trials": 4, "batch": 2, "space": {"dropout": {"low": 0.0, "high": 1.5}}}},
         "train.hyperparameters.dropout"),
        ({"search": {"trials": 4, "batch": 2, "space": {"dropout": {"choices": []}}}}, "sweep.search.space.dropout"),
        ({"search": {"trials": 4, "batch": 2, "space": SPACE}, "seeds": 2}, "sweep.seeds"),
    ],
)
def test_bad_sweeps_are_refused_naming_the_key(sweep, named):
    config = project_config()
    config["sweep"] = sweep  # unvalidated: the module's own checks (the schema catches some first)
    with pytest.raises(SweepError, match=re.escape(named)):
        members(config, HYPER)


def test_search_is_checked_with_its_defaults_and_its_study_named():
    config = project_config(sweep={"search": {"trials": 7, "batch": 3, "space": SPACE}})
    found = search(config, HYPER)
    assert configured(config["sweep"]) and members(config, HYPER) == {}  # members come round by round
    assert found["sampler"] == "tpe" and found["startup"] == 3 and found["rounds"] == 3 and found["seed"] == 0
    assert (found["metric"], found["direction"]) == ("accuracy", "maximize")  # sweep.metric, sweep.direction
    more = search(project_config(sweep={"search": {"trials": 12, "batch": 3, "space": SPACE}}), HYPER)
    assert more["study"] == found["study"] and more["rounds"] == 4  # raising `trials` continues the study
    other = search(project_config(sweep={"search": {"trials": 7, "batch": 3, "space": SPACE, "seed": 1}}), HYPER)
    assert other["study"] != found["study"]
    assert search(project_config(), HYPER) is None


def test_trial_members_ids_and_parameters():
    config = project_config(sweep={"search": {"trials": 2, "batch": 2, "space": SPACE}})
    round_file = {"trials": [{"number": 0, "params": {"learning_rate": 0.0123456789, "hidden_sizes": [64, 32]}},
                             {"number": 1, "params": {"learning_rate": 0.0123456789, "hidden_sizes": [64, 32]}}]}
    found = trial_members(round_file, config, HYPER)
    first, second = found
    assert first.startswith("trial=0_learning_rate=0.0123457_") and second.startswith("trial=1_")
    assert re.fullmatch(MEMBER_ID, first) and [trial_number(m) for m in found] == [0, 1]
    assert found[first] == {**config["train"]["hyperparameters"], **round_file["trials"][0]["params"]}
    assert trial_number("learning_rate=0.01_seed=43_e953ca2d") is None


def test_members_are_packed_as_the_cluster_says():
    """lumi packs 50 members per job; fewer when their runtimes would pass the partition's limit; never members
    that need whole nodes (several nodes, all GPUs of a node); this machine does not pack."""
    from smkml.resources import Step
    from smkml.sweep import pack_size, packs

    found = expand(seeds=7)
    assert list(packs(found, 3)) == ["pack0000", "pack0001", "pack0002"]
    assert [len(m) for m in packs(found, 3).values()] == [3, 3, 1]
    assert [m for ms in packs(found, 3).values() for m in ms] == list(found)  # the members' order, each once
    assert packs(found, 1) == {}

    def plan(train, profile="lumi"):
        config = project_config(profile, resources={**project_config()["resources"], "train_model": train})
        return Step.plan(config, "train_model", train.get("gpus", 1) * train.get("nodes", 1), "project_465000001")

    one_gpu = plan({"gpus": 1, "nodes": 1, "runtime": 60})
    assert not one_gpu.whole_node
    assert pack_size(50, 60, 4320, one_gpu.whole_node) == 50
    assert one_gpu.packed(50)["runtime"](None, 1) == 3000 and one_gpu.packed(50)["runtime"](None, 2) == 4320
    assert pack_size(50, 120, 4320, False) == 36  # 36 x 120 min fit in small-g's 4 320 min
    assert plan({"gpus": 8, "nodes": 1, "runtime": 60}).whole_node
    assert plan({"gpus": 2, "nodes": 2, "runtime": 60}).whole_node
    assert pack_size(50, 60, 4320, True) == 1
    assert project_config()["cluster"]["pack"]["members_per_job"] == 1  # this machine: the per-member rules
