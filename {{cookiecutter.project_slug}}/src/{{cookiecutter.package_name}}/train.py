"""Distributed training entry point: `python -m {{ cookiecutter.package_name }}.train`.

Each rank takes its slice of every global batch, so the run is the same optimisation problem whatever
the number of ranks (same global batch, gradients averaged by the backend).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import backends, checkpoints, data, model as model_lib, pipeline_run, tracking


@dataclass(frozen=True)
class HyperParameters:
    """What training takes: config `train.hyperparameters`, complete (the workflow passes all of it as --params).

    No defaults here: config/config.yaml and its schema hold the values. The values are kept as given (an integer
    dropout stays an integer), so history.json and the checkpoint fingerprint record exactly the config's values.
    """

    epochs: int
    batch_size: int  # global: split evenly across the ranks
    learning_rate: float
    hidden_sizes: tuple[int, ...]
    dropout: float
    seed: int

    @classmethod
    def from_mapping(cls, values: Mapping) -> HyperParameters:
        """Every field, nothing else; a missing or unknown key stops with one message naming them."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(allowed))
        missing = [name for name in allowed if name not in values]
        problems = ([f"unknown training parameter(s) {unknown}"] if unknown else []) + (
            [f"missing training parameter(s) {missing}"] if missing else []
        )
        if problems:
            raise SystemExit(f"{'; '.join(problems)} (allowed: {sorted(allowed)})")
        return cls(**{**values, "hidden_sizes": tuple(values["hidden_sizes"])})

    def to_dict(self) -> dict:
        """As JSON has it (hidden_sizes a list): for history.json and the checkpoint fingerprint."""
        return {**asdict(self), "hidden_sizes": list(self.hidden_sizes)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {__package__}.train", description=__doc__)
    parser.add_argument("--backend", choices=backends.BACKENDS, required=True)
    parser.add_argument("--train", required=True, help="processed training split (.npz)")
    parser.add_argument("--out-dir", required=True, help="where model.pt and history.json go")
    parser.add_argument(
        "--params", required=True, help="JSON object of all training hyper-parameters (config train.hyperparameters)"
    )
    parser.add_argument("--record", help="rank 0 writes what it logs (params, the loss and accuracy per epoch, the "
                        "model) to this record file; the pipeline's bookkeeping step sends it to the MLflow run")
    parser.add_argument("--run-file", help="MLflow run id file: rank 0 sends the record to that run at once "
                        "(a sweep member)")
    parser.add_argument(
        "--checkpoint-dir",
        help="write a checkpoint here every --checkpoint-every steps and resume from it on start "
        "(must not be a declared Snakemake output; removed when training finishes)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        help="optimizer steps between checkpoints (0: none; config train.checkpoint_every); "
        "required with --checkpoint-dir",
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads per rank (default: the CPUs this process may use / local ranks)"
    )
    parser.add_argument(
        "--device",
        choices=backends.DEVICES,
        default="auto",
        help="auto (default): a GPU per rank when torch sees one, else the CPU; gpu: fail without one; cpu",
    )
    args = parser.parse_args(argv)
    if args.checkpoint_dir and args.checkpoint_every is None:
        parser.error("--checkpoint-dir needs --checkpoint-every (steps between checkpoints; 0: none)")
    if args.checkpoint_every is not None and args.checkpoint_every < 0:
        parser.error("--checkpoint-every must be >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    return args


def hyper_parameters(raw: str) -> HyperParameters:
    """--params: a JSON object with every hyper-parameter."""
    values = json.loads(raw)
    if not isinstance(values, dict):
        raise SystemExit(f"--params must be a JSON object of training parameters, not {raw!r}")
    return HyperParameters.from_mapping(values)


def seed_everything(seed: int, device: torch.device) -> None:
    """Same seeds on every rank; deterministic kernels, so a rerun on the same hardware gives the same numbers.

    On the CPU (what the tests check) a run is bit-for-bit reproducible. On a GPU, cuBLAS needs a fixed workspace
    for that, and an operation without a deterministic GPU kernel warns instead of stopping the run.
    """
    torch.manual_seed(seed)  # seeds the GPUs' generators too
    np.random.seed(seed)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before any matmul
    deterministic_kernels(warn_only=device.type == "cuda")


def deterministic_kernels(warn_only: bool) -> None:
    """`torch.use_deterministic_algorithms(True)` for the eager kernels training runs. The public function also sets
    Inductor's `deterministic` option (torch.compile, which training does not use) and for that imports
    torch._inductor and TorchDynamo: 1.3 s of every rank's start and 0.4 s of its exit on a 2-core machine (torch
    2.13). The switch itself is the function's own last call, made here directly where torch has it."""
    switch = getattr(torch._C, "_set_deterministic_algorithms", None)
    if switch is None:  # another torch: the public function
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
    else:
        switch(True, warn_only=warn_only)


@dataclass
class Checkpointing:
    """Where and how often to checkpoint (every `every` optimizer steps; 0: never, but still resume)."""

    directory: Path
    every: int
    # Set by the SIGTERM handler (a scheduler's time limit, `scancel`): the ranks agree every `poll` steps,
    # then write a checkpoint at the same step and stop (Stopped), so the rerun loses no work.
    stop_requested: bool = False
    poll: int = 10

    def due(self, step: int, total: int) -> bool:
        return self.every > 0 and step % self.every == 0 and step < total

    def stop_agreed(self, backend: backends.Backend, step: int, total: int) -> bool:
        """At every `poll`-th step (the same steps on every rank): whether any rank was asked to stop."""
        if step % self.poll or step >= total:
            return False
        flag = torch.tensor([1.0 if self.stop_requested else 0.0], dtype=torch.float64)
        return float(backend.allreduce_sum(flag)[0]) > 0


class Stopped(Exception):
    """Training stopped on request after writing a checkpoint at `step`."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped at step {step} on request; the checkpoint is written, rerun to resume")
        self.step = step


class Diverged(Exception):
    """The rank-averaged loss is not a finite number: the model is useless and must not be saved or registered."""

    def __init__(self, epoch: int, loss: float, params: HyperParameters) -> None:
        super().__init__(
            f"training diverged: the loss is {loss} after epoch {epoch} (learning_rate {params.learning_rate}, "
            f"global batch {params.batch_size}); no model is saved. Lower train.hyperparameters.learning_rate "
            "in config/config.yaml (or check the data for NaN/inf values) and rerun"
        )


@dataclass
class Outcome:
    """What a training run did besides the model: where it started, how many steps it took and how fast."""

    resumed_from_step: int = 0
    total_steps: int = 0
    checkpoints_written: int = 0
    samples_per_second: float | None = None
    messages: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    """How the samples become steps: the global batch, each rank's share of it, steps per epoch and in all."""

    global_batch: int
    local_batch: int
    steps: int  # per epoch
    total: int

    @classmethod
    def of(cls, params: HyperParameters, samples: int, ranks: int) -> Plan:
        if params.batch_size % ranks:
            raise SystemExit(f"batch_size {params.batch_size} is not divisible by the {ranks} ranks")
        steps = samples // params.batch_size
        if steps == 0:
            raise SystemExit(f"batch_size {params.batch_size} is larger than the {samples} training samples")
        return cls(params.batch_size, params.batch_size // ranks, steps, steps * params.epochs)


class Training:
    """One training run, step by step: the model, the optimizer, the history so far and this rank's partial sums.

    Order matters for exact numbers: seeds, then the model's initial weights, then (when resuming) the checkpoint's
    weights and random state, then the backend's prepare(), then the optimizer's state.
    """

    def __init__(
        self,
        backend: backends.Backend,
        features: np.ndarray,
        labels: np.ndarray,
        params: HyperParameters,
        checkpointing: Checkpointing | None,
    ) -> None:
        seed_everything(params.seed, backend.device)
        self.backend, self.params, self.checkpointing = backend, params, checkpointing
        self.plan = Plan.of(params, len(labels), backend.size)
        self.spec = {
            "n_features": int(features.shape[1]),
            "n_classes": int(labels.max()) + 1,
            "hidden_sizes": list(params.hidden_sizes),
            "dropout": float(params.dropout),
        }
        self.net = model_lib.make_model(**self.spec).to(backend.device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=params.learning_rate)
        self.outcome = Outcome(total_steps=self.plan.total)
        self.history: list[dict] = []
        self.partial = (0.0, 0, 0)  # this rank's loss sum, correct predictions and samples in the current epoch
        self.identity = (  # what a checkpoint must match to be resumed
            checkpoints.fingerprint(
                backend.name, backend.size, params.to_dict(), self.spec, checkpoints.data_digest(features, labels)
            )
            if checkpointing is not None
            else None
        )
        self.x_all, self.y_all = torch.from_numpy(features), torch.from_numpy(labels)
        self.loss_fn = nn.CrossEntropyLoss()

    def prepare(self) -> None:
        """Continue from a matching checkpoint, if there is one (rank 0 reads it and broadcasts it, so every rank
        restores the same weights, random state, history, position and its own partial epoch sums); then hand the
        model and the optimizer to the backend."""
        state = None
        if self.checkpointing is not None:
            state = self._load_checkpoint()
        self.net, self.optimizer = self.backend.prepare(self.net, self.optimizer)
        if state is not None:  # after prepare(): Horovod's DistributedOptimizer is a new optimizer without state
            self.optimizer.load_state_dict(state["optimizer"])

    def _load_checkpoint(self) -> dict | None:
        """The matching checkpoint's state, on every rank (None without one), restored into model, RNG and history."""
        backend, outcome = self.backend, self.outcome
        found, warning = (
            checkpoints.load(self.checkpointing.directory, self.identity) if backend.is_root else (None, None)
        )
        state = backend.broadcast_object(found)
        if warning:
            outcome.messages.append(f"WARNING: {warning}")
        if state is not None:
            self.net.load_state_dict(state["model"])
            checkpoints.set_rng_state(state["rng"])
            self.history = list(state["history"])
            loss_sum, correct, seen = state["partial"][backend.rank]
            self.partial = (loss_sum, int(correct), int(seen))
            outcome.resumed_from_step = int(state["step"])
            outcome.messages.append(
                f"resuming from checkpoint step {state['step']}/{self.plan.total} "
                f"(epoch {state['step'] // self.plan.steps + 1})"
            )
        if backend.is_root:
            for message in outcome.messages:
                print(message, flush=True)
        return state

    def run_steps(self, epoch: int, first: int) -> tuple[list, float]:
        """Steps `first`.. of `epoch` (first > 0: the rest of the epoch a checkpoint interrupted); returns this
        rank's [loss sum, correct, samples] of the whole epoch and the seconds its steps took."""
        backend, plan = self.backend, self.plan
        order = np.random.default_rng(self.params.seed + epoch).permutation(len(self.y_all))
        self.net.train()
        loss_sum, correct, seen = self.partial if first else (0.0, 0, 0)
        started = time.perf_counter()
        for step in range(first, plan.steps):
            batch = order[step * plan.global_batch : (step + 1) * plan.global_batch]
            mine = batch[backend.rank * plan.local_batch : (backend.rank + 1) * plan.local_batch]
            x, y = backend.to_device(self.x_all[mine]), backend.to_device(self.y_all[mine])
            self.optimizer.zero_grad()
            logits = self.net(x)
            loss = self.loss_fn(logits, y)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            if self.checkpointing is not None and step < plan.steps - 1:
                self.after_step(epoch * plan.steps + step + 1, [loss_sum, correct, seen])
        return [loss_sum, correct, seen], time.perf_counter() - started

    def end_epoch(self, epoch: int, sums: list) -> None:
        """The epoch's rank-averaged loss and accuracy into the history; then a checkpoint or stop if one is due."""
        loss_sum, correct, seen = sums
        record = {
            "epoch": epoch + 1,
            "loss": self.backend.allreduce_mean(loss_sum / seen),
            "accuracy": self.backend.allreduce_mean(correct / seen),
        }
        if not (math.isfinite(record["loss"]) and all(torch.isfinite(p).all() for p in self.net.parameters())):
            raise Diverged(record["epoch"], record["loss"], self.params)  # every rank: the loss is all-reduced
        self.history.append(record)
        if self.backend.is_root:
            print(
                f"epoch {record['epoch']:3d}/{self.params.epochs}  loss {record['loss']:.4f}  "
                f"train accuracy {record['accuracy']:.4f}",
                flush=True,
            )
        if self.checkpointing is not None:
            self.after_step((epoch + 1) * self.plan.steps, [0.0, 0, 0])

    def after_step(self, step: int, sums: list) -> None:
        """After optimizer step `step` (counted over all epochs): checkpoint when due or when the ranks agreed to
        stop, and then stop."""
        stop = self.checkpointing.stop_agreed(self.backend, step, self.plan.total)
        if stop or self.checkpointing.due(step, self.plan.total):
            self.write_checkpoint(step, sums)
        if stop:
            raise Stopped(step)

    def write_checkpoint(self, step: int, sums: list) -> None:
        """Every rank's partial epoch sums (for an exact resume) to rank 0, which writes the checkpoint."""
        gathered = self.backend.allgather(sums)
        if self.backend.is_root:
            directory = self.checkpointing.directory
            checkpoints.save(
                directory,
                {
                    "fingerprint": self.identity,
                    "step": step,
                    "model": self.backend.unwrap(self.net).state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "history": self.history,
                    "partial": gathered,
                    "rng": checkpoints.rng_state(),
                },
            )
            print(f"checkpoint at step {step}/{self.plan.total} -> {directory / checkpoints.FILE_NAME}", flush=True)
        self.outcome.checkpoints_written += 1


def train(
    backend: backends.Backend,
    features: np.ndarray,
    labels: np.ndarray,
    params: HyperParameters,
    checkpointing: Checkpointing | None = None,
):
    """Train and return (model, spec, history, outcome). History holds rank-averaged loss/accuracy per epoch.

    With `checkpointing`, rank 0 writes a checkpoint every `every` steps (model, optimizer, position, per-rank
    partial epoch sums, history so far, RNG state) and a run that finds a matching checkpoint continues from it:
    rank 0 reads it and broadcasts it, so every rank resumes from the same state and the resumed run takes the
    same steps with the same numbers as an uninterrupted one.
    """
    training = Training(backend, features, labels, params, checkpointing)
    training.prepare()
    steps, start = training.plan.steps, training.outcome.resumed_from_step
    timed_samples, timed_seconds = 0, 0.0
    for epoch in range(start // steps, params.epochs):
        first = start - epoch * steps if epoch == start // steps else 0
        sums, seconds = training.run_steps(epoch, first)
        if epoch > start // steps:  # steady state: not the first (warm-up or partial) epoch of this process
            timed_samples += (steps - first) * training.plan.global_batch
            timed_seconds += seconds
        training.end_epoch(epoch, sums)
    if timed_seconds > 0:
        training.outcome.samples_per_second = timed_samples / timed_seconds
    # The saved and logged model lives on the CPU, whatever trained it: it loads and serves anywhere.
    return backend.unwrap(training.net).cpu(), training.spec, training.history, training.outcome


def training_record(
    path: str | None,
    model_path: Path,
    example: np.ndarray,
    history: list[dict],
    world: int,
    seconds: float,
    resumed_from_step: int = 0,
) -> dict:
    """What training logs: the world size, the loss and accuracy per epoch (a history, one point per epoch), the
    time, the step it resumed from (a metric, not a parameter: a forced rerun into the same MLflow run may start from
    another step) and the saved model with a few input rows (`tracking.log_model`)."""
    metrics = [(f"train_{name}", entry[name], entry["epoch"]) for entry in history for name in ("loss", "accuracy")]
    metrics += [("train_seconds", seconds, 0), ("train_resumed_from_step", resumed_from_step, 0)]
    model = {"path": str(model_path), "example": example.tolist(), "dtype": str(example.dtype)}
    return pipeline_run.record(
        path, "train", new=True, params={"train.world_size": world}, metrics=metrics, model=model
    )


def describe(device: torch.device) -> str:
    """'cpu', or 'cuda:0 (<GPU name>)' (AMD GPUs under ROCm appear as cuda devices too)."""
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


def checkpointing_from(args: argparse.Namespace) -> Checkpointing | None:
    """--checkpoint-dir and --checkpoint-every; from then on SIGTERM asks the ranks to checkpoint and stop."""
    if not args.checkpoint_dir:
        return None
    checkpointing = Checkpointing(Path(args.checkpoint_dir), args.checkpoint_every)

    def request_stop(signum, frame):
        checkpointing.stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    return checkpointing


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    params = hyper_parameters(args.params)
    backend = backends.create(args.backend, args.device)
    cpus = len(os.sched_getaffinity(0))
    torch.set_num_threads(args.threads or max(1, cpus // backend.local_size))
    features, labels = data.load_split(args.train)
    if backend.local_rank == 0:  # once per node: where the ranks run
        print(f"node {socket.gethostname()}: {backend.local_size} of {backend.size} rank(s), from rank {backend.rank}",
              flush=True)
        if backend.device_warning:
            print(backend.device_warning, file=sys.stderr, flush=True)
    if backend.is_root:
        print(
            f"training with {backend.name} on {backend.size} rank(s), global batch "
            f"{params.batch_size}, {params.epochs} epochs, {len(labels)} samples, "
            f"on {describe(backend.device)}, {torch.get_num_threads()} thread(s) per rank",
            flush=True,
        )
    checkpointing = checkpointing_from(args)
    started = time.perf_counter()
    try:
        net, spec, history, outcome = train(backend, features, labels, params, checkpointing)
    except Stopped as stopped:
        if backend.is_root:
            print(f"SIGTERM: {stopped}", flush=True)
        backend.shutdown()
        sys.exit(128 + signal.SIGTERM)
    except Diverged as diverged:
        if backend.is_root:
            print(f"error: {diverged}", file=sys.stderr, flush=True)
        if checkpointing is not None and backend.is_root:
            checkpoints.clear(checkpointing.directory)  # a rerun starts afresh, not from diverging weights
        backend.shutdown()
        sys.exit(1)
    seconds = time.perf_counter() - started
    if backend.is_root:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model_lib.save(net, spec, out / "model.pt")
        summary = {
            "backend": backend.name,
            "world_size": backend.size,
            "params": params.to_dict(),
            "seconds": seconds,
            "threads_per_rank": torch.get_num_threads(),
            "device": describe(backend.device),
            "samples_per_second": outcome.samples_per_second,
            "resumed_from_step": outcome.resumed_from_step,
            "total_steps": outcome.total_steps,
            "history": history,
        }
        (out / "history.json").write_text(json.dumps(summary, indent=2) + "\n")
        if args.record or args.run_file:
            logged = training_record(
                args.record, out / "model.pt", features[:5], history, backend.size, seconds,
                outcome.resumed_from_step,
            )
            if args.run_file:
                tracking.publish(args.run_file, [logged], step="train")
        if checkpointing is not None:
            checkpoints.clear(checkpointing.directory)  # finished: a later run starts afresh
        print(f"saved {out / 'model.pt'} after {seconds:.1f} s", flush=True)
    backend.shutdown()


if __name__ == "__main__":
    main()
