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
    return str(project_dir / "workflow/schemas/config.schema.yaml")


def test_shipped_config_is_valid(config, schema):
    validate(copy.deepcopy(config), schema)


@pytest.mark.parametrize("profile", ["lumi", "slurm", "kubernetes"])
def test_each_cluster_description_is_valid(project_dir, config, schema, profile):
    """What `snakemake --profile profiles/<name>` validates: the config with the profile's cluster description."""
    description = yaml.safe_load((project_dir / "profiles" / profile / "cluster.yaml").read_text())
    merged = {**config, **description}
    validate(merged, schema)
    assert merged["cluster"]["name"] == profile


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


def test_config_gives_training_everything_it_takes(config, schema):
    """The workflow passes the validated `train.hyperparameters` whole: exactly what training takes."""
    from {{ cookiecutter.package_name }} import train

    validate(config, schema)
    params = train.HyperParameters.from_mapping(config["train"]["hyperparameters"])
    assert params.to_dict() == config["train"]["hyperparameters"]


@pytest.mark.parametrize("key", ["dropout", "epochs"])
def test_a_missing_hyperparameter_is_named(config, schema, key):
    del config["train"]["hyperparameters"][key]
    with pytest.raises(WorkflowError, match=f"'{key}' is a required property"):
        validate(config, schema)
