from pathlib import Path

import pytest
import yaml

PROJECT_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def project_dir() -> Path:
    return PROJECT_DIR


@pytest.fixture(scope="session")
def hyperparameters(project_dir) -> dict:
    """The training hyper-parameters the workflow passes: config/config.yaml `train.hyperparameters`, validated
    against the schema, so complete."""
    from snakemake.utils import validate

    config = yaml.safe_load((project_dir / "config/config.yaml").read_text())
    validate(config, str(project_dir / "workflow/schemas/config.schema.yaml"))
    return config["train"]["hyperparameters"]
