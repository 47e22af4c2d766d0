"""Distributed training backends behind one small interface.

A backend learns rank, size and rendezvous from the environment its launcher created: `local_ranks` (this
package's local launcher), `mpirun` or `srun --mpi=...` for Horovod; `local_ranks`, `torchrun`, `mpirun` or `srun`
(SLURM_* variables) for torch DDP. The rendezvous of ranks on several nodes (MASTER_ADDR, MASTER_PORT) is set from
outside.
Started without a launcher, both run as a single process.

Each rank trains on one device: GPU `local_rank` (modulo the GPUs it can see) when torch sees a GPU (ROCm builds
of torch report AMD GPUs through `torch.cuda` too), else the CPU.
"""

from __future__ import annotations

import abc
import os
import socket

import torch
from torch import nn

DEVICES = ("auto", "cpu", "gpu")
# Set by Slurm (gres/gpu) and by the GPU runtimes: GPUs were meant for this process.
GPU_VARIABLES = (
    "SLURM_GPUS_ON_NODE",
    "SLURM_STEP_GPUS",
    "SLURM_JOB_GPUS",
    "ROCR_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "CUDA_VISIBLE_DEVICES",
)


def gpu_count() -> int:
    """GPUs this process's torch can use (0 for a CPU-only build or without a visible GPU)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def choose_device(request: str, local_rank: int, gpus: int, environ) -> tuple[torch.device, str | None]:
    """(device to train on, warning or None) for `--device request` on a rank that sees `gpus` GPUs.

    `auto` takes GPU `local_rank % gpus` when there is one and the CPU otherwise, with a warning when the
    environment says GPUs were allocated (Slurm gres, the GPU runtimes' *_VISIBLE_DEVICES) but torch sees none:
    the usual cause is a container started without `--rocm`/`--nv` or a CPU-only torch. `gpu` makes that an error.
    """
    if request not in DEVICES:
        raise SystemExit(f"--device {request!r} is not one of {', '.join(DEVICES)}")
    if request == "cpu":
        return torch.device("cpu"), None
    if gpus > 0:
        return torch.device("cuda", local_rank % gpus), None
    # Empty, "0" GPUs on the node, and the runtimes' "no device" values allocate nothing.
    allocated = [
        f"{name}={environ[name]}"
        for name in GPU_VARIABLES
        if environ.get(name, "") not in ("", "-1", "NoDevFiles")
        and not (name == "SLURM_GPUS_ON_NODE" and environ[name] == "0")
    ]
    build = f"torch {torch.__version__}, " + (
        f"ROCm {torch.version.hip}" if torch.version.hip else f"CUDA {torch.version.cuda}" if torch.version.cuda
        else "CPU-only build"
    )
    hint = (
        "inside a container, start it with GPU support (config container.gpu: rocm or cuda: "
        "apptainer/singularity --rocm or --nv) and use a ROCm or CUDA build of torch"
    )
    if request == "gpu":
        found = f" although {', '.join(allocated)}" if allocated else ""
        raise SystemExit(f"--device gpu: torch sees no GPU{found} ({build}); {hint}")
    if allocated:
        return torch.device("cpu"), (
            f"WARNING: training on the CPU although GPUs were allocated ({', '.join(allocated)}): "
            f"torch sees none ({build}); {hint}"
        )
    return torch.device("cpu"), None


class Backend(abc.ABC):
    name: str
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    device: torch.device = torch.device("cpu")
    device_warning: str | None = None

    def _use_device(self, request: str) -> None:
        self.device, self.device_warning = choose_device(request, self.local_rank, gpu_count(), os.environ)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, non_blocking=True)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @abc.abstractmethod
    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        """Make all ranks start from rank 0's weights and average gradients across ranks.

        Returns (model, optimizer) to train with; the optimizer may be a new object (Horovod's
        DistributedOptimizer starts with empty state), so restore optimizer state into the returned one."""

    @abc.abstractmethod
    def allreduce_mean(self, value: float) -> float:
        """Mean of a scalar over all ranks."""

    @abc.abstractmethod
    def allreduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of a tensor over all ranks (a new tensor)."""

    @abc.abstractmethod
    def broadcast_object(self, obj):
        """Rank 0's picklable object, on every rank."""

    @abc.abstractmethod
    def shutdown(self) -> None: ...

    def allgather(self, values: list[float]) -> list[list[float]]:
        """Every rank's `values`, indexed by rank. Exact: each rank fills its own row, the others add zeros."""
        table = torch.zeros(self.size, len(values), dtype=torch.float64)
        table[self.rank] = torch.tensor(values, dtype=torch.float64)
        return self.allreduce_sum(table).tolist()

    @staticmethod
    def unwrap(model: nn.Module) -> nn.Module:
        return getattr(model, "module", model)


class HorovodBackend(Backend):
    name = "horovod"

    def __init__(self, device: str = "auto") -> None:
        try:
            import horovod.torch as hvd
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise RuntimeError(
                "training backend 'horovod' needs Horovod: run containers/horovod/build-horovod.sh "
                "(or choose train.backend: torch_ddp in config/config.yaml)"
            ) from error
        self.hvd = hvd
        hvd.init()
        self.rank, self.size = hvd.rank(), hvd.size()
        self.local_rank, self.local_size = hvd.local_rank(), hvd.local_size()
        self._use_device(device)

    def prepare(self, model, optimizer):
        hvd = self.hvd
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)
        optimizer = hvd.DistributedOptimizer(
            optimizer, named_parameters=model.named_parameters(), op=hvd.Average
        )
        return model, optimizer

    def allreduce_mean(self, value: float) -> float:
        return float(self.hvd.allreduce(torch.tensor(float(value)), op=self.hvd.Average).item())

    def allreduce_sum(self, tensor):
        return self.hvd.allreduce(tensor, op=self.hvd.Sum)

    def broadcast_object(self, obj):
        # An explicit name: Horovod's default is the object's type name, which differs between rank 0's object
        # and the placeholders of the other ranks (e.g. dict vs NoneType), and mismatched names never match up.
        return self.hvd.broadcast_object(obj, root_rank=0, name="broadcast_object") if self.size > 1 else obj

    def shutdown(self) -> None:
        self.hvd.shutdown()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tasks_on_node(spec: str, node: int) -> int | None:
    """Tasks on node `node` of a Slurm tasks-per-node spec such as `2(x2),1` (None when it does not say)."""
    counts: list[int] = []
    for part in filter(None, spec.split(",")):
        count, _, times = part.partition("(x")
        if not count.isdigit():
            return None
        counts += [int(count)] * (int(times.rstrip(")")) if times else 1)
    return counts[node] if 0 <= node < len(counts) else None


