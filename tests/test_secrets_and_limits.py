"""Issue 15: no credential recorded anywhere; training the machine cannot carry refused before anything runs;
training that diverges fails without a model; local launches listen on loopback only."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import generate, project_helper, run
from system_packages import apt_install

# Two secrets in the tracking URI's query (SQLAlchemy's sqlite dialect ignores unknown parameters, so the store
# still works): neither may appear in any file the run writes, in the report or on the console.
TOKEN = "S3cr3tTokenXYZ42"
PASSWORD = "PwD0987zzQ"
SECRET_URI = f"sqlite:///mlflow.db?token={TOKEN}&password={PASSWORD}"
REDACTED_URI = "sqlite:///mlflow.db?token=***&password=***"


def set_config(project: Path, **sections) -> None:
    """Replace top-level keys of the project's config/config.yaml (nested mappings merged one level down)."""
    path = project / "config/config.yaml"
    config = yaml.safe_load(path.read_text())
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("limits"))


# --- secrets -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secret_run(tmp_path_factory):
    """A whole pipeline run and report with credentials in tracking.uri."""
    path = generate(tmp_path_factory.mktemp("secrets"))
    set_config(path, tracking={"uri": SECRET_URI})
    first = run(["snakemake", "--profile", "profiles/local"], path)
    report = run(["snakemake", "--profile", "profiles/local", "--report", "results/report.html"], path)
    return path, first.stdout + first.stderr + report.stdout + report.stderr


def written_files(project: Path):
    """Every file of the project but the user's own config (which holds the URI) and git's objects."""
    for path in sorted(project.rglob("*")):
        relative = path.relative_to(project)
        if path.is_file() and relative.parts[0] != ".git" and relative != Path("config/config.yaml"):
            yield relative, path.read_bytes()


def test_the_store_with_credentials_works(secret_run):
    path, _ = secret_run
    registered = json.loads((path / "results/mlflow/registered_model.json").read_text())
    assert registered["version"] == 1
    assert registered["tracking_uri"] == REDACTED_URI
    assert json.loads((path / "results/mlflow/run.json").read_text())["tracking_uri"] == REDACTED_URI
    assert (path / "mlflow.db").is_file(), "the sqlite store is the file the URI names, query stripped"


@pytest.mark.reliability(
    tried="Credentials inside the MLflow tracking URI",
    sees="the run works; the URI recorded as `***`",
    left="no credential in any file, log, MLflow record or Snakemake metadata",
)
def test_no_credential_in_any_written_file_log_or_record(secret_run):
    import mlflow

    path, console = secret_run
    assert TOKEN not in console and PASSWORD not in console
    checked = []
    for relative, content in written_files(path):
        checked.append(str(relative))
        for secret in (TOKEN, PASSWORD):
            assert secret.encode() not in content, f"{secret} in {relative}"
        if relative.suffix == ".html":  # the report embeds files as base64
            for payload in re.findall(rb";base64,([A-Za-z0-9+/=]+)", content):
                decoded = base64.b64decode(payload)
                assert TOKEN.encode() not in decoded and PASSWORD.encode() not in decoded, f"embedded in {relative}"
    for expected in ("results/provenance.json", "results/provenance.html", "results/report.html",
                     "results/mlflow/run.json", "logs/start_tracking.log", "mlflow.db"):
        assert expected in checked
    assert any(name.startswith(".snakemake/metadata/") for name in checked)
    assert any(name.startswith("mlruns/") for name in checked)
    # What the run recorded instead: the redacted URI, in MLflow's params and in the provenance.
    info = json.loads((path / "results/mlflow/run.json").read_text())
    run_params = mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}/mlflow.db").get_run(info["run_id"]).data.params
    assert run_params["tracking.uri"] == REDACTED_URI
    assert json.loads((path / "results/provenance.json").read_text())["config"]["tracking"]["uri"] == REDACTED_URI


def redaction_module():
    import importlib.util

    source = Path(__file__).resolve().parents[1] / "{{cookiecutter.project_slug}}/src/{{cookiecutter.package_name}}"
    spec = importlib.util.spec_from_file_location("redaction_under_test", source / "redaction.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "uri, redacted",
    [
        ("http://user:token123@mlflow.example.org:5000", "http://***@mlflow.example.org:5000"),
        ("https://token123@mlflow.example.org/path", "https://***@mlflow.example.org/path"),
        ("postgresql://user:pw@db:5432/mlflow?sslmode=require&password=pw", "postgresql://***@db:5432/mlflow?sslmode=require&password=***"),
        ("https://h/x?access_token=a&page=2&api-key=b#f", "https://h/x?access_token=***&page=2&api-key=***#f"),
        ("https://bucket.s3.example/k?X-Amz-Credential=c&X-Amz-Date=d&X-Amz-Signature=s",
         "https://bucket.s3.example/k?X-Amz-Credential=***&X-Amz-Date=d&X-Amz-Signature=***"),
        ("sqlite:///mlflow.db?token=t", "sqlite:///mlflow.db?token=***"),
        ("sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db"),
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
        ("databricks", "databricks"),
        ("http://[::1/x@y", "http:***"),
    ],
)
def test_redact_uri(uri, redacted):
    assert redaction_module().redact_uri(uri) == redacted


