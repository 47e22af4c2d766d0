# A sweep's members and their parameters, for the rules of sweep.smk (which includes this file): the configured
# members (SWEEP_MEMBERS), or an adaptive search's trials, known round by round from the checkpoint search_round.


def search_round_members(round_):
    """{member id: hyper-parameters} of one round of the search (after its checkpoint job has run)."""
    path = checkpoints.search_round.get(round=str(round_)).output[0]
    return sweeps.trial_members(
        json.loads(Path(path).read_text()), config, HYPERPARAMETERS_SCHEMA
    )


def search_members_before(round_):
    found = {}
    for earlier in range(round_):
        found.update(search_round_members(earlier))
    return found


def sweep_members():
    """Every member: the configured ones, or every round's trials of the search."""
    return search_members_before(SEARCH["rounds"]) if SEARCH else SWEEP_MEMBERS


def member_params(member):
    """A member's full hyper-parameters (a search trial's from its round's file)."""
    if member in SWEEP_MEMBERS:
        return SWEEP_MEMBERS[member]
    number = sweeps.trial_number(member) if SEARCH else None
    found = {} if number is None else search_round_members(number // SEARCH["batch"])
    if member not in found:
        raise WorkflowError(f"{member} is not a member of this sweep (config sweep:)")
    return found[member]


def member_round_file(wildcards):
    """A search trial's params.json is written after its round's checkpoint."""
    number = sweeps.trial_number(wildcards.member) if SEARCH else None
    if number is None or wildcards.member in SWEEP_MEMBERS:
        return []
    # ancient: a round's file rewritten with the same trials (a rerun) retrains nothing; changed trials would
    # have other member ids anyway (the id holds a hash of the parameters).
    path = checkpoints.search_round.get(round=str(number // SEARCH["batch"])).output[0]
    return ancient(path)


def member_files(name):
    return lambda wildcards: expand(
        f"{SWEEP_DIR}/{{member}}/{name}", member=sweep_members()
    )


def told(members):
    """--told of `python -m <package>.search`: trial number, member id and its metrics.json of each finished trial,
    as separate arguments (no single argument grows with the search)."""
    return [
        str(part)
        for member in members
        for part in (
            sweeps.trial_number(member),
            member,
            f"{SWEEP_DIR}/{member}/metrics.json",
        )
    ]


def member_data(member, name):
    """A member's prepared data file `name` (train.npz, test.npz): its own data set when it changes the prepare
    notebook's parameters (rule prepare_sweep_data), else the pipeline's (rule prepare_data).
    """
    prepare = sweeps.split(member_params(member))[1]
    folder = f"{SWEEP_DATA_DIR}/{sweeps.data_id(prepare)}" if prepare else PROCESSED_DIR
    return f"{folder}/{name}"


def data_params(data):
    """The prepare notebook's parameters of the sweep's data set `data`: a configured member's, or a search trial's
    (read from the round files written so far: a trial's data is asked for only once its round's file exists).
    """
    if data in SWEEP_DATA:
        return SWEEP_DATA[data]
    for round_ in range(SEARCH["rounds"] if SEARCH else 0):
        path = Path(f"{SEARCH_DIR}/round-{round_}.json")
        if not path.is_file():
            break
        trials = sweeps.trial_members(json.loads(path.read_text()), config)
        found = sweeps.data_sets(trials)
        if data in found:
            return found[data]
    raise WorkflowError(f"{data} is not a data set of this sweep (config sweep:)")


def pipeline_data_record(wildcards):
    """prepare_data's record, when a member trains on the pipeline's prepared data: aggregate_sweep sends it to the
    sweep's run (the data's sizes, the md5 of the data used), as log_training does for a single run.
    """
    default = f"{PROCESSED_DIR}/train.npz"
    used = any(
        member_data(member, "train.npz") == default for member in sweep_members()
    )
    return [RECORDS["prepare_data"]] if used else []