def ddp_environment(environ: dict[str, str]) -> dict[str, str]:
    """The torch.distributed variables, from torchrun's, Open MPI's or Slurm's, or single-process defaults.

    The rendezvous (MASTER_ADDR, MASTER_PORT) of ranks on several nodes comes from outside: the training rule works
    it out on the host from the allocation (containers have no Slurm tools). Without it such ranks stop with an
    error; a rendezvous at 127.0.0.1 would only reach the ranks of one node.
    """
    if "RANK" in environ and "WORLD_SIZE" in environ:
        env = {key: environ[key] for key in ("RANK", "WORLD_SIZE") if key in environ}
        env["LOCAL_RANK"] = environ.get("LOCAL_RANK", "0")
        env["LOCAL_WORLD_SIZE"] = environ.get("LOCAL_WORLD_SIZE", "1")
    elif "OMPI_COMM_WORLD_RANK" in environ:
        env = {
            "RANK": environ["OMPI_COMM_WORLD_RANK"],
            "WORLD_SIZE": environ["OMPI_COMM_WORLD_SIZE"],
            "LOCAL_RANK": environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
            "LOCAL_WORLD_SIZE": environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", "1"),
        }
    elif "SLURM_PROCID" in environ and "SLURM_NTASKS" in environ:
        # srun sets these for every task of its step, also when the job's own SLURM_* variables were stripped.
        local = tasks_on_node(environ.get("SLURM_STEP_TASKS_PER_NODE", ""), int(environ.get("SLURM_NODEID", "0")))
        env = {
            "RANK": environ["SLURM_PROCID"],
            "WORLD_SIZE": environ["SLURM_NTASKS"],
            "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
            "LOCAL_WORLD_SIZE": str(local or environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0]),
        }
    else:
        env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    several = env["WORLD_SIZE"] != "1"
    if environ.get("MASTER_ADDR"):
        env["MASTER_ADDR"] = environ["MASTER_ADDR"]
    elif several and int(env["LOCAL_WORLD_SIZE"]) < int(env["WORLD_SIZE"]):
        raise SystemExit(
            f"torch DDP: {env['WORLD_SIZE']} ranks on several nodes ({env['LOCAL_WORLD_SIZE']} on this one) but no "
            "MASTER_ADDR: start them with the project's launch (snakemake --profile ...), which sets MASTER_ADDR and "
            "MASTER_PORT from the allocation's first node, or set both yourself"
        )
    else:
        env["MASTER_ADDR"] = "127.0.0.1"  # every rank on this machine
    env["MASTER_PORT"] = environ.get("MASTER_PORT") or str(29500 if several else _free_port())
    return env


