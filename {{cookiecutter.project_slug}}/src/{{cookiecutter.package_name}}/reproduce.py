"""Reviewer rerun: check the environment against the lock, compare a rerun's metrics with the committed reference.

    python -m {{ cookiecutter.package_name }}.reproduce check-env   # installed packages vs requirements.lock
    python -m {{ cookiecutter.package_name }}.reproduce compare ... # (the `compare_to_reference` rule) table + JSON
    python -m {{ cookiecutter.package_name }}.reproduce verdict ... # print the table, exit 1 if a metric is off
    python -m {{ cookiecutter.package_name }}.reproduce record ...  # current results become the reference

`make reproduce` runs them in order around the whole pipeline; `make reference` records a new reference.
"""

from __future__ import annotations

import argparse
import fnmatch
import html
import json
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path


# ---------------------------------------------------------------------------------------------- environment
def read_lock(path: str | Path) -> dict[str, str]:
    """`name==version` lines of a pip lock file, keyed by normalised name."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-") or "==" not in line:
            continue
        name, version = line.split("==", 1)
        name = name.split("[", 1)[0].split(";", 1)[0].strip()
        pins[normalise_name(name)] = version.split(";", 1)[0].strip()
    return pins


def normalise_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def public_version(version: str) -> str:
    """`2.13.0+cpu` -> `2.13.0`: a local build tag does not change what the package is."""
    return version.split("+", 1)[0]


def environment_drift(lock: str | Path) -> list[tuple[str, str, str]]:
    """(package, locked, installed) for every locked package installed at another version or not at all."""
    drift = []
    for name, locked in sorted(read_lock(lock).items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "not installed"
        if public_version(installed) != public_version(locked):
            drift.append((name, locked, installed))
    return drift


# ---------------------------------------------------------------------------------------------- metrics
def flatten_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a metrics JSON as dotted names: per_class.3.f1-score -> 0.97."""
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def tolerance_for(name: str, tolerances: dict[str, float]) -> float:
    """First pattern (exact name or fnmatch glob, in config order) that matches; exact (0) when none does."""
    for pattern, tolerance in tolerances.items():
        if name == pattern or fnmatch.fnmatchcase(name, pattern):
            return float(tolerance)
    return 0.0


def compare(reference: dict, rerun: dict, tolerances: dict[str, float]) -> list[dict]:
    ref, new = flatten_metrics(reference), flatten_metrics(rerun)
    rows = []
    for name in sorted(set(ref) | set(new)):
        tolerance = tolerance_for(name, tolerances)
        if name not in ref or name not in new:
            rows.append({"metric": name, "reference": ref.get(name), "rerun": new.get(name), "difference": None,
                         "tolerance": tolerance, "ok": False,
                         "note": "missing in " + ("reference" if name not in ref else "rerun")})
            continue
        difference = new[name] - ref[name]
        rows.append({"metric": name, "reference": ref[name], "rerun": new[name], "difference": difference,
                     "tolerance": tolerance, "ok": abs(difference) <= tolerance + 1e-12, "note": ""})
    return rows


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:+.6f}" if isinstance(value, float) and value < 0 else f"{value:.6f}"


def table(rows: list[dict]) -> str:
    header = ("metric", "reference", "rerun", "difference", "tolerance", "result")
    body = [(r["metric"], _fmt(r["reference"]), _fmt(r["rerun"]),
             "-" if r["difference"] is None else f"{r['difference']:+.6f}", f"{r['tolerance']:.6f}",
             ("pass" if r["ok"] else "FAIL") + (f" ({r['note']})" if r["note"] else "")) for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *body]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    failed = [r for r in rows if not r["ok"]]
    verdict = (f"REPRODUCED: all {len(rows)} metrics within tolerance" if not failed else
               f"NOT REPRODUCED: {len(failed)} of {len(rows)} metrics outside tolerance: "
               + ", ".join(r["metric"] for r in failed))
    return "\n".join([*lines, "", verdict])


