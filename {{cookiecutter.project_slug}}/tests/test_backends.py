import importlib.util

import pytest
import torch
import yaml

from {{ cookiecutter.package_name }} import backends


def test_ddp_environment_from_torchrun():
    env = backends.ddp_environment(
        {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
         "MASTER_ADDR": "node1", "MASTER_PORT": "1234"}
    )
    assert env == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                   "MASTER_ADDR": "node1", "MASTER_PORT": "1234"}


def test_ddp_environment_from_slurm():
    env = backends.ddp_environment(
        {"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
         "SLURM_NTASKS_PER_NODE": "8(x2)", "MASTER_ADDR": "nid001"}
    )
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("9", "16", "1", "8")
    assert env["MASTER_ADDR"] == "nid001" and env["MASTER_PORT"] == "29500"


def test_ddp_environment_single_process_defaults():
    env = backends.ddp_environment({})
    assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"]) == ("0", "1", "127.0.0.1")
    assert int(env["MASTER_PORT"]) > 0


def test_unknown_backend_names_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown training backend 'mxnet' .*horovod, torch_ddp"):
        backends.create("mxnet")


def test_configured_backend_runs_a_single_process(project_dir):
    name = yaml.safe_load((project_dir / "config/config.yaml").read_text())["train"]["backend"]
    if name == "horovod" and importlib.util.find_spec("horovod") is None:
        pytest.fail("backend horovod is configured but Horovod is not installed: run containers/horovod/build-horovod.sh")
    backend = backends.create(name)
    try:
        assert (backend.rank, backend.size, backend.is_root) == (0, 1, True)
        assert backend.allreduce_mean(3.5) == 3.5
        model = torch.nn.Linear(2, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        wrapped, optimizer = backend.prepare(model, optimizer)
        assert backend.unwrap(wrapped) is model
    finally:
        backend.shutdown()


def test_ddp_environment_from_open_mpi():
    env = backends.ddp_environment(
        {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
         "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "MASTER_ADDR": "nid001"}
    )
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("3", "4", "1", "2")
