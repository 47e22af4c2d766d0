"""Adaptive search (config `sweep.search`, docs/sweeps.md): an Optuna study asked and told in rounds.

    python -m {{ cookiecutter.package_name }}.search ask --journal results/sweep/search/<study>/study.journal \\
        --search '{...}' --round R --size K --rounds round-0.json ... \
        --told 0 <member> results/sweep/<member>/metrics.json ... --out round-R.json
    python -m {{ cookiecutter.package_name }}.search summary --journal ... --told ... --out study.json

The workflow (the checkpoint `search_round` in workflow/rules/sweep.smk) runs `ask` once per round: it tells the
study the metric of every finished trial (from its member's metrics.json), then asks for the round's trials and
writes their parameters; the workflow trains and evaluates each as a sweep member. The study lives in an Optuna
journal file (append-only, no database server, safe on a shared filesystem), so a search interrupted anywhere
resumes: trials already asked are reused, never asked again, and a round is the same whether it runs once or after
a crash. The sampler is seeded per round (the config's seed and the round), so the same config gives the same trials.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

SCALAR = (str, int, float, bool, type(None))


def distributions(space: dict) -> dict:
    """Optuna distributions of a space (config sweep.search.space, checked by the workflow): {choices: [...]}
    categorical (a list or mapping choice is kept as its JSON text), {low, high, log} integer when both ends are
    integers, else float."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    found = {}
    for key, spec in space.items():
        if "choices" in spec:
            found[key] = CategoricalDistribution([_encode(choice) for choice in spec["choices"]])
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int):
            found[key] = IntDistribution(spec["low"], spec["high"], log=bool(spec.get("log", False)))
        else:
            found[key] = FloatDistribution(float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)))
    return found


def _encode(choice):
    return choice if isinstance(choice, SCALAR) else json.dumps(choice)


def decode(space: dict, params: dict) -> dict:
    """A trial's parameters as hyper-parameters (a JSON-text choice back to its list or mapping)."""
    decoded = {}
    for key, value in params.items():
        choices = space[key].get("choices")
        decoded[key] = choices[[_encode(c) for c in choices].index(value)] if choices else value
    return decoded


def encode(space: dict, params: dict) -> dict:
    return {key: _encode(value) if "choices" in space[key] else value for key, value in params.items()}


def round_seed(seed: int, round_: int) -> int:
    """The sampler's seed in one round: a fresh process per round, so each round needs its own (the same config,
    the same seeds)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{round_}".encode()).digest()[:4], "big")


def sampler(name: str, seed: int, startup: int):
    import optuna

    if name == "tpe":
        # constant_liar: the round's trials asked before it are pending; without it a round proposes near-copies.
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SystemExit(f"config sweep.search.sampler: {name!r} is not a sampler (allowed: ['tpe', 'random'])")


def open_study(journal: str | Path, name: str, direction: str, sampler_=None):
    """The study in `journal` (created on first use), an Optuna JournalStorage file."""
    import warnings

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    Path(journal).parent.mkdir(parents=True, exist_ok=True)
    # The open lock (O_CREAT|O_EXCL) works on NFS and Lustre; only one round writes at a time anyway.
    storage = JournalStorage(JournalFileBackend(str(journal), lock_obj=JournalFileOpenLock(str(journal))))
    return optuna.create_study(study_name=name, storage=storage, direction=direction, sampler=sampler_,
                               load_if_exists=True)


def metric_value(path: str | Path, metric: str) -> float:
    metrics = json.loads(Path(path).read_text())
    value = metrics.get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        known = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        raise SystemExit(f"config sweep.metric {metric!r} is not a finite number in {path} (it has {known})")
    return float(value)


def restore(study, space: dict, rounds: list[dict], told: dict[int, float]) -> None:
    """The study's trials against the earlier rounds' files: a missing journal (deleted, or the folder copied
    without it) is rebuilt from them; a journal that disagrees with them is refused."""
    import optuna

    trials = {trial.number: trial for trial in study.get_trials(deepcopy=False)}
    asked = sorted((t for r in rounds for t in r["trials"]), key=lambda t: t["number"])
    if not trials:
        dists = distributions(space)
        for trial in asked:
            study.add_trial(optuna.trial.create_trial(
                params=encode(space, trial["params"]), distributions=dists, value=told[trial["number"]]))
        return
    for trial in asked:
        found = trials.get(trial["number"])
        if found is None or decode(space, found.params) != trial["params"]:
            raise SystemExit(
                f"the study journal {study.study_name} does not hold trial {trial['number']} as its round file "
                "has it: remove the search's folder (results/sweep/search/<study>/) to start the search again"
            )


def tell(study, told: dict[int, float]) -> None:
    """The metric of every finished trial the study still waits for."""
    from optuna.trial import TrialState

    trials = {trial.number: trial for trial in study.get_trials(deepcopy=False)}
    for number, value in sorted(told.items()):
        trial = trials.get(number)
        if trial is None:
            raise SystemExit(f"trial {number} is not in the study {study.study_name}")
        if trial.state == TrialState.RUNNING:
            study.tell(number, value)


def ask(study, space: dict, round_: int, batch: int, size: int) -> list[dict]:
    """The round's trials: those already in the study (asked before an interruption) kept, the rest asked."""
    dists = distributions(space)
    trials = {trial.number: trial for trial in study.get_trials(deepcopy=False)}
    first = round_ * batch
    chosen = []
    for number in range(first, first + size):
        if number in trials:
            params = trials[number].params
        else:
            trial = study.ask(dists)
            if trial.number != number:
                raise SystemExit(f"the study {study.study_name} gave trial {trial.number} where {number} was due: "
                                 "remove the search's folder (results/sweep/search/<study>/) to start again")
            params = trial.params
        chosen.append({"number": number, "params": decode(space, params)})
    return chosen


