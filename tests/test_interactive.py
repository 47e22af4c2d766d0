"""Interactive work in the project's environment and image: `make lab` and `make kernel`.

Checked as a user would, in one generated project: `make lab` serves JupyterLab, from its own environment (made by
the project's `make lab-env` from requirements-lab.lock, kept between sessions: LAB_VENV), on 127.0.0.1 only, its /api
answers, the kernels API wants the token Jupyter printed, the default kernel python3 is the project's Python (it wins
over JupyterLab's own and a user's python3) and `make kernel`'s kernel is listed too, and it stops cleanly; without
the environment `make lab` and `make kernel` say to run `make env`. `make kernel` writes a kernelspec (here into a temporary JUPYTER_DATA_DIR) whose
argv starts ipykernel through the configured runtime: pinned word for word for LUMI's singularity; run for real with
Charliecloud, where papermill executes the project's own notebook on that kernel in the image built by the project's
containers/cpu/build-charliecloud.sh (the image and cache test_container_image.py builds), and the executed notebook
shows the image's Python, package versions and build record.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from smkml import kernel

from conftest import BIN_DIR, SKELETON, command_env, generate, project_config, run


def pins(name: str) -> dict[str, str]:
    return dict(line.strip().split("==") for line in (SKELETON / name).read_text().splitlines()
                if "==" in line and not line.startswith("#"))


LOCK = pins("requirements.lock")
LAB_LOCK = pins("requirements-lab.lock")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("interactive"), cluster="local")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_lab_lock_is_consistent_with_the_lock_and_keeps_jsonschema_extras_out():
    """JupyterLab's lock installs on top of requirements.lock (images): a package both pin has one version. The
    pipeline's lock has none of JupyterLab's packages, above all not the ones that make `import jsonschema` slow."""
    assert {name: version for name, version in LAB_LOCK.items() if name in LOCK and LOCK[name] != version} == {}
    assert "jupyterlab" in LAB_LOCK and "ipykernel" in LAB_LOCK  # complete: .venv-lab is made from it alone
    assert not {"jupyterlab", "jupyter_server", "jupyter-events", "rfc3987-syntax", "lark"} & set(LOCK)


def test_make_lab_serves_on_loopback_and_stops_cleanly(project, lab_venv, tmp_path):
    import psutil

    port = free_port()
    runtime_dir = tmp_path / "runtime"
    log_path = tmp_path / "lab.log"
    # The user's kernels: make kernel's (runtime none here) and a python3 of the user's own, which make lab's wins over.
    data_dir = tmp_path / "jupyter"
    run(["make", "kernel"], project, JUPYTER_DATA_DIR=str(data_dir))
    decoy = data_dir / "kernels/python3/kernel.json"
    decoy.parent.mkdir(parents=True)
    decoy.write_text(json.dumps({"argv": ["/nonexistent/python", "-f", "{connection_file}"], "display_name": "decoy",
                                 "language": "python"}))
    with log_path.open("w") as log:
        lab = subprocess.Popen(["make", "lab", f"LAB_PORT={port}", f"LAB_VENV={lab_venv}"], cwd=project, stdout=log,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                               env=command_env(JUPYTER_RUNTIME_DIR=str(runtime_dir), JUPYTER_DATA_DIR=str(data_dir)))
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and lab.poll() is None:
            try:
                status, body = get(f"http://127.0.0.1:{port}/api")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        else:
            pytest.fail(f"make lab did not answer on port {port}:\n{log_path.read_text()[-3000:]}")
        assert (status, json.loads(body)) == (200, {"version": LAB_LOCK["jupyter_server"]})
        output = log_path.read_text()
        assert f"JupyterLab on http://127.0.0.1:{port}/lab" in output
        token = output.split(f"http://127.0.0.1:{port}/lab?token=", 1)[1].split()[0]
        assert get(f"http://127.0.0.1:{port}/api/kernelspecs")[0] == 403  # nothing without the token
        status, body = get(f"http://127.0.0.1:{port}/api/kernelspecs?token={token}")
        specs = json.loads(body)
        assert specs["default"] == "python3"
        # python3 is the project's Python (the one `make run` uses; here the test environment's, as for make run),
        # not JupyterLab's environment's own python3 nor the user's.
        argv = specs["kernelspecs"]["python3"]["spec"]["argv"]  # ipykernel's own (-Xfrozen_modules=off: debugger)
        assert (argv[0], argv[-4:]) == (str(BIN_DIR / "python"), ["-m", "ipykernel_launcher", "-f", "{connection_file}"])
        assert specs["kernelspecs"]["python3"]["spec"]["display_name"] == "digits-classifier (project environment)"
        assert "digits-classifier" in specs["kernelspecs"]  # make kernel's
        assert (project / "build/jupyter/share/jupyter/kernels/python3/kernel.json").is_file()
        listening = {c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port}
        assert listening == {"127.0.0.1"}
        assert list(runtime_dir.glob("jpserver-*.json"))
    finally:
        # A clean stop: SIGTERM, as `kill` or a session manager sends it (in a terminal, Ctrl-C twice does the same;
        # once, Jupyter asks first). The whole process group, as the terminal would.
        os.killpg(lab.pid, signal.SIGTERM)
        lab.wait(timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and group_alive(lab.pid):
            time.sleep(0.2)
        if group_alive(lab.pid):
            os.killpg(lab.pid, signal.SIGKILL)
            pytest.fail(f"JupyterLab did not stop on SIGTERM:\n{log_path.read_text()[-3000:]}")
    output = log_path.read_text()
    assert "received signal 15, stopping" in output and "Shutting down" in output, output[-3000:]
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    assert not list(runtime_dir.glob("jpserver-*.json"))  # a clean stop removes the server's record


@pytest.mark.parametrize("target", ["lab", "kernel"])
def test_lab_and_kernel_without_env_say_make_env(project, target):
    from test_first_hour import bare_env

    assert not (project / ".venv").exists()
    result = subprocess.run(["make", target], cwd=project, env=bare_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "run `make env` first" in result.stderr, result.stderr


def lumi_spec(tmp_path, **container) -> dict:
    (tmp_path / "containers/images").mkdir(parents=True, exist_ok=True)
    (tmp_path / "containers/images/demo.sif").write_bytes(b"")
    section = {"runtime": "singularity", "image": "containers/images/demo.sif", "gpu": "auto", "binds": [], **container}
    return kernel.kernel_spec(project_config("lumi", container=section), tmp_path, "demo")


def test_lumi_kernel_runs_ipykernel_through_singularity_with_lumi_binds(tmp_path):
    spec = lumi_spec(tmp_path, binds=["/appl/local/laifs"])
    assert spec["display_name"] == "demo (singularity: containers/images/demo.sif)"
    assert spec["argv"][:6] == ["/bin/sh", "-c", kernel.LAUNCH, "smkml-kernel", "{connection_file}", str(tmp_path)]
    # resources.notebook requests no GPU: no --rocm; LUMI's binds, the config's, then Jupyter's connection folder.
    words = ("singularity exec -B /var/spool/slurmd -B /opt/cray -B /usr/lib64/libcxi.so.1 -B /pfs -B /scratch "
             "-B /projappl -B /flash -B /appl/local/laifs -B @connection_dir@:/mnt "
             f"{tmp_path}/containers/images/demo.sif python -m ipykernel_launcher -f /mnt/@connection_name@")
    assert spec["argv"][6:] == words.split()
    # What the kernel then runs, with Jupyter's connection file in place (LAUNCH run by a real sh, printf for the
    # runtime): the folder bound at /mnt, the file named inside.
    connection = "/run/user/1000/jupyter/runtime/kernel-1a2b.json"
    argv = [word.replace("{connection_file}", connection) for word in spec["argv"]]
    shown = subprocess.run([*argv[:6], "printf", "%s\\n", *argv[6:]], capture_output=True, text=True, check=True)
    assert shown.stdout.split("\n")[-6:-1] == ["python", "-m", "ipykernel_launcher", "-f", "/mnt/kernel-1a2b.json"]
    assert "/run/user/1000/jupyter/runtime:/mnt" in shown.stdout.split("\n")


def test_notebook_gpus_give_lumis_rocm_flag(tmp_path):
    config = project_config("lumi", container={"runtime": "singularity", "image": "containers/images/demo.sif",
                                               "gpu": "auto", "binds": []})
    config["resources"]["notebook"] = {"gpus": 1}
    (tmp_path / "containers/images").mkdir(parents=True)
    (tmp_path / "containers/images/demo.sif").write_bytes(b"")
    assert kernel.kernel_spec(config, tmp_path, "demo")["argv"][6:9] == ["singularity", "exec", "--rocm"]


def test_a_bind_onto_the_connection_mount_is_refused(tmp_path):
    with pytest.raises(kernel.KernelError) as error:
        lumi_spec(tmp_path, binds=["/scratch/project_465000001/data:/mnt"])
    assert "container bind '/scratch/project_465000001/data:/mnt' lands on /mnt" in str(error.value)
    assert "allowed: any other destination, e.g. /scratch/project_465000001/data:/data" in str(error.value)


def output_text(output: dict) -> str:
    """A notebook output's text (a stream's, or an execute_result's text/plain); nbformat stores a list or a str."""
    value = output.get("text") or output.get("data", {}).get("text/plain", "")
    return "".join(value) if isinstance(value, list) else value