def to_html(rows: list[dict], reference: str) -> str:
    cells = "".join(
        f"<tr style='background:{'#e6ffe6' if r['ok'] else '#ffe6e6'}'><td>{html.escape(r['metric'])}</td>"
        f"<td>{_fmt(r['reference'])}</td><td>{_fmt(r['rerun'])}</td>"
        f"<td>{'-' if r['difference'] is None else format(r['difference'], '+.6f')}</td>"
        f"<td>{r['tolerance']:.6f}</td><td>{'pass' if r['ok'] else 'FAIL'} {html.escape(r['note'])}</td></tr>"
        for r in rows
    )
    failed = sum(not r["ok"] for r in rows)
    title = "Reproduced" if not failed else f"Not reproduced: {failed} metric(s) outside tolerance"
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Reproduction</title></head><body>"
        f"<h2>{title}</h2><p>Reference: <code>{html.escape(reference)}</code></p><table>"
        "<tr><th>metric</th><th>reference</th><th>rerun</th><th>difference</th><th>tolerance</th><th>result</th></tr>"
        f"{cells}</table></body></html>\n"
    )


def _load_json(path: str | Path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: {what} {path} does not exist")
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------- commands
def cmd_check_env(args) -> int:
    drift = environment_drift(args.lock)
    if not drift:
        print(f"environment matches {args.lock} ({len(read_lock(args.lock))} packages)")
        return 0
    width = max(len(name) for name, _, _ in drift)
    print(f"environment differs from {args.lock} in {len(drift)} package(s):")
    for name, locked, installed in drift:
        print(f"  {name.ljust(width)}  locked {locked}  installed {installed}")
    if args.warn_only:
        print("continuing anyway (--warn-only): numbers may differ because of these packages")
        return 0
    print(f"install the lock first (`make env` or `pip install -r {args.lock}`), or pass ENV_CHECK=warn to go on")
    return 1


def cmd_check_reference(args) -> int:
    if Path(args.reference).is_file():
        return 0
    print(f"error: no reference metrics at {args.reference}: nothing to compare with. Run the pipeline, then "
          f"`make reference` and commit {args.reference}.", file=sys.stderr)
    return 1


def cmd_compare(args) -> int:
    reference = _load_json(args.reference, "reference metrics")
    rerun = _load_json(args.metrics, "rerun metrics")
    rows = compare(reference, rerun, json.loads(args.tolerances))
    for path in (args.out_json, args.out_html):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    report = {"reference": args.reference, "metrics": args.metrics, "reproduced": all(r["ok"] for r in rows),
              "rows": rows}
    Path(args.out_json).write_text(json.dumps(report, indent=2) + "\n")
    Path(args.out_html).write_text(to_html(rows, args.reference))
    print(table(rows))
    return 0


def cmd_verdict(args) -> int:
    report = _load_json(args.comparison, "comparison")
    print(table(report["rows"]))
    return 0 if report["reproduced"] else 1


def cmd_record(args) -> int:
    metrics = Path(args.metrics)
    if not metrics.is_file():
        raise SystemExit(f"error: {metrics} does not exist: run the pipeline first")
    reference = Path(args.reference)
    reference.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(metrics, reference)
    if args.provenance and Path(args.provenance).is_file():
        prov = json.loads(Path(args.provenance).read_text())
        summary = {key: prov[key] for key in ("git", "data", "lockfile", "container", "snakemake_version",
                                              "profile", "config_sha256") if key in prov}
        (reference.parent / "provenance.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(f"recorded {metrics} as the reference {reference}: commit it (git add {reference.parent})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__package__}.reproduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    env = sub.add_parser("check-env", help="installed packages vs the lock")
    env.add_argument("--lock", default="requirements.lock")
    env.add_argument("--warn-only", action="store_true")
    env.set_defaults(func=cmd_check_env)
    ref = sub.add_parser("check-reference", help="fail clearly when there is no reference yet")
    ref.add_argument("--reference", required=True)
    ref.set_defaults(func=cmd_check_reference)
    cmp_ = sub.add_parser("compare", help="compare rerun metrics with the reference; write JSON + HTML")
    cmp_.add_argument("--reference", required=True)
    cmp_.add_argument("--metrics", required=True)
    cmp_.add_argument("--tolerances", default="{}", help="JSON object: metric name or glob -> absolute tolerance")
    cmp_.add_argument("--out-json", required=True)
    cmp_.add_argument("--out-html", required=True)
    cmp_.set_defaults(func=cmd_compare)
    verdict = sub.add_parser("verdict", help="print the comparison; exit 1 when a metric is outside tolerance")
    verdict.add_argument("--comparison", required=True)
    verdict.set_defaults(func=cmd_verdict)
    record = sub.add_parser("record", help="make the current metrics the reference")
    record.add_argument("--metrics", default="results/metrics.json")
    record.add_argument("--reference", required=True)
    record.add_argument("--provenance", default="results/provenance.json")
    record.set_defaults(func=cmd_record)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
