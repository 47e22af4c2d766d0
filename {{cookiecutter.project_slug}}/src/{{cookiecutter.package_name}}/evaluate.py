"""Evaluation on the held-out split: metrics JSON, an HTML metrics table, a confusion-matrix plot."""

from __future__ import annotations

import argparse
import html
import json
from pathlib import Path

import numpy as np
import torch

from . import data, model as model_lib, pipeline_run, tracking


def predict(net: torch.nn.Module, features: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(features)).argmax(1).numpy()


def compute_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict:
    from sklearn.metrics import accuracy_score, classification_report

    report = classification_report(labels, predictions, output_dict=True, zero_division=0)
    per_class = {
        name: {key: round(float(value), 6) for key, value in scores.items()}
        for name, scores in report.items()
        if name not in ("accuracy", "macro avg", "weighted avg")
    }
    return {
        "accuracy": round(float(accuracy_score(labels, predictions)), 6),
        "macro_f1": round(float(report["macro avg"]["f1-score"]), 6),
        "weighted_f1": round(float(report["weighted avg"]["f1-score"]), 6),
        "n_test": int(len(labels)),
        "per_class": per_class,
    }


def metrics_table(metrics: dict) -> str:
    rows = [f"<tr><th>accuracy</th><td>{metrics['accuracy']:.4f}</td></tr>",
            f"<tr><th>macro F1</th><td>{metrics['macro_f1']:.4f}</td></tr>",
            f"<tr><th>weighted F1</th><td>{metrics['weighted_f1']:.4f}</td></tr>",
            f"<tr><th>test samples</th><td>{metrics['n_test']}</td></tr>"]
    per_class = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{s['precision']:.4f}</td><td>{s['recall']:.4f}</td>"
        f"<td>{s['f1-score']:.4f}</td><td>{int(s['support'])}</td></tr>"
        for name, s in metrics["per_class"].items()
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Metrics</title></head><body>"
        f"<h2>Held-out metrics</h2><table>{''.join(rows)}</table>"
        "<h3>Per class</h3><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>"
        f"<th>support</th></tr>{per_class}</table></body></html>\n"
    )


def plot_confusion(labels: np.ndarray, predictions: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(6, 6))
    ConfusionMatrixDisplay.from_predictions(labels, predictions, ax=ax, colorbar=False)
    ax.set_title("Confusion matrix (held-out split)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(history: list[dict], path: Path) -> None:
    """Training loss and accuracy per epoch (history.json's rank-averaged values), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [record["epoch"] for record in history]
    fig, (loss_ax, accuracy_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [record["loss"] for record in history], marker=".")
    loss_ax.set(title="Training loss", xlabel="epoch", ylabel="loss")
    accuracy_ax.plot(epochs, [record["accuracy"] for record in history], marker=".", color="tab:green")
    accuracy_ax.set(title="Training accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (loss_ax, accuracy_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--confusion-plot", required=True)
    parser.add_argument("--predictions", help="CSV of index, label, prediction for every held-out sample")
    parser.add_argument("--history", help="the training's history.json: plot its loss and accuracy per epoch")
    parser.add_argument("--curves-plot", help="where the training curves go (with --history)")
    parser.add_argument("--record", help="write the test scores and the outputs to log to this record file; the "
                        "pipeline's bookkeeping step sends it to the MLflow run")
    parser.add_argument("--run-file", help="MLflow run id file: send the record to that run at once (a sweep member)")
    args = parser.parse_args(argv)

    net, _ = model_lib.load(args.model)
    features, labels = data.load_split(args.test)
    predictions = predict(net, features)
    metrics = compute_metrics(labels, predictions)
    outputs = [Path(args.metrics), Path(args.table), Path(args.confusion_plot)]
    for path in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
    outputs[0].write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    outputs[1].write_text(metrics_table(metrics))
    plot_confusion(labels, predictions, outputs[2])
    if args.predictions:
        rows = "".join(f"{i},{int(y)},{int(p)}\n" for i, (y, p) in enumerate(zip(labels, predictions)))
        Path(args.predictions).write_text("index,label,prediction\n" + rows)
        outputs.append(Path(args.predictions))
    if args.history and args.curves_plot:
        history = json.loads(Path(args.history).read_text())["history"]
        Path(args.curves_plot).parent.mkdir(parents=True, exist_ok=True)
        plot_curves(history, Path(args.curves_plot))
        outputs.append(Path(args.curves_plot))
    if args.record or args.run_file:
        scalars = {f"test_{k}": metrics[k] for k in ("accuracy", "macro_f1", "weighted_f1")}
        scalars.update({f"test_f1_class_{c}": s["f1-score"] for c, s in metrics["per_class"].items()})
        logged = pipeline_run.record(args.record, "evaluate", new=True, metrics=scalars, artifacts=outputs)
        if args.run_file:
            tracking.publish(args.run_file, [logged], step="evaluate")
    print(f"accuracy {metrics['accuracy']:.4f}  macro F1 {metrics['macro_f1']:.4f} on {metrics['n_test']} held-out samples")


if __name__ == "__main__":
    main()
