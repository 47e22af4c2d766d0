"""A sweep's aggregate: every member's parameters and metrics in one table, the best member, mean and spread across
seeds per parameter set, and the metric against each swept parameter.

    python -m {{ cookiecutter.package_name }}.sweep --members results/sweep/<id> ... --metric accuracy \\
        --direction maximize --csv ... --html ... --plot ... --best ... [--parent-run-file ...]

With packing (docs/sweeps.md), `--packs results/sweep/packs/<pack>.json ...` instead of `--members`: each pack's
record lists its members, whose folders are results/sweep/<id> (a short command line for thousands of members).

Each member folder holds params.json (its full hyper-parameters), metrics.json (evaluate), model/history.json
(train) and run.json (its MLflow run, a child of the sweep's parent run).
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import statistics
from pathlib import Path

METRICS = ("accuracy", "macro_f1", "weighted_f1")


def _cell(value) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def packed_members(packs: list[str]) -> list[str]:
    """The member folders listed by pack records (results/sweep/packs/<pack>.json -> results/sweep/<id>)."""
    folders = []
    for pack in map(Path, packs):
        folders += [str(pack.parent.parent / member) for member in json.loads(pack.read_text())["members"]]
    return folders


def load(folders: list[str]) -> list[dict]:
    """One row per member: member, run_id, params (dict), metrics (dict of scalars), train_seconds."""
    rows = []
    for folder in map(Path, folders):
        metrics = json.loads((folder / "metrics.json").read_text())
        history = json.loads((folder / "model" / "history.json").read_text())
        run = folder / "run.json"
        rows.append({
            "member": folder.name,
            "run_id": json.loads(run.read_text())["run_id"] if run.is_file() else "",
            "params": json.loads((folder / "params.json").read_text()),
            "metrics": {key: value for key, value in metrics.items() if isinstance(value, (int, float))},
            "train_seconds": round(float(history["seconds"]), 3),
        })
    return rows


def swept(rows: list[dict], seed_key: str) -> list[str]:
    """The parameters that differ between members, the seed last."""
    keys = list(rows[0]["params"]) if rows else []
    differing = [key for key in keys if len({_cell(row["params"][key]) for row in rows}) > 1]
    return sorted(differing, key=lambda key: key == seed_key)


def best(rows: list[dict], metric: str, direction: str) -> dict:
    """The member with the highest (maximize) or lowest (minimize) metric; the first of equals."""
    missing = [row["member"] for row in rows if metric not in row["metrics"]]
    if missing:
        known = sorted(rows[0]["metrics"]) if rows else []
        raise SystemExit(f"config sweep.metric {metric!r} is not in the metrics of {missing[0]} (it has {known})")
    sign = 1 if direction == "maximize" else -1
    return max(rows, key=lambda row: (sign * row["metrics"][metric], -rows.index(row)))


def by_set(rows: list[dict], metric: str, seed_key: str) -> list[dict]:
    """Mean, standard deviation (0 for one replica), min and max of the metric per parameter set (all but the
    seed), in the members' order."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        key = json.dumps({k: v for k, v in row["params"].items() if k != seed_key}, sort_keys=True)
        groups.setdefault(key, []).append(row)
    summary = []
    for key, members in groups.items():
        values = [row["metrics"][metric] for row in members]
        summary.append({
            "params": json.loads(key),
            "members": [row["member"] for row in members],
            "n": len(values),
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
        })
    return summary


def write_csv(rows: list[dict], path: Path) -> None:
    params = list(rows[0]["params"])
    metrics = sorted({key for row in rows for key in row["metrics"]})
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["member", "run_id", *params, *metrics, "train_seconds"])
        for row in rows:
            writer.writerow([row["member"], row["run_id"], *(_cell(row["params"][k]) for k in params),
                             *(row["metrics"].get(k, "") for k in metrics), row["train_seconds"]])


def write_html(rows: list[dict], sets: list[dict], top: dict, metric: str, direction: str, keys: list[str],
               seed_key: str, path: Path) -> None:
    esc = html.escape
    shown = keys or list(rows[0]["params"])
    metrics = [key for key in METRICS if key in rows[0]["metrics"]] or sorted(rows[0]["metrics"])
    head = "".join(f"<th>{esc(k)}</th>" for k in ["member", *shown, *metrics, "train s"])
    best_row = ' class="best"'
    body = "".join(
        f"<tr{best_row if row is top else ''}><td>{esc(row['member'])}</td>"
        + "".join(f"<td>{esc(_cell(row['params'][k]))}</td>" for k in shown)
        + "".join(f"<td>{row['metrics'].get(k, float('nan')):.4f}</td>" for k in metrics)
        + f"<td>{row['train_seconds']:.1f}</td></tr>"
        for row in rows
    )
    set_keys = [k for k in shown if k != seed_key]
    set_head = "".join(f"<th>{esc(k)}</th>" for k in set_keys) + f"<th>n</th><th>{esc(metric)} mean ± std</th><th>min</th><th>max</th>"
    set_body = "".join(
        "<tr>" + "".join(f"<td>{esc(_cell(s['params'][k]))}</td>" for k in set_keys)
        + f"<td>{s['n']}</td><td>{s['mean']:.4f} ± {s['std']:.4f}</td><td>{s['min']:.4f}</td><td>{s['max']:.4f}</td></tr>"
        for s in sets
    )
    path.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Sweep</title>"
        "<style>tr.best{font-weight:bold;background:#e6f4e6} td,th{padding:2px 8px}</style></head><body>"
        f"<h2>Sweep: {len(rows)} members</h2>"
        f"<p>Best member by {esc(metric)} ({esc(direction)}): <b>{esc(top['member'])}</b> "
        f"({esc(metric)} {top['metrics'][metric]:.4f}, MLflow run {esc(top['run_id'])})</p>"
        f"<h3>Per parameter set (across seeds)</h3><table><tr>{set_head}</tr>{set_body}</table>"
        f"<h3>Every member</h3><table><tr>{head}</tr>{body}</table></body></html>\n"
    )