def rendezvous_store(env: dict[str, str]):
    """The ranks' TCPStore at MASTER_ADDR:MASTER_PORT, its server in rank 0 listening on that address only.

    torch's own (init_process_group's env:// rendezvous) listens on every interface of rank 0's machine; here rank 0
    binds the socket itself (127.0.0.1 for a local run, the first node's address on a cluster) and hands it to the
    store. The other ranks connect to it and wait up to the process group's timeout for rank 0 to come up. A single
    process gets an in-process store.
    """
    from torch.distributed import HashStore, TCPStore
    from torch.distributed.constants import default_pg_timeout

    host, port, size = env["MASTER_ADDR"], int(env["MASTER_PORT"]), int(env["WORLD_SIZE"])
    if size == 1:
        return HashStore()  # a world of one meets nobody: an in-process store, no socket at all
    if env["RANK"] != "0":
        return TCPStore(host, port, size, False, default_pg_timeout)
    try:
        listener = socket.create_server((host, port), backlog=max(size, 128))
    except OSError as error:
        raise SystemExit(f"torch DDP: rank 0 cannot listen at MASTER_ADDR:MASTER_PORT {host}:{port}: {error}") from error
    return TCPStore(host, port, size, True, default_pg_timeout, master_listen_fd=listener.detach())


class TorchDDPBackend(Backend):
    name = "torch_ddp"

    def __init__(self, device: str = "auto") -> None:
        import torch.distributed as dist

        self.dist = dist
        env = ddp_environment(dict(os.environ))
        os.environ.update(env)
        self.rank, self.size = int(env["RANK"]), int(env["WORLD_SIZE"])
        self.local_rank, self.local_size = int(env["LOCAL_RANK"]), int(env["LOCAL_WORLD_SIZE"])
        self._use_device(device)
        # NCCL (RCCL on ROCm) for GPU tensors, Gloo for CPU tensors.
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":  # torchrun's agent hosts the store
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, store=rendezvous_store(env), rank=self.rank, world_size=self.size)

    def prepare(self, model, optimizer):
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids), optimizer

    def allreduce_mean(self, value: float) -> float:
        tensor = torch.tensor(float(value), device=self.device)
        self.dist.all_reduce(tensor, op=self.dist.ReduceOp.SUM)
        return float(tensor.item()) / self.size

    def allreduce_sum(self, tensor):
        reduced = tensor.to(self.device, copy=True)  # NCCL reduces GPU tensors only
        self.dist.all_reduce(reduced, op=self.dist.ReduceOp.SUM)
        return reduced.to(tensor.device)

    def broadcast_object(self, obj):
        if self.size == 1:
            return obj
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def shutdown(self) -> None:
        self.dist.destroy_process_group()


# The backends this package implements, by the name `train.backend` uses (the workflow's schema allows exactly these).
BACKENDS = {backend.name: backend for backend in (HorovodBackend, TorchDDPBackend)}


def create(name: str, device: str = "auto") -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown training backend '{name}' (allowed: {', '.join(BACKENDS)})")
    return BACKENDS[name](device)
