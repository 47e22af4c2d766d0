import json

import numpy as np
import pytest

from {{ cookiecutter.package_name }} import backends, model as model_lib, train


class SingleProcess(backends.Backend):
    """The interface without any communication: one rank, used to test the training loop itself."""

    name = "single"

    def __init__(self, size: int = 1) -> None:
        self.size = size

    def prepare(self, model, optimizer):
        return model, optimizer

    def allreduce_mean(self, value):
        return value

    def shutdown(self):
        pass


def blobs(n=400, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centres = np.eye(3, 8, dtype=np.float32) * 3
    return (centres[labels] + rng.normal(0, 0.5, (n, 8))).astype(np.float32), labels.astype(np.int64)


def params(**changes):
    return {**train.DEFAULTS, "epochs": 8, "batch_size": 32, "hidden_sizes": [16], **changes}


def test_training_learns_and_is_deterministic(tmp_path):
    features, labels = blobs()
    net, spec, history = train.train(SingleProcess(), features, labels, params())
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["accuracy"] > 0.95
    _, _, again = train.train(SingleProcess(), features, labels, params())
    assert again == history
    model_lib.save(net, spec, tmp_path / "model.pt")
    loaded, loaded_spec = model_lib.load(tmp_path / "model.pt")
    assert loaded_spec == spec == {"n_features": 8, "n_classes": 3, "hidden_sizes": [16], "dropout": 0.0}


def test_global_batch_must_split_evenly_across_ranks():
    features, labels = blobs()
    with pytest.raises(SystemExit, match="batch_size 32 is not divisible by the 3 ranks"):
        train.train(SingleProcess(size=3), features, labels, params())


def test_unknown_hyperparameter_is_named():
    with pytest.raises(SystemExit, match=r"unknown training parameter\(s\) \['momentum'\]"):
        train.hyper_parameters(json.dumps({"momentum": 0.9}))
