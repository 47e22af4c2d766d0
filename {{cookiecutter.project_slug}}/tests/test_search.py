import json

import pytest

from {{ cookiecutter.package_name }} import search

SPACE = {"learning_rate": {"low": 0.0001, "high": 0.1, "log": True}, "epochs": {"low": 1, "high": 5},
         "hidden_sizes": {"choices": [[32], [64, 32]]}}
SEARCH = {"study": "tpe-test", "sampler": "tpe", "batch": 3, "startup": 3, "seed": 0, "space": SPACE,
          "metric": "accuracy", "direction": "maximize"}


def ask(folder, round_, told=None, rounds=()):
    """One round as the workflow runs it; told: {trial number: accuracy} of the finished trials."""
    told_arg = []
    for number, value in (told or {}).items():
        path = folder / f"metrics-{number}.json"
        path.write_text(json.dumps({"accuracy": value}))
        told_arg += [str(number), f"trial={number}_x", str(path)]
    out = folder / f"round-{round_}.json"
    search.main(["ask", "--journal", str(folder / "study.journal"), "--search", json.dumps(SEARCH),
                 "--rounds", *map(str, rounds), "--told", *told_arg, "--round", str(round_),
                 "--size", "3", "--out", str(out)])
    return out, json.loads(out.read_text())["trials"]


def test_rounds_are_seeded_told_and_resumed(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    round0, trials0 = ask(first, 0)
    assert [t["number"] for t in trials0] == [0, 1, 2]
    for trial in trials0:
        assert 0.0001 <= trial["params"]["learning_rate"] <= 0.1 and trial["params"]["epochs"] in range(1, 6)
        assert trial["params"]["hidden_sizes"] in ([32], [64, 32])  # a list choice comes back as the list
    assert ask(second, 0)[1] == trials0  # the same config, the same trials
    assert ask(first, 0)[1] == trials0  # asked again (a crash before the workflow saw the file): reused
    told = {0: 0.5, 1: 0.9, 2: 0.7}
    _, trials1 = ask(first, 1, told, [round0])
    assert [t["number"] for t in trials1] == [3, 4, 5]
    assert [t["params"] for t in trials1] != [t["params"] for t in trials0]  # each round has its own seed
    study = search.open_study(first / "study.journal", "tpe-test", "maximize")
    assert [t.value for t in study.get_trials()][:3] == [0.5, 0.9, 0.7] and len(study.trials) == 6


def test_a_lost_journal_is_rebuilt_from_the_rounds(tmp_path):
    round0, trials0 = ask(tmp_path, 0)
    (tmp_path / "study.journal").unlink()
    _, trials1 = ask(tmp_path, 1, {0: 0.5, 1: 0.9, 2: 0.7}, [round0])
    assert [t["number"] for t in trials1] == [3, 4, 5]
    study = search.open_study(tmp_path / "study.journal", "tpe-test", "maximize")
    assert [search.decode(SPACE, t.params) for t in study.trials[:3]] == [t["params"] for t in trials0]


def test_summary_and_a_missing_metric(tmp_path):
    round0, _ = ask(tmp_path, 0)
    told = []
    for number, value in {0: 0.5, 1: 0.9, 2: 0.7}.items():
        (tmp_path / f"m{number}.json").write_text(json.dumps({"accuracy": value}))
        told += [str(number), f"member-{number}", str(tmp_path / f"m{number}.json")]
    out = tmp_path / "study.json"
    search.main(["summary", "--journal", str(tmp_path / "study.journal"), "--search", json.dumps(SEARCH),
                 "--rounds", str(round0), "--told", *told, "--out", str(out)])
    summary = json.loads(out.read_text())
    assert summary["complete"] == 3 and summary["best"]["member"] == "member-1" and summary["best"]["value"] == 0.9
    with pytest.raises(SystemExit, match="sweep.metric 'loss'"):
        search.metric_value(tmp_path / "m0.json", "loss")
