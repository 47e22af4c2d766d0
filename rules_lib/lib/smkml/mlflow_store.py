"""Is what results/ records about MLflow still in the store? The pipeline's run file (results/mlflow/run.json) names
a run, a registration (registered_model.json) names a model version; when the store was deleted or replaced (or
the run or version deleted in the MLflow UI), those names point to nothing, and every step that resumes the run
would fail on it, run after run. The workflow asks the store while parsing, where Snakemake was started, and
removes such a file with one warning line: Snakemake then starts a new run (and registers again), since every step
that logs to the run takes the run file as input.

Only a store that answers "not here" retires a file; one that cannot be asked (locked, unreachable, no MLflow
installed where Snakemake runs) retires nothing. An SQLite store (the default) is read directly, read-only, with
the standard library (milliseconds, no MLflow import); any other store through MLflow's client, without retries.
Only the store the configuration names now is asked, when it is the one the file names (their URIs without
credentials are compared; see the package's redaction module).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path

SQLITE = "sqlite:///"
# MLflow's registry keeps a deleted version's row with this stage for a while.
DELETED_VERSION = "Deleted_Internal"


def sqlite_file(uri: str) -> Path | None:
    """The database file of an `sqlite:///` URI (relative to the working directory, or absolute with 4 slashes);
    None for other stores and for an in-memory database."""
    if not uri.startswith(SQLITE):
        return None
    path = uri[len(SQLITE):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _rows(database: Path, query: str, values: tuple) -> list | None:
    """The rows of a read-only query; [] when the store has no such table or no file at all (deleted, replaced by
    another database); None when it cannot be read (locked, not a database)."""
    if not database.is_file():
        return []
    try:
        with contextlib.closing(
            sqlite3.connect(database.resolve().as_uri() + "?mode=ro", uri=True, timeout=10)
        ) as connection:
            return connection.execute(query, values).fetchall()
    except sqlite3.OperationalError as error:
        return [] if "no such table" in str(error) else None
    except sqlite3.DatabaseError:
        return None


def _ask_mlflow(uri: str, question) -> bool | None:
    """question(client) with MLflow's client, one attempt and a short timeout; False when MLflow answers that the
    resource does not exist, None when it cannot answer."""
    try:
        import mlflow
        from mlflow.exceptions import MlflowException
    except ImportError:
        return None
    limits = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    saved = {name: os.environ.get(name) for name in limits}
    os.environ.update(limits)
    try:
        return bool(question(mlflow.MlflowClient(tracking_uri=uri)))
    except MlflowException as error:
        return False if error.error_code == "RESOURCE_DOES_NOT_EXIST" else None
    except Exception:
        return None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_exists(uri: str, run_id: str) -> bool | None:
    """Whether the store has the run (and it is not deleted); None: cannot tell."""
    database = sqlite_file(uri)
    if database is None:
        return _ask_mlflow(uri, lambda client: client.get_run(run_id).info.lifecycle_stage != "deleted")
    rows = _rows(database, "SELECT lifecycle_stage FROM runs WHERE run_uuid = ?", (run_id,))
    return None if rows is None else bool(rows) and rows[0][0] != "deleted"


def version_exists(uri: str, name: str, version: int, run_id: str) -> bool | None:
    """Whether the store's registry has this version of the model, made from this run; None: cannot tell."""
    database = sqlite_file(uri)
    if database is None:
        return _ask_mlflow(uri, lambda client: client.get_model_version(name, str(version)).run_id == run_id)
    rows = _rows(
        database,
        "SELECT run_id, current_stage FROM model_versions WHERE name = ? AND version = ?",
        (name, int(version)),
    )
    return None if rows is None else bool(rows) and rows[0][0] == run_id and rows[0][1] != DELETED_VERSION


def _record(path: str | Path, uri: str, redact_uri) -> dict | None:
    """The JSON record at `path` when it names the store `uri` (compared without credentials), else None."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("tracking_uri") != redact_uri(uri):
        return None
    return record


def retire_stale(run_file: str, registrations: list[str], uri: str, redact_uri) -> list[str]:
    """Remove the run file when the store `uri` does not have its run, with every registration (they name a version
    made from it), and any other registration whose version the store does not have. Returns the warning lines:
    one per retired run file or registration."""
    warnings = []
    record = _record(run_file, uri, redact_uri)
    if record and run_exists(uri, record["run_id"]) is False:
        for path in [run_file, *registrations]:
            Path(path).unlink(missing_ok=True)
        warnings.append(
            f"{run_file} names MLflow run {record['run_id']}, which the store {redact_uri(uri)} does not have "
            "(deleted or replaced): starting a new MLflow run (every step that logs to it runs again)"
        )
    for path in registrations:
        record = _record(path, uri, redact_uri)
        if record and version_exists(uri, record["name"], record["version"], record["run_id"]) is False:
            Path(path).unlink()
            warnings.append(
                f"{path} names version {record['version']} of model {record['name']}, which the store "
                f"{redact_uri(uri)} does not have (deleted or replaced): registering the model again"
            )
    return warnings