def test_redact_config_redacts_every_uri_and_keeps_the_rest():
    config = {"tracking": {"uri": "http://u:p@h"}, "train": {"processes": 2}, "list": ["https://t@h", "plain"]}
    assert redaction_module().redact(config) == {
        "tracking": {"uri": "http://***@h"}, "train": {"processes": 2}, "list": ["https://***@h", "plain"]}
    assert config["tracking"]["uri"] == "http://u:p@h", "the input is not changed"


# --- requests the machine cannot carry ---------------------------------------------------------------------------


def package_of(project: Path) -> str:
    return next(p.name for p in (project / "src").iterdir() if (p / "train.py").is_file())


def dry_run(project: Path, tmp_path: Path, override: dict):
    extra = tmp_path / "override.yaml"
    extra.write_text(yaml.safe_dump(override))
    return run(["snakemake", "-n", "--profile", "profiles/local", "--configfile", "config/config.yaml", str(extra)],
               project, check=False)


CORES = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"train": {"hyperparameters": {"learning_rate": 100}}},
         ["100 is greater than the maximum of 10", "['train']['hyperparameters']['learning_rate']"]),
        ({"train": {"hyperparameters": {"epochs": 0}}},
         ["0 is less than the minimum of 1", "['train']['hyperparameters']['epochs']"]),
        ({"train": {"hyperparameters": {"epochs": 10**6}}},
         ["1000000 is greater than the maximum of 100000", "['train']['hyperparameters']['epochs']"]),
        ({"train": {"hyperparameters": {"batch_size": 2**21}}},
         ["2097152 is greater than the maximum of 1048576", "['train']['hyperparameters']['batch_size']"]),
        ({"train": {"processes": 2, "hyperparameters": {"batch_size": 63}}},
         ["config train.hyperparameters.batch_size 63 is not divisible by the 2 training ranks",
          "multiple of 2 (e.g. 62 or 64)"]),
        ({"train": {"processes": CORES + 1, "hyperparameters": {"batch_size": 64 * (CORES + 1)}}},
         [f"config train.processes {CORES + 1} is more than the {CORES} core(s)", f"give 1 to {CORES}",
          "train.oversubscribe: true"]),
        ({"train": {"oversubscribe": "yes"}}, ["'yes' is not of type 'boolean'", "['train']['oversubscribe']"]),
    ],
    ids=["learning-rate", "no-epochs", "too-many-epochs", "huge-batch", "batch-not-divisible", "ranks-over-cores",
         "oversubscribe-not-boolean"],
)
@pytest.mark.reliability(
    tried="A request the machine cannot carry (schema bounds, batch not divisible, ranks over cores)",
    sees="an error naming the key and what is allowed, before any step",
    left="nothing",
    show_expected=False,
)
def test_refused_before_anything_runs(project, tmp_path, override, expected):
    result = dry_run(project, tmp_path, override)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    for text in expected:
        assert text in output, output[-3000:]
    assert "Job stats" not in output, "nothing may be planned"


def test_oversubscribe_allows_more_ranks_than_cores(project, tmp_path):
    result = dry_run(project, tmp_path, {"train": {"processes": CORES * 4, "oversubscribe": True,
                                                   "hyperparameters": {"batch_size": 64 * CORES * 4}}})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "train_model" in result.stdout


# --- training that diverges --------------------------------------------------------------------------------------


@pytest.mark.reliability(
    tried="Training that diverges (NaN loss)",
    sees="the step fails with a clear message",
    left="no model, nothing registered",
)
def test_diverging_training_fails_clearly_and_saves_no_model(project, tmp_path):
    """Through the project's own launch line (2 local ranks of its backend): a learning rate the schema would
    refuse, given to the train entry point directly, makes the loss NaN; every rank stops, no model is written."""
    launch = project_helper(project, "launch")
    backend = yaml.safe_load((project / "config/config.yaml").read_text())["train"]["backend"]
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiny.npz", features=rng.normal(size=(64, 8)).astype(np.float32),
             labels=rng.integers(0, 3, 64))
    params = {"epochs": 3, "batch_size": 16, "learning_rate": 1e30, "hidden_sizes": [8], "dropout": 0.0, "seed": 0}
    command = launch.training_command(
        launcher="local", backend=backend, processes=2, package=package_of(project),
        args=["--train", str(tmp_path / "tiny.npz"), "--out-dir", str(tmp_path / "out"), "--params",
              json.dumps(params), "--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every", "1"],
    )
    result = run(command, project, check=False, timeout=300, PYTHONPATH=str(project / "src"))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "training diverged: the loss is nan after epoch 1" in output, output[-3000:]
    assert "Lower train.hyperparameters.learning_rate" in output
    assert not (tmp_path / "out").exists(), "a diverged run must not leave a model"
    assert not (tmp_path / "ckpt" / "checkpoint.pt").exists(), "nor a checkpoint to resume the divergence from"