@pytest.mark.container
def test_kernel_runs_the_project_notebook_inside_the_image(project, tmp_path):
    from test_container_image import build_image, ensure_charliecloud

    ensure_charliecloud()
    image, _ = build_image(project)  # cached: the image test_container_image.py builds from the same lock
    config_path = project / "config/config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["container"].update(runtime="charliecloud", image="containers/images/cpu")
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    data_dir = tmp_path / "jupyter"
    installed = run(["make", "kernel"], project, JUPYTER_DATA_DIR=str(data_dir)).stdout
    spec_path = data_dir / "kernels/digits-classifier/kernel.json"
    assert f"installed kernel 'digits-classifier' (digits-classifier (charliecloud: containers/images/cpu)): " \
           f"{spec_path}" in installed
    argv = json.loads(spec_path.read_text())["argv"]
    assert argv[6:11] == ["ch-run", "--set-env", "-b", str(project), "-b"]
    run(["dvc", "pull", "data/raw/digits.csv.dvc"], project)
    executed = tmp_path / "prepare.ipynb"
    user = os.environ.get("USER", "root")  # ch-run refuses to start without it; every login shell has it
    run(["papermill", "--no-progress-bar", "-k", "digits-classifier", "notebooks/prepare.ipynb", str(executed),
         "-r", "processed_dir", str(tmp_path / "processed"), "-r", "samples_plot", str(tmp_path / "samples.png")],
        project, JUPYTER_DATA_DIR=str(data_dir), USER=user, timeout=300)
    cells = json.loads(executed.read_text())["cells"]
    text = "".join(output_text(output) for cell in cells if cell["cell_type"] == "code" for output in cell["outputs"])
    assert "'n_train': 1437" in text  # the notebook did its work, on the project's data
    assert (tmp_path / "processed/train.npz").is_file()
    # ... inside the image: its Python, the lock's packages installed there, the project's wheel, its build record.
    assert "python: /opt/venv/bin/python 3.11." in text, text[-3000:]
    for name in ("numpy", "torch", "mlflow"):
        assert f"{name}: {LOCK[name]}" in text
    assert "digits_classifier: /opt/venv/lib/python3.11/site-packages/digits_classifier" in text
    assert not Path("/etc/smkml-image.json").exists()
    record = json.loads(text.split("container image: ", 1)[1].split("\n}", 1)[0] + "\n}")
    assert record == json.loads((image / "etc/smkml-image.json").read_text())
    assert record["project_dir"] == str(project)
    # JupyterLab is in the image at the locked version: the notebook pod's command (deploy/notebook/pod.yaml) finds it.
    lab = run(["ch-run", str(image), "--", "/opt/venv/bin/python", "-m", "jupyter", "lab", "--version"], project,
              USER=user)
    assert lab.stdout.strip() == LAB_LOCK["jupyterlab"]
