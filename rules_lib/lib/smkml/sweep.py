"""A sweep's members from config `sweep:` (workflow/rules/sweep.smk): grid, list, random samples, seed replicas.

Each member is one full set of training hyper-parameters (config `train.hyperparameters` with the member's values
over it), plus the prepare notebook's parameters it changes (`prepare.seed`, `prepare.test_fraction`: the member then
trains and is evaluated on its own prepared data, one data set per distinct set of them), and has a short, stable,
readable id: a few `key=value` parts of what it changes, then a hash of all its
parameters, e.g. `learning_rate=0.01_seed=43_1f2e3d4c`. The same config always gives the same ids in the same
order. Every problem is found before anything runs and named by its config key (SweepError).

    members(config) -> {member id: full hyper-parameters}     (empty: no sweep, the single run)
    search(config) -> sweep.search checked, with its defaults   (None: no adaptive search)
    trial_members(round file, config) -> {member id: full hyper-parameters} of one round of the search
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import re
from collections.abc import Mapping

from . import schemas

# The member ids' characters (the wildcard's constraint in sweep.smk).
MEMBER_ID = r"[A-Za-z0-9.=_-]+"
READABLE_LENGTH = 48  # characters of key=value parts before the hash
HASH_LENGTH = 8


class SweepError(ValueError):
    """A sweep configuration refused before anything runs; the message names the config key."""


# The prepare notebook's parameters a sweep can vary, as `prepare.<key>` (every key of config `prepare:` but the
# notebook itself). A member that changes one trains on its own prepared data (data_id, split).
PREPARE_PREFIX = "prepare."


def prepare_schemas() -> dict[str, Mapping]:
    """{"prepare.<key>": that key's schema} of the sweepable prepare parameters."""
    properties = schemas.node("config", "properties", "prepare", "properties")
    return {PREPARE_PREFIX + key: spec for key, spec in properties.items() if key != "notebook"}


def sweepable(config: Mapping) -> dict:
    """Every key a sweep can set, with its configured value: train.hyperparameters, then `prepare.<key>`."""
    prepare = config.get("prepare") or {}
    found = dict(config["train"]["hyperparameters"])
    for key in prepare_schemas():
        if key.removeprefix(PREPARE_PREFIX) in prepare:
            found[key] = prepare[key.removeprefix(PREPARE_PREFIX)]
    return found


def split(params: Mapping) -> tuple[dict, dict]:
    """(training hyper-parameters, prepare notebook parameters without the prefix) of a member's parameters."""
    training = {key: value for key, value in params.items() if not key.startswith(PREPARE_PREFIX)}
    prepare = {key.removeprefix(PREPARE_PREFIX): value for key, value in params.items() if key.startswith(PREPARE_PREFIX)}
    return training, prepare


def data_id(prepare: Mapping) -> str | None:
    """The id of the prepared data a member with these prepare parameters uses (None: the pipeline's own data)."""
    return member_id(dict(sorted(prepare.items())), dict(prepare)) if prepare else None


def data_sets(members_: Mapping[str, Mapping]) -> dict[str, dict]:
    """{data id: prepare notebook parameters} of the members that change them, in the members' order."""
    found: dict[str, dict] = {}
    for params in members_.values():
        prepare = split(params)[1]
        if prepare:
            found.setdefault(data_id(prepare), prepare)
    return found


def configured(sweep: Mapping | None) -> bool:
    """Whether `sweep:` asks for more than today's single run."""
    sweep = sweep or {}
    return bool(
        sweep.get("grid") or sweep.get("list") or sweep.get("random") or sweep.get("seeds") or sweep.get("search")
    )


def _check_keys(where: str, values: Mapping, allowed: Mapping) -> None:
    if not values:
        raise SweepError(f"config {where} is empty: give at least one parameter")
    for key in values:
        if key not in allowed:
            training = sorted(k for k in allowed if not k.startswith(PREPARE_PREFIX))
            prepare = sorted(k for k in allowed if k.startswith(PREPARE_PREFIX))
            also = f"; the prepare notebook's: {prepare}" if prepare else ""
            raise SweepError(
                f"config {where}.{key}: {key!r} is not a training hyper-parameter (train.hyperparameters has "
                f"{training}{also})"
            )


def grid_sets(grid: Mapping, base: Mapping) -> list[dict]:
    """The cartesian product of sweep.grid (parameter -> list of values), in the config's key order."""
    if not grid:
        return []
    _check_keys("sweep.grid", grid, base)
    for key, values in grid.items():
        if not isinstance(values, list):
            raise SweepError(f"config sweep.grid.{key}: give a list of values, not {values!r}")
        if not values:
            raise SweepError(f"config sweep.grid.{key}: the list of values is empty, so the grid has no member")
    keys = list(grid)
    return [dict(zip(keys, combination)) for combination in itertools.product(*(grid[key] for key in keys))]


def list_sets(sets: list, base: Mapping) -> list[dict]:
    """sweep.list: explicit parameter sets."""
    chosen = []
    for index, values in enumerate(sets or []):
        if not isinstance(values, Mapping):
            raise SweepError(f"config sweep.list[{index}]: give a mapping of parameter -> value, not {values!r}")
        _check_keys(f"sweep.list[{index}]", values, base)
        chosen.append(dict(values))
    return chosen


def _round(value: float) -> float:
    """6 significant digits: readable ids and tables, the same on every machine."""
    return float(f"{value:.6g}")


def check_spec(key: str, spec, where: str) -> None:
    """One parameter of a space (sweep.random.space, sweep.search.space): {choices: [...]} or {low, high[, log]}."""
    if not isinstance(spec, Mapping):
        raise SweepError(f"config {where}.{key}: give {{choices: [...]}} or {{low, high[, log]}}, not {spec!r}")
    if "choices" in spec:
        if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
            raise SweepError(f"config {where}.{key}: `choices` must be a non-empty list and stand alone")
        return
    unknown = sorted(set(spec) - {"low", "high", "log"})
    if unknown or not {"low", "high"} <= set(spec):
        raise SweepError(f"config {where}.{key}: a range is {{low, high[, log]}} (got keys {sorted(spec)})")
    low, high = spec["low"], spec["high"]
    if isinstance(low, bool) or isinstance(high, bool) or not all(isinstance(v, (int, float)) for v in (low, high)):
        raise SweepError(f"config {where}.{key}: low and high must be numbers")
    if not low < high:
        raise SweepError(f"config {where}.{key}: low ({low}) must be below high ({high})")
    if not isinstance(spec.get("log", False), bool):
        raise SweepError(f"config {where}.{key}: log must be true or false, not {spec['log']!r}")
    if spec.get("log", False) and low <= 0:
        raise SweepError(f"config {where}.{key}: a log range needs low > 0 (got {low})")


def _sample(rng: random.Random, key: str, spec, where: str):
    check_spec(key, spec, where)
    if "choices" in spec:
        return spec["choices"][rng.randrange(len(spec["choices"]))]
    low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
    integer = isinstance(low, int) and isinstance(high, int)
    if log:
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
        return min(high, max(low, round(value))) if integer else _round(value)
    return rng.randint(low, high) if integer else _round(rng.uniform(low, high))


def random_sets(spec: Mapping | None, base: Mapping) -> list[dict]:
    """sweep.random {count, seed, space}: `count` sets drawn from `space` (a stable generator seeded by `seed`)."""
    if not spec:
        return []
    count = spec.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SweepError(f"config sweep.random.count: give a number of samples >= 1, not {count!r}")
    space = spec.get("space") or {}
    _check_keys("sweep.random.space", space, base)
    rng = random.Random(spec.get("seed", 0))
    return [{key: _sample(rng, key, space[key], "sweep.random.space") for key in space} for _ in range(count)]


def _text(value) -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(_text(v) for v in value)
    if isinstance(value, float):
        value = f"{value:g}"
    return re.sub(r"[^A-Za-z0-9.-]", "", str(value))


def member_id(changed: Mapping, params: Mapping) -> str:
    """`key=value` parts of what the member changes (cut to READABLE_LENGTH) and a hash of all its parameters."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:HASH_LENGTH]
    readable = "_".join(f"{key}={_text(value)}" for key, value in changed.items())[:READABLE_LENGTH].rstrip("_=")
    return f"{readable}_{digest}" if readable else digest


class ParamsCheck:
    """Checks members' values against the schema of train.hyperparameters (e.g. dropout below 1): each distinct
    value of each key a member changes is checked once, against that key's part of the schema (the rest of a
    member is the validated config's), so 10 000 members cost a few thousand small checks, not 10 000 full ones."""

    def __init__(self, schema: Mapping | None):
        self.validator = None
        if schema is not None:
            import jsonschema

            self.validator = jsonschema.Draft202012Validator(schema)
            self.properties = {**schema.get("properties", {}), **prepare_schemas()}
        self.seen: set[tuple[str, str]] = set()

    def __call__(self, changed: Mapping, member: str) -> None:
        if self.validator is None:
            return
        for key, value in changed.items():
            token = (key, json.dumps(value, sort_keys=True))
            if token in self.seen or key not in self.properties:
                continue
            errors = sorted(
                self.validator.evolve(schema=self.properties[key]).iter_errors(value), key=lambda e: list(e.path)
            )
            if errors:
                error = errors[0]
                where = ".".join([key, *(str(part) for part in error.path)])
                where = where if key.startswith(PREPARE_PREFIX) else f"train.hyperparameters.{where}"
                raise SweepError(f"config sweep: member {member} sets {where}: {error.message}")
            self.seen.add(token)


def check_params(params: Mapping, schema: Mapping | None, member: str) -> None:
    """The member's parameters against the schema of train.hyperparameters (e.g. dropout below 1)."""
    ParamsCheck(schema)(params, member)


def members(config: Mapping, schema: Mapping | None = None) -> dict[str, dict]:
    """{member id: full hyper-parameters} of config `sweep:` (grid, then list, then random; each with its seed
    replicas); empty when no sweep is configured, or for an adaptive search (checked, see search()). `schema`: train.hyperparameters' schema, to check each member."""
    sweep = config.get("sweep") or {}
    if not configured(sweep):
        return {}
    if sweep.get("search"):  # an adaptive search: its members come round by round (trial_members); checked here
        search(config, schema)
        return {}
    available = sweepable(config)
    sets = grid_sets(sweep.get("grid") or {}, available) + list_sets(sweep.get("list") or [], available)
    sets += random_sets(sweep.get("random"), available)
    seeds = sweep.get("seeds", 0)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 0:
        raise SweepError(f"config sweep.seeds: give a number of replicas >= 0, not {seeds!r}")
    seed_key = sweep.get("seed_key", "seed")
    if seeds and seed_key not in available:
        raise SweepError(
            f"config sweep.seed_key: {seed_key!r} is not a training hyper-parameter (train.hyperparameters has "
            f"{sorted(k for k in available if not k.startswith(PREPARE_PREFIX))}) or a prepare parameter "
            f"({sorted(k for k in available if k.startswith(PREPARE_PREFIX))}), so sweep.seeds cannot replicate"
        )
    if seeds and any(seed_key in values for values in sets):
        raise SweepError(f"config sweep.seeds: {seed_key!r} is also swept (grid, list or random): choose one")
    if not sets:
        sets = [{}]  # seeds alone: replicas of train.hyperparameters
    # Every member carries the prepare parameters that any member changes (one column each in the aggregate);
    # a sweep of training hyper-parameters alone keeps exactly them (and the same ids).
    touched = {key for values in sets for key in values} | ({seed_key} if seeds else set())
    base = dict(config["train"]["hyperparameters"])
    base.update({key: available[key] for key in sorted(touched) if key.startswith(PREPARE_PREFIX)})
    found: dict[str, dict] = {}
    check = ParamsCheck(schema)
    for values in sets:
        replicas = [{}] if not seeds else [{seed_key: available[seed_key] + k} for k in range(seeds)]
        for replica in replicas:
            changed = {**values, **replica}
            params = {**base, **changed}
            member = member_id(changed, params)
            check(changed, member)
            if member in found:
                raise SweepError(f"config sweep: member {member} ({json.dumps(changed)}) is given twice")
            found[member] = params
    return found


def swept_keys(members_: Mapping[str, Mapping], seed_key: str = "seed") -> list[str]:
    """The hyper-parameters that differ between members (the seed last), in the members' key order."""
    first = next(iter(members_.values()), {})
    keys = [key for key in first if len({json.dumps(p[key]) for p in members_.values()}) > 1]
    return sorted(keys, key=lambda key: key == seed_key)


# Adaptive search (sweep.search): an Optuna study asked and told in rounds (workflow/rules/sweep.smk, the checkpoint
# search_round; the study itself is run by `python -m <package>.search`). Its members are known only round by round.
TRIAL_PREFIX = "trial="
COMBINED = ("grid", "list", "random", "seeds")


def search(config: Mapping, schema: Mapping | None = None) -> dict | None:
    """config sweep.search checked, with its defaults and what follows from it (None: no adaptive search):
    sampler, trials, batch, startup, seed, space, metric, direction (of sweep:), rounds, and study: the name of the
    study and its folder (the sampler and a hash of everything that shapes its trials but `trials`, so raising
    `trials` continues the same study). `schema`: train.hyperparameters' schema, to check the space's ends."""
    sweep = config.get("sweep") or {}
    spec = sweep.get("search")
    if not spec:
        return None
    if not isinstance(spec, Mapping):
        raise SweepError(f"config sweep.search: give a mapping {{sampler, trials, batch, space, ...}}, not {spec!r}")
    where = "sweep.search"
    allowed_keys = schemas.node("config", "properties", "sweep", "properties", "search", "properties")
    unknown = sorted(set(spec) - set(allowed_keys))
    if unknown:
        raise SweepError(f"config {where}.{unknown[0]}: unknown key (allowed: {sorted(allowed_keys)}; the metric and "
                         "direction are sweep.metric and sweep.direction)")
    combined = [key for key in COMBINED if sweep.get(key)]
    if combined:
        raise SweepError(f"config sweep.{combined[0]}: an adaptive search (sweep.search) chooses every member "
                         "itself; it cannot be combined with grid, list, random or seeds: choose one")
    samplers = schemas.allowed("config", "properties", "sweep", "properties", "search", "properties", "sampler")
    sampler = spec.get("sampler", allowed_keys["sampler"]["default"])
    if sampler not in samplers:
        raise SweepError(f"config {where}.sampler: {sampler!r} is not a sampler (allowed: {list(samplers)})")
    numbers = {}
    for key, minimum in (("trials", 1), ("batch", 1), ("startup", 0), ("seed", None)):
        value = spec.get(key, allowed_keys[key].get("default"))
        if key == "startup" and value is None:
            value = spec.get("batch")  # the first round is sampled at random, then the sampler takes over
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            floor = f" >= {minimum}" if minimum is not None else ""
            raise SweepError(f"config {where}.{key}: give an integer{floor}, not {value!r}")
        numbers[key] = value
    if numbers["trials"] < numbers["batch"]:
        raise SweepError(f"config {where}.trials: {numbers['trials']} trials are fewer than one round of "
                         f"{where}.batch = {numbers['batch']}: lower batch or raise trials")
    space = spec.get("space") or {}
    base = sweepable(config)
    _check_keys(f"{where}.space", space, base)
    for key, value in space.items():
        check_spec(key, value, f"{where}.space")
        ends = value["choices"] if "choices" in value else [value["low"], value["high"]]
        for end in ends:  # every member the study can propose is a valid set of hyper-parameters
            check_params({**base, key: end}, schema, f"of {where}.space.{key} = {end!r}")
    shape = {"sampler": sampler, "batch": numbers["batch"], "startup": numbers["startup"], "seed": numbers["seed"],
             "space": space, "metric": sweep.get("metric", "accuracy"), "direction": sweep.get("direction", "maximize"),
             # what trials do not sample: the hyper-parameters, and the prepare parameters when the space has one
             "base": {key: value for key, value in base.items()
                      if not key.startswith(PREPARE_PREFIX) or any(k.startswith(PREPARE_PREFIX) for k in space)}}
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:HASH_LENGTH]
    return {**{k: v for k, v in shape.items() if k != "base"}, "trials": numbers["trials"],
            "rounds": math.ceil(numbers["trials"] / numbers["batch"]), "study": f"{sampler}-{digest}"}