# --- local launches listen on loopback ---------------------------------------------------------------------------


BIND = re.compile(
    r'^(\d+) +bind\(\d+, \{sa_family=AF_INET6?, sin6?_port=htons\((\d+)\).*?'
    r'(?:inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)")'
)
EXECVE = re.compile(r'^(\d+) +execve\("[^"]*", \[(.*?)\], ')


def binds_while_running(command: str, cwd: Path, env: dict, log: Path) -> tuple[int, set[tuple[str, str]]]:
    """Run `command` under strace; every IPv4/IPv6 address a process of it bound a socket to, as (role,
    'address:port'): role `launcher` for the process that exec'd `<package>.local_ranks` (or anything else that is
    not a rank), `rank` for the others that bound a socket (the ranks and their threads).

    strace sees each bind() as it happens, so a socket that listens only while the ranks connect is not missed (a
    sampling of /proc/net/tcp did miss Gloo's, whose listeners close once the ranks are connected)."""
    import subprocess

    tracer = ["strace", "-f", "-qq", "--seccomp-bpf", "-s", "500", "-e", "trace=execve,bind", "-o", str(log)]
    result = subprocess.run([*tracer, "sh", "-c", command], cwd=cwd, env=env, capture_output=True, text=True)
    roles: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    for line in log.read_text().splitlines():
        if match := EXECVE.match(line):
            argv = match.group(2)
            roles[match.group(1)] = "launcher" if ".local_ranks" in argv or ".train" not in argv else "rank"
        elif match := BIND.match(line):
            pid, port, address = match.group(1), match.group(2), match.group(3) or match.group(4)
            seen.add((roles.get(pid, "rank"), f"{address}:{port}"))
    assert roles, f"strace recorded no process: {result.stderr[-2000:]}"
    return result.returncode, seen


LOOPBACK = ("127.", "::1:")


@pytest.fixture(scope="module", params=["horovod", "torch_ddp"])
def local_launch(request, project, tmp_path_factory):
    """A real 2-rank training through the project's local launch line, every bind() of it traced."""
    from conftest import command_env

    if shutil.which("strace") is None:
        if os.geteuid() != 0:
            pytest.fail("these tests trace the launch with strace: apt-get install strace")
        apt_install(["strace"])

    tmp = tmp_path_factory.mktemp(f"listen-{request.param}")
    rng = np.random.default_rng(0)
    np.savez(tmp / "tiny.npz", features=rng.normal(size=(512, 8)).astype(np.float32),
             labels=rng.integers(0, 3, 512))
    params = {"epochs": 20, "batch_size": 16, "learning_rate": 0.01, "hidden_sizes": [8], "dropout": 0.0, "seed": 0}
    command = project_helper(project, "launch").training_command(
        launcher="local", backend=request.param, processes=2, package=package_of(project),
        args=["--train", str(tmp / "tiny.npz"), "--out-dir", str(tmp / "out"), "--params", json.dumps(params)],
    )
    returncode, seen = binds_while_running(command, project, command_env(PYTHONPATH=str(project / "src")),
                                           tmp / "strace.log")
    assert returncode == 0 and (tmp / "out/model.pt").is_file(), command
    return request.param, seen


@pytest.mark.reliability(
    tried="Local training ranks opening sockets",
    sees="every socket the ranks bind is on loopback (Gloo, the torch store in rank 0)",
    left="nothing",
)
def test_local_ranks_listen_on_loopback_only(local_launch):
    backend, seen = local_launch
    ranks = {address for role, address in seen if role == "rank"}
    assert ranks, f"{backend}: no socket of a rank was seen (the probe did not work)"
    assert all(address.startswith(LOOPBACK) for address in ranks), (backend, sorted(ranks))


@pytest.mark.reliability(
    tried="A local multi-rank launch's own rendezvous server (horovodrun and torchrun listen on every interface)",
    sees="the project's launcher (`<package>.local_ranks`) binds 127.0.0.1 only",
    left="nothing",
)
def test_local_launcher_listens_on_loopback_only(local_launch):
    backend, seen = local_launch
    launcher = {address for role, address in seen if role == "launcher"}
    # Horovod's HTTP rendezvous server lives in the launcher; for torch it picks the rendezvous port (rank 0 hosts
    # the store). Either way the launcher binds a socket.
    assert launcher, f"{backend}: no socket of the launcher was seen (the probe did not work)"
    assert all(address.startswith(LOOPBACK) for address in launcher), (backend, sorted(launcher))
