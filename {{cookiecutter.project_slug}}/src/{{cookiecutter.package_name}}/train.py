"""Distributed training entry point: `python -m {{ cookiecutter.package_name }}.train`.

Each rank takes its slice of every global batch, so the run is the same optimisation problem whatever
the number of ranks (same global batch, gradients averaged by the backend).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import backends, data, model as model_lib, tracking

DEFAULTS = {
    "epochs": 30,
    "batch_size": 64,
    "learning_rate": 0.001,
    "hidden_sizes": [128, 64],
    "dropout": 0.0,
    "seed": 42,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=backends.BACKENDS, required=True)
    parser.add_argument("--train", required=True, help="processed training split (.npz)")
    parser.add_argument("--out-dir", required=True, help="where model.pt and history.json go")
    parser.add_argument("--params", default="{}", help="JSON object of training hyper-parameters")
    parser.add_argument("--run-file", help="MLflow run id file of the pipeline (rank 0 logs there)")
    return parser.parse_args(argv)


def hyper_parameters(raw: str) -> dict:
    params = {**DEFAULTS, **json.loads(raw)}
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise SystemExit(f"unknown training parameter(s) {unknown} (allowed: {sorted(DEFAULTS)})")
    return params


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True)


def train(backend: backends.Backend, features: np.ndarray, labels: np.ndarray, params: dict):
    """Train and return (model, history). History holds rank-averaged loss/accuracy per epoch."""
    seed_everything(params["seed"])
    global_batch = params["batch_size"]
    if global_batch % backend.size:
        raise SystemExit(f"batch_size {global_batch} is not divisible by the {backend.size} ranks")
    local_batch = global_batch // backend.size
    steps = len(labels) // global_batch
    if steps == 0:
        raise SystemExit(f"batch_size {global_batch} is larger than the {len(labels)} training samples")

    spec = {
        "n_features": int(features.shape[1]),
        "n_classes": int(labels.max()) + 1,
        "hidden_sizes": list(params["hidden_sizes"]),
        "dropout": float(params["dropout"]),
    }
    net = model_lib.make_model(**spec)
    optimizer = torch.optim.Adam(net.parameters(), lr=params["learning_rate"])
    net, optimizer = backend.prepare(net, optimizer)
    loss_fn = nn.CrossEntropyLoss()
    x_all, y_all = torch.from_numpy(features), torch.from_numpy(labels)

    history = []
    for epoch in range(params["epochs"]):
        order = np.random.default_rng(params["seed"] + epoch).permutation(len(labels))
        net.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for step in range(steps):
            batch = order[step * global_batch : (step + 1) * global_batch]
            mine = batch[backend.rank * local_batch : (backend.rank + 1) * local_batch]
            x, y = x_all[mine], y_all[mine]
            optimizer.zero_grad()
            logits = net(x)
            loss = loss_fn(logits, y)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        record = {
            "epoch": epoch + 1,
            "loss": backend.allreduce_mean(loss_sum / seen),
            "accuracy": backend.allreduce_mean(correct / seen),
        }
        history.append(record)
        if backend.is_root:
            print(
                f"epoch {record['epoch']:3d}/{params['epochs']}  loss {record['loss']:.4f}  "
                f"train accuracy {record['accuracy']:.4f}",
                flush=True,
            )
    return backend.unwrap(net), spec, history


def log_to_mlflow(run_file: str, net: nn.Module, example: np.ndarray, history: list[dict], world: int, seconds: float):
    import mlflow
    from mlflow.entities import Metric

    with tracking.resume(run_file) as run:
        mlflow.log_params({"train.world_size": world})
        now = int(time.time() * 1000)
        metrics = [
            Metric(f"train_{name}", record[name], now, record["epoch"])
            for record in history
            for name in ("loss", "accuracy")
        ]
        metrics.append(Metric("train_seconds", seconds, now, 0))
        mlflow.tracking.MlflowClient().log_batch(run.info.run_id, metrics=metrics)
        mlflow.pytorch.log_model(
            net,
            name="model",
            input_example=example,
            serialization_format="pt2",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    params = hyper_parameters(args.params)
    backend = backends.create(args.backend)
    cpus = len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, cpus // backend.local_size))
    features, labels = data.load_split(args.train)
    if backend.is_root:
        print(
            f"training with {backend.name} on {backend.size} rank(s), global batch "
            f"{params['batch_size']}, {params['epochs']} epochs, {len(labels)} samples",
            flush=True,
        )
    started = time.perf_counter()
    net, spec, history = train(backend, features, labels, params)
    seconds = time.perf_counter() - started
    if backend.is_root:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model_lib.save(net, spec, out / "model.pt")
        summary = {"backend": backend.name, "world_size": backend.size, "params": params,
                   "seconds": seconds, "history": history}
        (out / "history.json").write_text(json.dumps(summary, indent=2) + "\n")
        if args.run_file:
            log_to_mlflow(args.run_file, net, features[:5], history, backend.size, seconds)
        print(f"saved {out / 'model.pt'} after {seconds:.1f} s", flush=True)
    backend.shutdown()


if __name__ == "__main__":
    main()