def round_size(search_: Mapping, round_: int) -> int:
    """Trials in round `round_` (the last one may be smaller)."""
    return min(search_["batch"], search_["trials"] - round_ * search_["batch"])


def trial_member(number: int, sampled: Mapping, base: Mapping) -> tuple[str, dict]:
    """A trial's member id (`trial=<number>_` and the sampled values, then the hash) and full hyper-parameters
    (`base`: train.hyperparameters; prepare parameters only where the study samples them)."""
    params = {**base, **sampled}
    return member_id({"trial": number, **sampled}, params), params


def trial_members(round_file: Mapping, config: Mapping, schema: Mapping | None = None) -> dict[str, dict]:
    """{member id: full hyper-parameters} of one round written by `python -m <package>.search ask`."""
    base = dict(config["train"]["hyperparameters"])
    found = {}
    for trial in round_file["trials"]:
        member, params = trial_member(trial["number"], trial["params"], base)
        check_params(params, schema, member)
        found[member] = params
    return found


def trial_number(member: str) -> int | None:
    """The trial number in a search member's id, None for other members."""
    found = re.match(rf"{re.escape(TRIAL_PREFIX)}(\d+)_", member)
    return int(found.group(1)) if found else None


# Packing (config of the cluster: `pack:` in profiles/<name>/cluster.yaml; docs/sweeps.md "Packing"): on a cluster,
# members that are small are trained in packs, one scheduler job per pack instead of four Snakemake jobs per
# member. The pack is Snakemake's unit (one job, one marker file); the member stays the unit of resuming: a pack
# skips its members that finished before, so a rerun trains only the members that did not finish.
PACK_DIR = "results/sweep/packs"


