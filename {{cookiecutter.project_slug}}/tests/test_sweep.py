import csv
import json

import pytest

from {{ cookiecutter.package_name }} import sweep


def member(folder, name, params, accuracy):
    path = folder / name
    (path / "model").mkdir(parents=True)
    (path / "params.json").write_text(json.dumps(params))
    (path / "metrics.json").write_text(json.dumps({"accuracy": accuracy, "n_test": 10, "per_class": {}}))
    (path / "model" / "history.json").write_text(json.dumps({"seconds": 1.5}))
    (path / "run.json").write_text(json.dumps({"run_id": f"run-{name}"}))
    return str(path)


@pytest.fixture
def members(tmp_path):
    base = {"epochs": 1, "learning_rate": 0.1, "seed": 1}
    return [
        member(tmp_path, "a", {**base, "learning_rate": 0.1, "seed": 1}, 0.5),
        member(tmp_path, "b", {**base, "learning_rate": 0.1, "seed": 2}, 0.7),
        member(tmp_path, "c", {**base, "learning_rate": 0.01, "seed": 1}, 0.9),
        member(tmp_path, "d", {**base, "learning_rate": 0.01, "seed": 2}, 0.8),
    ]


def test_best_sets_and_swept_keys(members):
    rows = sweep.load(members)
    assert sweep.swept(rows, "seed") == ["learning_rate", "seed"]
    assert sweep.best(rows, "accuracy", "maximize")["member"] == "c"
    assert sweep.best(rows, "accuracy", "minimize")["member"] == "a"
    sets = sweep.by_set(rows, "accuracy", "seed")
    assert [s["members"] for s in sets] == [["a", "b"], ["c", "d"]]
    assert sets[0]["mean"] == pytest.approx(0.6) and sets[0]["std"] == pytest.approx(0.141421, abs=1e-6)


def test_unknown_metric_is_named(members):
    with pytest.raises(SystemExit, match="sweep.metric 'loss'"):
        sweep.best(sweep.load(members), "loss", "maximize")


def test_aggregate_files(members, tmp_path):
    out = tmp_path / "out"
    sweep.main(["--members", *members, "--metric", "accuracy", "--direction", "maximize", "--csv", str(out / "a.csv"),
                "--html", str(out / "a.html"), "--plot", str(out / "p.png"), "--best", str(out / "best.json")])
    rows = list(csv.DictReader((out / "a.csv").open()))
    assert [r["member"] for r in rows] == ["a", "b", "c", "d"] and rows[2]["run_id"] == "run-c"
    best = json.loads((out / "best.json").read_text())
    assert best["member"] == "c" and best["run_file"].endswith("c/run.json")
    assert "0.6000 ± 0.1414" in (out / "a.html").read_text()
    assert (out / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_packs_list_the_members(members, tmp_path):
    """With packing the aggregate reads its members from the packs' records (results/sweep/packs/<pack>.json)."""
    packs = tmp_path / "packs"
    packs.mkdir()
    (packs / "pack0000.json").write_text(json.dumps({"pack": "pack0000", "members": ["a", "b", "c"]}))
    (packs / "pack0001.json").write_text(json.dumps({"pack": "pack0001", "members": ["d"]}))
    assert sweep.packed_members([str(packs / "pack0000.json"), str(packs / "pack0001.json")]) == members
    out = tmp_path / "out"
    sweep.main(["--packs", str(packs / "pack0000.json"), str(packs / "pack0001.json"), "--metric", "accuracy",
                "--direction", "maximize", "--csv", str(out / "a.csv"), "--html", str(out / "a.html"),
                "--plot", str(out / "p.png"), "--best", str(out / "best.json")])
    assert [r["member"] for r in csv.DictReader((out / "a.csv").open())] == ["a", "b", "c", "d"]
