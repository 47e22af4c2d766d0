from pathlib import Path

import pytest
import yaml

PROJECT_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def project_dir() -> Path:
    return PROJECT_DIR


@pytest.fixture(scope="session")
def hyperparameters(project_dir) -> dict:
    """The project's training hyper-parameters (config/config.yaml `train.hyperparameters`), complete."""
    return yaml.safe_load((project_dir / "config/config.yaml").read_text())["train"]["hyperparameters"]