def plot(rows: list[dict], metric: str, keys: list[str], seed_key: str, path: Path) -> None:
    """The metric against each swept parameter (every member a point, the mean per value a line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if k != seed_key] or keys or [seed_key]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        labels = sorted({_cell(row["params"].get(key)) for row in rows},
                        key=lambda text: (0, float(text)) if _number(text) else (1, text))
        numeric = all(_number(label) for label in labels)
        position = {label: float(label) if numeric else index for index, label in enumerate(labels)}
        xs = [position[_cell(row["params"].get(key))] for row in rows]
        ax.scatter(xs, [row["metrics"][metric] for row in rows], alpha=0.7)
        means = [statistics.fmean(row["metrics"][metric] for row in rows
                                  if _cell(row["params"].get(key)) == label) for label in labels]
        ax.plot([position[label] for label in labels], means, marker="_", color="black")
        if not numeric:
            ax.set_xticks(range(len(labels)), labels, rotation=30)
        elif min(position.values()) > 0 and max(position.values()) / min(position.values()) >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
    fig.suptitle(f"{metric} per member (line: mean per value)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def log_to_parent(run_file: str, rows: list[dict], top: dict, metric: str, artifacts: list[Path],
                  sweep: dict | None = None, records=()) -> None:
    """The aggregate on the sweep's run, after the records of the steps it used (the prepared data's)."""
    import mlflow

    from .pipeline_run import resume
    from .tracking import publish

    if records:
        publish(run_file, list(records), step="sweep")

    with resume(run_file, step="sweep"):
        mlflow.set_tags({"sweep.members": str(len(rows)), "sweep.best_member": top["member"],
                         "sweep.best_run_id": top["run_id"], "sweep.metric": metric})
        mlflow.log_metrics({f"best_{key}": value for key, value in top["metrics"].items()})
        for path in artifacts:
            mlflow.log_artifact(str(path))
        if sweep is not None:
            mlflow.log_dict(sweep, "sweep_config.json")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__package__}.sweep", description=__doc__)
    members = parser.add_mutually_exclusive_group(required=True)
    members.add_argument("--members", nargs="+", help="the members' folders (results/sweep/<id>)")
    members.add_argument("--packs", nargs="+", help="pack records listing the members (results/sweep/packs/*.json)")
    parser.add_argument("--metric", required=True)
    parser.add_argument("--direction", choices=("maximize", "minimize"), required=True)
    parser.add_argument("--seed-key", default="seed")
    parser.add_argument("--csv", required=True)
    parser.add_argument("--html", required=True)
    parser.add_argument("--plot", required=True)
    parser.add_argument("--best", required=True, help="JSON: the best member, its run and metric")
    parser.add_argument("--parent-run-file", help="the sweep's MLflow parent run (gets the aggregate)")
    parser.add_argument("--sweep-config", help="JSON: config `sweep:`, kept on the parent run as sweep_config.json")
    parser.add_argument("--records", nargs="*", default=[],
                        help="records to send to the parent run first (the pipeline's prepared data's)")
    args = parser.parse_args(argv)
    if args.packs:
        args.members = packed_members(args.packs)

    rows = load(args.members)
    top = best(rows, args.metric, args.direction)
    keys = swept(rows, args.seed_key)
    sets = by_set(rows, args.metric, args.seed_key)
    outputs = [Path(args.csv), Path(args.html), Path(args.plot)]
    for path in outputs + [Path(args.best)]:
        path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(rows, outputs[0])
    write_html(rows, sets, top, args.metric, args.direction, keys, args.seed_key, outputs[1])
    plot(rows, args.metric, keys, args.seed_key, outputs[2])
    summary = {
        "member": top["member"], "run_id": top["run_id"], "metric": args.metric, "direction": args.direction,
        "value": top["metrics"][args.metric], "params": top["params"], "members": len(rows), "swept": keys,
        "run_file": str(Path(args.members[rows.index(top)]) / "run.json"),
        "sets": sets,
    }
    Path(args.best).write_text(json.dumps(summary, indent=2) + "\n")
    if args.parent_run_file:
        sweep = json.loads(args.sweep_config) if args.sweep_config else None
        log_to_parent(args.parent_run_file, rows, top, args.metric, outputs + [Path(args.best)], sweep,
                      args.records)
    print(f"{len(rows)} members; best by {args.metric} ({args.direction}): {top['member']} "
          f"{top['metrics'][args.metric]:.4f}")


if __name__ == "__main__":
    main()
