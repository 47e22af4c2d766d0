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


def test_ddp_environment_from_an_srun_step():
    """What srun sets for each task of its step, also when the job's own SLURM_* variables were stripped."""
    env = backends.ddp_environment(
        {"SLURM_PROCID": "2", "SLURM_NTASKS": "3", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
         "SLURM_STEP_TASKS_PER_NODE": "2,1", "MASTER_ADDR": "10.1.0.11", "MASTER_PORT": "11234"}
    )
    assert (env["RANK"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"], env["MASTER_PORT"]) == ("2", "0", "1", "11234")


def test_ranks_on_several_nodes_without_a_rendezvous_stop_with_an_error():
    with pytest.raises(SystemExit, match="4 ranks on several nodes .2 on this one. but no MASTER_ADDR"):
        backends.ddp_environment({"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1",
                                  "SLURM_NODEID": "1", "SLURM_STEP_TASKS_PER_NODE": "2(x2)"})


def test_ranks_on_one_node_meet_at_loopback():
    env = backends.ddp_environment({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1",
                                    "SLURM_STEP_TASKS_PER_NODE": "2"})
    assert (env["LOCAL_WORLD_SIZE"], env["MASTER_ADDR"]) == ("2", "127.0.0.1")


@pytest.mark.parametrize("spec, node, expected", [("8(x2)", 1, 8), ("2,1", 1, 1), ("3(x2),1", 2, 1), ("", 0, None)])
def test_tasks_on_node(spec, node, expected):
    assert backends.tasks_on_node(spec, node) == expected


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


@pytest.mark.parametrize(
    "local_rank, gpus, expected", [(0, 8, "cuda:0"), (3, 8, "cuda:3"), (9, 8, "cuda:1"), (1, 1, "cuda:0")]
)
def test_each_rank_takes_its_own_gpu(local_rank, gpus, expected):
    # `gpus` is what torch.cuda.device_count() reports on the node (ROCm builds of torch too).
    device, warning = backends.choose_device("auto", local_rank, gpus, {})
    assert (str(device), warning) == (expected, None)


def test_without_a_gpu_training_runs_on_the_cpu_quietly():
    assert backends.choose_device("auto", 0, 0, {}) == (torch.device("cpu"), None)
    assert backends.choose_device("cpu", 0, 8, {"ROCR_VISIBLE_DEVICES": "0"}) == (torch.device("cpu"), None)


def test_allocated_gpus_that_torch_cannot_see_are_a_warning():
    device, warning = backends.choose_device("auto", 0, 0, {"SLURM_JOB_GPUS": "0,1", "CUDA_VISIBLE_DEVICES": ""})
    assert device == torch.device("cpu")
    assert warning.startswith("WARNING: training on the CPU although GPUs were allocated (SLURM_JOB_GPUS=0,1)")
    assert "--rocm or --nv" in warning and f"torch {torch.__version__}" in warning
    # What Slurm sets for `--gpus`/`--gpus-per-node` jobs and their steps (seen on the test suite's mini-LUMI).
    assert "SLURM_GPUS_ON_NODE=2" in backends.choose_device("auto", 0, 0, {"SLURM_GPUS_ON_NODE": "2"})[1]


@pytest.mark.parametrize("environ", [{"SLURM_GPUS_ON_NODE": "0"}, {"CUDA_VISIBLE_DEVICES": "-1"},
                                     {"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, {"ROCR_VISIBLE_DEVICES": ""}])
def test_variables_that_allocate_no_gpu_give_no_warning(environ):
    assert backends.choose_device("auto", 0, 0, environ) == (torch.device("cpu"), None)


def test_device_gpu_without_a_gpu_is_an_error_naming_the_cause():
    expected = r"--device gpu: torch sees no GPU although ROCR_VISIBLE_DEVICES=0,1 .*--rocm"
    with pytest.raises(SystemExit, match=expected):
        backends.choose_device("gpu", 0, 0, {"ROCR_VISIBLE_DEVICES": "0,1"})
    with pytest.raises(SystemExit, match=r"--device 'tpu' is not one of auto, cpu, gpu"):
        backends.choose_device("tpu", 0, 0, {})


def test_the_backend_trains_on_the_cpu_here():
    backend = backends.create("torch_ddp", "cpu")
    try:
        assert backend.device == torch.device("cpu") and backend.device_warning is None
        assert backend.allreduce_sum(torch.ones(3)).tolist() == [1.0, 1.0, 1.0]
    finally:
        backend.shutdown()

