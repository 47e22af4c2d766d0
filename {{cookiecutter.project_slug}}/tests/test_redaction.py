import json

import pytest

from {{ cookiecutter.package_name }} import pipeline_run, tracking
from {{ cookiecutter.package_name }}.redaction import redact, redact_uri


def test_credentials_are_masked_and_the_rest_kept():
    assert redact_uri("https://user:token@mlflow.example.org:5000/x?page=2&token=t") == (  # pragma: allowlist secret
        "https://***@mlflow.example.org:5000/x?page=2&token=***")
    assert redact_uri("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    assert redact({"tracking": {"uri": "http://u:p@h"}, "n": 1}) == {"tracking": {"uri": "http://***@h"}, "n": 1}


@pytest.mark.slow
def test_the_run_records_no_credential_and_later_steps_still_connect(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db?token=SECRET123"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    run_file = tmp_path / "run.json"
    run_id = tracking.start(run_file, "redaction", {"tracking": {"uri": uri}})
    text = run_file.read_text()
    assert "SECRET123" not in text
    assert json.loads(text)["tracking_uri"] == f"sqlite:///{tmp_path}/mlflow.db?token=***"
    record = pipeline_run.record(None, "test", metrics={"m": 1.0})
    tracking.publish(run_file, [record])  # connects with the environment's full URI
    recorded = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id).data
    assert recorded.params["tracking.uri"] == f"sqlite:///{tmp_path}/mlflow.db?token=***"
    assert recorded.metrics["m"] == 1.0
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(SystemExit, match="credentials are not recorded: set MLFLOW_TRACKING_URI"):
        pipeline_run.tracking_uri(json.loads(text))
