"""Bad answers: one clear line naming the value and what is allowed, and no project left behind."""

from __future__ import annotations

import pytest

from conftest import TEMPLATE_DIR, run

BAD_ANSWERS = [
    ({"project_slug": "My Project"}, "project_slug 'My Project' is not valid"),
    ({"project_slug": "9lives"}, "project_slug '9lives' is not valid"),
    ({"project_slug": "a--b"}, "project_slug 'a--b' is not valid"),
    ({"package_name": "my-package"}, "package_name 'my-package' is not a valid Python package name"),
    ({"package_name": "class"}, "package_name 'class' is not a valid Python package name"),
    ({"package_name": "torch"}, "package_name 'torch' would shadow"),
    ({"package_name": "json"}, "package_name 'json' would shadow"),
    ({"project_name": "   ", "project_slug": "blank"}, "project_name is empty"),
    ({"project_name": 'Say "hi"'}, "project_name 'Say \"hi\"' contains quotes"),
    ({"author_email": "nobody"}, "author_email 'nobody' is not an e-mail address"),
    ({"cluster": "lumi", "slurm_account": "465000001"},
     "slurm_account '465000001' is not a lumi account: it must match project_[0-9]{9} (e.g. 'project_465000001')"),
    ({"cluster": "lumi", "slurm_account": "project_12"}, "slurm_account 'project_12' is not a lumi account"),
    ({"cluster": "slurm", "slurm_account": "my group"}, "slurm_account 'my group' is not a slurm account"),
    ({"cluster": "local", "slurm_account": "project_465000001"}, "only used with cluster lumi or slurm"),
    ({"dvc_remote": "s3", "dvc_remote_url": "https://bucket"}, "dvc_remote_url 'https://bucket' is not an S3 URL"),
    ({"dvc_remote": "s3", "dvc_remote_url": "s3://Bad_Bucket/x"}, "dvc_remote_url 's3://Bad_Bucket/x' is not an S3 URL"),
    ({"dvc_remote": "local", "dvc_remote_url": "relative/dir"}, "dvc_remote_url 'relative/dir' is not an absolute directory"),
]

# Choice answers outside the list are refused by cookiecutter itself, before our hook runs: its
# message is the last line of a traceback we cannot suppress.
BAD_CHOICES = [
    ({"training_backend": "tensorflow"}, "tensorflow provided for choice variable training_backend, but the choices are ['horovod', 'torch_ddp']"),
    ({"cluster": "aws"}, "aws provided for choice variable cluster, but the choices are ['lumi', 'slurm', 'kubernetes', 'local']"),
    ({"dvc_remote": "gcs"}, "gcs provided for choice variable dvc_remote"),
]


def ids(case):
    answers, _ = case
    return "-".join(f"{k}={v}" for k, v in answers.items())


def generate_refused(tmp_path, answers):
    """Run cookiecutter's command line with these answers; it must fail and leave nothing behind."""
    out = tmp_path / "out"
    out.mkdir()
    words = [f"{key}={value}" for key, value in answers.items()]
    result = run(["cookiecutter", "--no-input", "--output-dir", str(out), str(TEMPLATE_DIR), *words], tmp_path, check=False)
    assert result.returncode != 0
    assert list(out.iterdir()) == [], "a partial project was left behind"
    return result


@pytest.mark.parametrize("answers, message", BAD_ANSWERS, ids=[ids(c) for c in BAD_ANSWERS])
def test_bad_answer_is_named_and_nothing_is_written(tmp_path, answers, message):
    result = generate_refused(tmp_path, answers)
    assert message in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("answers, message", BAD_CHOICES, ids=[ids(c) for c in BAD_CHOICES])
def test_bad_choice_is_named_and_nothing_is_written(tmp_path, answers, message):
    result = generate_refused(tmp_path, answers)
    assert message in result.stderr.strip().splitlines()[-1]


def test_pre_gen_hook_reports_every_bad_answer_on_its_own_line(tmp_path):
    result = generate_refused(tmp_path, {"package_name": "1x", "author_email": "x"})
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 2, result.stderr
