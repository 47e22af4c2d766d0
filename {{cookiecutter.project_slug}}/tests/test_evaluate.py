import numpy as np

from {{ cookiecutter.package_name }} import evaluate


def test_metrics_of_known_predictions():
    labels = np.array([0, 0, 1, 1])
    metrics = evaluate.compute_metrics(labels, np.array([0, 1, 1, 1]))
    assert metrics["accuracy"] == 0.75 and metrics["n_test"] == 4
    assert metrics["per_class"]["0"]["recall"] == 0.5
    assert metrics["per_class"]["1"]["precision"] == round(2 / 3, 6)
    table = evaluate.metrics_table(metrics)
    assert "<td>0.7500</td>" in table


def test_confusion_plot_is_a_png(tmp_path):
    path = tmp_path / "cm.png"
    evaluate.plot_confusion(np.array([0, 1, 1]), np.array([0, 1, 0]), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
