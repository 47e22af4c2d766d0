import json

import numpy as np
import pytest

import torch

from {{ cookiecutter.package_name }} import backends, checkpoints, model as model_lib, train


class SingleProcess(backends.Backend):
    """The interface without any communication: one rank, used to test the training loop itself."""

    name = "single"

    def __init__(self, size: int = 1) -> None:
        self.size = size

    def prepare(self, model, optimizer):
        return model, optimizer

    def allreduce_mean(self, value):
        return value

    def allreduce_sum(self, tensor):
        return tensor.clone()

    def broadcast_object(self, obj):
        return obj

    def shutdown(self):
        pass


def blobs(n=400, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centres = np.eye(3, 8, dtype=np.float32) * 3
    return (centres[labels] + rng.normal(0, 0.5, (n, 8))).astype(np.float32), labels.astype(np.int64)


@pytest.fixture()
def params(hyperparameters):
    """params(**changes): the config's hyper-parameters, made small and quick for these tests, with `changes`."""

    def make(**changes) -> train.HyperParameters:
        return train.HyperParameters.from_mapping(
            {**hyperparameters, "epochs": 8, "batch_size": 32, "hidden_sizes": [16], "dropout": 0.0, **changes}
        )

    return make


@pytest.mark.slow
def test_training_learns_and_is_deterministic(tmp_path, params):
    features, labels = blobs()
    net, spec, history, _ = train.train(SingleProcess(), features, labels, params())
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["accuracy"] > 0.95
    _, _, again, _ = train.train(SingleProcess(), features, labels, params())
    assert again == history
    model_lib.save(net, spec, tmp_path / "model.pt")
    loaded, loaded_spec = model_lib.load(tmp_path / "model.pt")
    assert loaded_spec == spec == {"n_features": 8, "n_classes": 3, "hidden_sizes": [16], "dropout": 0.0}


def test_training_switches_on_deterministic_kernels_without_loading_the_compiler():
    """What torch.use_deterministic_algorithms(True) switches on for eager kernels, without its import of
    torch._inductor (checked in a fresh interpreter: this one may have imported it for another test)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    source = str(Path(train.__file__).resolve().parents[1])  # also where the package is not installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    probe = (
        "import sys, torch\n"
        "from {{ cookiecutter.package_name }} import train\n"
        "train.seed_everything(0, torch.device('cpu'))\n"
        "assert torch.are_deterministic_algorithms_enabled()\n"
        "assert not torch.is_deterministic_algorithms_warn_only_enabled()\n"
        "print('torch._inductor' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    assert done.stdout.strip() == "False"


def test_global_batch_must_split_evenly_across_ranks(params):
    features, labels = blobs()
    with pytest.raises(SystemExit, match="batch_size 32 is not divisible by the 3 ranks"):
        train.train(SingleProcess(size=3), features, labels, params())


def test_unknown_hyperparameter_is_named(hyperparameters):
    with pytest.raises(SystemExit, match=r"unknown training parameter\(s\) \['momentum'\] \(allowed: \["):
        train.hyper_parameters(json.dumps({**hyperparameters, "momentum": 0.9}))


def test_missing_hyperparameters_are_named(hyperparameters):
    partial = {key: value for key, value in hyperparameters.items() if key not in ("dropout", "seed")}
    with pytest.raises(SystemExit) as missing:
        train.hyper_parameters(json.dumps(partial))
    assert str(missing.value) == (
        "missing training parameter(s) ['dropout', 'seed'] (allowed: "
        "['batch_size', 'dropout', 'epochs', 'hidden_sizes', 'learning_rate', 'seed'])"
    )
    with pytest.raises(SystemExit, match=r"unknown training parameter\(s\) \['momentum'\]; missing training"):
        train.hyper_parameters(json.dumps({**partial, "momentum": 0.9}))


def test_the_workflow_passes_every_hyperparameter(hyperparameters):
    params = train.hyper_parameters(json.dumps(hyperparameters))
    assert params.to_dict() == hyperparameters


def test_checkpoint_dir_needs_checkpoint_every(capsys):
    required = ["--backend", "horovod", "--train", "t.npz", "--out-dir", "out", "--params", "{}"]
    with pytest.raises(SystemExit):
        train.parse_args([*required, "--checkpoint-dir", "ckpt"])
    assert "--checkpoint-dir needs --checkpoint-every" in capsys.readouterr().err
    args = train.parse_args([*required, "--checkpoint-dir", "ckpt", "--checkpoint-every", "0"])
    assert args.checkpoint_every == 0
    assert train.parse_args(required).checkpoint_every is None


class Interrupted(Exception):
    pass


class RebuildsOptimizer(SingleProcess):
    """Like Horovod's DistributedOptimizer: prepare() returns a new optimizer object, without state."""

    def prepare(self, model, optimizer):
        return model, type(optimizer)(optimizer.param_groups)


class DiesAfterCheckpoint(SingleProcess):
    """Stops the run (as a kill would) right after the n-th checkpoint is on disk."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after

    def allgather(self, values):
        self.after -= 1
        if self.after < 0:
            raise Interrupted
        return super().allgather(values)


def state_of(net):
    return {name: tensor.clone() for name, tensor in net.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("resumer", [SingleProcess, RebuildsOptimizer])
@pytest.mark.parametrize("every", [7, 12])  # 7: checkpoints mid-epoch; 12 = steps per epoch: at epoch ends
def test_resumed_run_is_exactly_the_uninterrupted_one(tmp_path, every, resumer, params):
    features, labels = blobs()
    p = params(dropout=0.2)  # dropout draws random numbers: the RNG state must be restored too
    net, _, history, outcome = train.train(SingleProcess(), features, labels, p)
    assert outcome.resumed_from_step == 0 and outcome.total_steps == 8 * 12

    directory = tmp_path / "ckpt"
    with pytest.raises(Interrupted):  # dies before its 4th checkpoint is written
        train.train(DiesAfterCheckpoint(3), features, labels, p, train.Checkpointing(directory, every))
    assert (directory / checkpoints.FILE_NAME).is_file()
    resumed, _, resumed_history, outcome = train.train(
        resumer(), features, labels, p, train.Checkpointing(directory, every)
    )
    assert outcome.resumed_from_step == 3 * every
    assert resumed_history == history
    for name, tensor in state_of(net).items():
        assert torch.equal(resumed.state_dict()[name], tensor), name


@pytest.mark.slow
def test_checkpoint_of_another_run_is_ignored_with_a_warning(tmp_path, capsys, params):
    features, labels = blobs()
    directory = tmp_path / "ckpt"
    with pytest.raises(Interrupted):
        train.train(DiesAfterCheckpoint(1), features, labels, params(), train.Checkpointing(directory, 10))
    _, _, history, outcome = train.train(
        SingleProcess(), features, labels, params(learning_rate=0.01), train.Checkpointing(directory, 0)
    )
    assert outcome.resumed_from_step == 0
    assert f"params.learning_rate: {params().learning_rate!r} -> 0.01" in outcome.messages[0]
    assert "WARNING: ignoring checkpoint" in capsys.readouterr().out
    _, _, fresh, _ = train.train(SingleProcess(), features, labels, params(learning_rate=0.01))
    assert history == fresh


def test_world_size_is_part_of_a_checkpoint(tmp_path, params):
    features, labels = blobs()
    identity = checkpoints.fingerprint(
        "horovod", 2, params().to_dict(), {"n_features": 8}, checkpoints.data_digest(features, labels)
    )
    checkpoints.save(tmp_path, {"fingerprint": identity, "step": 5})
    state, warning = checkpoints.load(tmp_path, {**identity, "world_size": 1})
    assert state is None and "world_size: 2 -> 1" in warning
    state, warning = checkpoints.load(tmp_path, identity)
    assert warning is None and state["step"] == 5


def test_a_partly_written_checkpoint_never_replaces_the_last_good_one(tmp_path):
    identity = {"world_size": 1}
    checkpoints.save(tmp_path, {"fingerprint": identity, "step": 10})
    # what a writer killed mid-write leaves behind: a truncated temporary file next to the checkpoint
    good = (tmp_path / checkpoints.FILE_NAME).read_bytes()
    (tmp_path / f".{checkpoints.FILE_NAME}.killed.tmp").write_bytes(good[: len(good) // 2])
    state, warning = checkpoints.load(tmp_path, identity)
    assert warning is None and state["step"] == 10
    checkpoints.clear(tmp_path)
    assert not tmp_path.exists()


def test_an_unreadable_checkpoint_is_reported_not_fatal(tmp_path):
    (tmp_path / checkpoints.FILE_NAME).write_bytes(b"not a checkpoint")
    state, warning = checkpoints.load(tmp_path, {})
    assert state is None and "ignoring unreadable checkpoint" in warning


class TermAfter(SingleProcess):
    """A SIGTERM (as the handler of `main` records it) arrives after the training has taken `steps` steps."""

    def __init__(self, checkpointing, steps: int) -> None:
        super().__init__()
        self.checkpointing, self.steps, self.polls = checkpointing, steps, 0

    def allreduce_sum(self, tensor):
        self.polls += 1  # the poll at step polls * poll; the request lands before the next poll once due
        if (self.polls + 1) * self.checkpointing.poll >= self.steps:
            self.checkpointing.stop_requested = True
        return super().allreduce_sum(tensor)


@pytest.mark.slow
def test_a_stop_request_checkpoints_at_the_next_agreed_step_and_resumes_exactly(tmp_path, params):
    features, labels = blobs()
    _, _, history, _ = train.train(SingleProcess(), features, labels, params())
    checkpointing = train.Checkpointing(tmp_path, every=0)  # no periodic checkpoints: only the one on request
    with pytest.raises(train.Stopped) as stopped:
        train.train(TermAfter(checkpointing, 25), features, labels, params(), checkpointing)
    assert stopped.value.step == 30  # the first agreed step (every `poll` = 10 steps) after the request
    # every=0: no periodic checkpoints in the resumed run either (it only resumes)
    _, _, resumed, outcome = train.train(SingleProcess(), features, labels, params(), train.Checkpointing(tmp_path, 0))
    assert outcome.resumed_from_step == 30
    assert resumed == history


def test_diverging_training_stops_with_a_clear_error(params):
    """A loss that becomes NaN/inf stops training (every rank: the loss is all-reduced) instead of saving the model."""
    features, labels = blobs()
    with pytest.raises(train.Diverged, match="training diverged: the loss is nan after epoch 1"):
        train.train(SingleProcess(), features, labels, params(learning_rate=1e30))