def pack_size(members_per_job: int, runtime: int, max_runtime: int | None, whole_node: bool) -> int:
    """Members per pack job: `members_per_job` (the cluster's `pack.members_per_job`), as many as fit in the
    partition's time limit one after another (`runtime` minutes each), and 1 for members that need whole nodes
    (each is still its own job). 1 means no packing: the per-member rules."""
    if whole_node or members_per_job <= 1:
        return 1
    if max_runtime:
        return max(1, min(members_per_job, max_runtime // max(1, runtime)))
    return members_per_job


def packs(members_: Mapping[str, Mapping], size: int) -> dict[str, list[str]]:
    """{pack id: its member ids}: the members in their order, `size` at a time (empty when size <= 1). The pack
    of a member changes when members are added before it; its list is a parameter of the pack's job, so Snakemake
    runs a pack again when its list changed, and the pack skips the members that finished."""
    if size <= 1:
        return {}
    ids = list(members_)
    return {f"pack{index // size:04d}": ids[index : index + size] for index in range(0, len(ids), size)}


def member_finished(folder: str, outputs: list[str]) -> bool:
    """Whether a member's training and evaluation outputs are all there (a pack then skips it)."""
    from pathlib import Path

    return all((Path(folder) / name).is_file() and (Path(folder) / name).stat().st_size > 0 for name in outputs)


def write_pack(path: str, pack: str, members_: list[str], trained: list[str], failed: list[str]) -> None:
    """The pack's marker: its members, which of them this job trained, and which failed (then the job fails and
    the marker is not kept: Snakemake runs the pack again next time)."""
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    record = {"pack": pack, "members": members_, "trained": trained, "skipped": len(members_) - len(trained),
              "failed": failed}
    Path(path).write_text(json.dumps(record, indent=2) + "\n")


def training_args(member: str, params: Mapping, train: str, folder: str, checkpoint_every: int) -> list[str]:
    """The arguments of a member's training (after the launch): its data, output folder, MLflow run, parameters and
    checkpoints (results/checkpoints/sweep/<member>)."""
    return [
        "--train", train, "--out-dir", f"{folder}/model", "--run-file", f"{folder}/run.json",
        "--params", json.dumps(split(params)[0], sort_keys=True),
        "--checkpoint-dir", f"results/checkpoints/sweep/{member}", "--checkpoint-every", str(checkpoint_every),
    ]


def member_script(member: str, folder: str, params: Mapping, package: str, parent: str, test: str, training: str,
                  probe: str) -> str:
    """One member inside a pack job, as the per-member rules run it (the same commands, logs and outputs): its
    parameters, its MLflow child run (kept from an earlier try), training (`probe; training`: the launch command),
    evaluation; a failure marks its run FAILED and fails the script. Braces are doubled: Snakemake's shell() formats
    the text it is given."""
    import shlex

    q = shlex.quote
    logs = f"logs/sweep/{member}"
    run = q(f"{folder}/run.json")
    fail = f"python -m {q(package)}.tracking fail --run-file {run} --step"  # + the step (the rules' names)
    evaluate = (
        f"python -m {q(package)}.evaluate --model {q(f'{folder}/model/model.pt')} --test {q(test)} "
        f"--metrics {q(f'{folder}/metrics.json')} --table {q(f'{folder}/metrics.html')} "
        f"--confusion-plot {q(f'{folder}/confusion_matrix.png')} --predictions {q(f'{folder}/predictions.csv')} "
        f"--run-file {run}"
    )
    script = "\n".join([
        f"mkdir -p {q(folder)} {q(logs)}",
        f"printf '%s\\n' {q(json.dumps(params, sort_keys=True))} > {q(f'{folder}/params.json')}",
        f"[ -s {run} ] || python -m {q(package)}.tracking start-child --out {run} --parent-run-file {q(parent)} "
        f"--name {q(member)} --params {q(f'{folder}/params.json')} > {q(f'{logs}/start_member.log')} 2>&1",
        f"({probe}; {training}) > {q(f'{logs}/train.log')} 2>&1 || ({fail} train_member --new-run >> {q(f'{logs}/train.log')} 2>&1; exit 1)",
        f"({evaluate}) > {q(f'{logs}/evaluate.log')} 2>&1 || ({fail} evaluate_member >> {q(f'{logs}/evaluate.log')} 2>&1; exit 1)",
    ])
    return script.replace("{", "{{").replace("}", "}}")


def run_pack(record: str, log: str, pack: str, members_: list[str], sweep_dir: str, outputs: list[str],
             run_member) -> None:
    """A pack job: `run_member(member)` (the member's script through Snakemake's shell()) for each member that has
    not finished, one after another; a failing member does not stop the others. Writes the pack's record (and a
    copy as its log), then fails if any member failed, so that Snakemake runs the pack again next time."""
    import shutil
    import subprocess

    trained, failed = [], []
    for member in members_:
        if member_finished(f"{sweep_dir}/{member}", outputs):
            continue
        trained.append(member)
        try:
            run_member(member)
        except subprocess.CalledProcessError:
            failed.append(member)
    write_pack(record, pack, members_, trained, failed)
    shutil.copyfile(record, log)
    if failed:
        raise RuntimeError(f"{pack}: {len(failed)} member(s) failed: {failed} (logs in logs/sweep/<member>/)")
