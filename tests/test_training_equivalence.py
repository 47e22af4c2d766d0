"""Real distributed runs of the demo model: Horovod and torch DDP agree, and 2 ranks agree with 1 rank.

One generated project; its pipeline prepares the data (`snakemake data/processed/train.npz`); each run is the
project's own launch command (`training_command()` from workflow/lib/smkml/launch.py: `python -m <package>.local_ranks
--processes 2` for either backend, or plain `python` for 1 rank) with the config's hyper-parameters
(30 epochs, global batch 64, Adam), on CPU with Gloo.

Tolerances (absolute; the numbers are float32):
- Horovod vs DDP, 2 ranks each: both average the same float32 gradients over the ranks (DDP divides each
  rank's gradient by 2 and sums, Horovod sums and divides by 2; dividing by 2 is exact in binary floating point),
  so on this CPU they are bit-identical (measured difference 0). TOL_BACKENDS = 1e-6 for the per-epoch loss and
  accuracy and for every weight leaves room only for a last-bit difference in a different reduction order.
- 2 ranks vs 1 rank (same global batch, same data order): one mean over 64 samples against the average of two
  means over 32 differ in float32 rounding (about 1e-7 relative), and 660 Adam steps carry such differences
  along. Measured: 1.2e-7 in the per-epoch loss/accuracy, 5e-7 in the weights. TOL_RANKS = 1e-4: hundreds of
  times the measured drift, and far below what a real mistake causes (if both ranks trained on the same half of
  every global batch, the first epoch's loss would differ by 2e-2 and a later one by up to 0.26).
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from conftest import generate, project_helper, run

pytestmark = pytest.mark.e2e

TOL_BACKENDS = 1e-6
TOL_RANKS = 1e-4


def launch_module(project):
    return project_helper(project, "launch")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    path = generate(tmp_path_factory.mktemp("equivalence"))
    run(["snakemake", "--profile", "profiles/local", "data/processed/train.npz"], path)
    return path


@pytest.fixture(scope="module")
def trained(project):
    """{(backend, ranks): (history.json, weights, command)} for the four runs."""
    launch = launch_module(project)
    config = yaml.safe_load((project / "config/config.yaml").read_text())
    params = json.dumps(config["train"]["hyperparameters"], sort_keys=True)
    package = project.name.replace("-", "_")
    results = {}
    for backend, ranks in [("horovod", 2), ("torch_ddp", 2), ("horovod", 1), ("torch_ddp", 1)]:
        out = f"results/equivalence/{backend}-{ranks}"
        command = launch.training_command(
            launcher="local", backend=backend, processes=ranks, package=package,
            args=["--train", "data/processed/train.npz", "--out-dir", out, "--params", params],
        )
        result = run(command, project, PYTHONPATH=str(project / "src"), timeout=300)
        (project / out / "train.log").write_text(result.stdout + result.stderr)
        history = json.loads((project / out / "history.json").read_text())
        state = torch.load(project / out / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
        results[backend, ranks] = (history, state, command)
    return results


def largest_differences(a, b) -> tuple[float, float]:
    """(largest per-epoch loss/accuracy difference, largest weight difference) between two runs."""
    (history_a, weights_a, _), (history_b, weights_b, _) = a, b
    assert len(history_a["history"]) == len(history_b["history"]) == history_a["params"]["epochs"]
    metrics = max(
        abs(x[key] - y[key]) for x, y in zip(history_a["history"], history_b["history"]) for key in ("loss", "accuracy")
    )
    assert weights_a.keys() == weights_b.keys()
    weights = max(float((weights_a[name] - weights_b[name]).abs().max()) for name in weights_a)
    return metrics, weights


def test_each_run_used_its_launcher_and_ranks(trained):
    for (backend, ranks), (history, _, command) in trained.items():
        assert (history["backend"], history["world_size"]) == (backend, ranks)
        launcher = {("horovod", 2): "python -m digits_classifier.local_ranks --backend horovod --processes 2 --",
                    ("torch_ddp", 2): "python -m digits_classifier.local_ranks --backend torch_ddp --processes 2 --",
                    # one Horovod rank: no launcher, Horovod's Gloo controller (no MPI singleton)
                    ("horovod", 1): "env HOROVOD_CONTROLLER=gloo HOROVOD_CPU_OPERATIONS=gloo python -m"}.get(
            (backend, ranks), "python -m")
        assert command.startswith(launcher), command
        assert history["history"][-1]["accuracy"] > 0.98, "the demo model did not learn"


def test_horovod_matches_ddp_with_two_ranks(trained):
    metrics, weights = largest_differences(trained["horovod", 2], trained["torch_ddp", 2])
    assert metrics <= TOL_BACKENDS and weights <= TOL_BACKENDS, (metrics, weights)


@pytest.mark.parametrize("backend", ["horovod", "torch_ddp"])
def test_two_ranks_match_one_rank(trained, backend):
    metrics, weights = largest_differences(trained[backend, 2], trained[backend, 1])
    assert metrics <= TOL_RANKS and weights <= TOL_RANKS, (metrics, weights)


def test_one_rank_is_the_same_with_either_backend(trained):
    metrics, weights = largest_differences(trained["horovod", 1], trained["torch_ddp", 1])
    assert metrics == 0 and weights == 0, (metrics, weights)
