import copy

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


@pytest.fixture()
def config(project_dir):
    return yaml.safe_load((project_dir / "config/config.yaml").read_text())


@pytest.fixture()
def schema(project_dir):
    return str(project_dir / "config/schemas/config.schema.yaml")


def test_shipped_config_is_valid(config, schema):
    validate(copy.deepcopy(config), schema)


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("train", "backend", "mxnet", "'mxnet' is not one of"),
        ("train", "processes", 0, "0 is less than the minimum of 1"),
        ("prepare", "test_fraction", 1.5, "1.5 is greater than or equal to the maximum of 1"),
    ],
)
def test_bad_values_are_named(config, schema, section, key, value, message):
    config[section][key] = value
    with pytest.raises(WorkflowError, match=message):
        validate(config, schema)


def test_validated_config_gives_training_everything_it_takes(config, schema):
    """The optional training keys get the schema's defaults, so the workflow always passes complete values."""
    from {{ cookiecutter.package_name }} import train

    del config["train"]["hyperparameters"]["dropout"]
    del config["train"]["checkpoint_every"]
    validate(config, schema)
    assert isinstance(config["train"]["checkpoint_every"], int)
    assert train.HyperParameters.from_mapping(config["train"]["hyperparameters"]).dropout == 0.0