def summary(study, space: dict, metric: str, members: dict[int, str]) -> dict:
    """Every trial (number, member, parameters, state, value) and the best."""
    trials = [
        {"number": t.number, "member": members.get(t.number, ""), "params": decode(space, t.params),
         "state": t.state.name, "value": t.value}
        for t in study.get_trials(deepcopy=False)
    ]
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    best = study.best_trial if complete else None
    return {
        "study": study.study_name, "metric": metric, "direction": study.direction.name.lower(),
        "trials": trials, "complete": len(complete),
        "best": {"number": best.number, "member": members.get(best.number, ""), "value": best.value,
                 "params": decode(space, best.params)} if best else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__package__}.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("ask", "summary"))
    parser.add_argument("--journal", required=True, help="the study's Optuna journal file")
    parser.add_argument("--search", required=True, help="JSON: config sweep.search as the workflow checked it")
    parser.add_argument("--rounds", nargs="*", default=[], help="the earlier rounds' files")
    parser.add_argument("--told", nargs="*", default=[], metavar="NUMBER MEMBER METRICS",
                        help="every finished trial: its number, its member id and its metrics.json")
    parser.add_argument("--round", type=int, default=0, help="ask: the round")
    parser.add_argument("--size", type=int, default=0, help="ask: its number of trials")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    search = json.loads(args.search)
    if len(args.told) % 3:
        parser.error("--told takes triples: trial number, member id, metrics.json")
    finished = {int(args.told[i]): args.told[i + 1:i + 3] for i in range(0, len(args.told), 3)}
    told = {number: metric_value(path, search["metric"]) for number, (_, path) in finished.items()}
    rounds = [json.loads(Path(path).read_text()) for path in args.rounds]
    seed = round_seed(search["seed"], args.round)
    study = open_study(args.journal, search["study"], search["direction"],
                       sampler(search["sampler"], seed, search["startup"]))
    restore(study, search["space"], rounds, told)
    tell(study, told)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.command == "ask":
        trials = ask(study, search["space"], args.round, search["batch"], args.size)
        out.write_text(json.dumps({"study": search["study"], "round": args.round, "sampler": search["sampler"],
                                   "seed": seed, "trials": trials}, indent=2) + "\n")
        print(f"study {search['study']} round {args.round}: trials {[t['number'] for t in trials]}")
        return
    result = summary(study, search["space"], search["metric"], {n: member for n, (member, _) in finished.items()})
    out.write_text(json.dumps(result, indent=2) + "\n")
    best = result["best"]
    print(f"study {search['study']}: {result['complete']} trials told; best trial "
          f"{best['number'] if best else '-'} {search['metric']} {best['value'] if best else '-'}")


if __name__ == "__main__":
    main()
