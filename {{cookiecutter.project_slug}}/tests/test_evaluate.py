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


def test_training_curves_are_a_png(tmp_path):
    path = tmp_path / "curves.png"
    history = [{"epoch": e, "loss": 1.0 / e, "accuracy": 1 - 0.5 / e} for e in range(1, 6)]
    evaluate.plot_curves(history, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_notebook_as_html_page(tmp_path):
    import nbformat

    from {{ cookiecutter.package_name }} import notebook_html

    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Title\n\nSome *text*"),
        nbformat.v4.new_code_cell("x = 1\nx", execution_count=1, outputs=[
            nbformat.v4.new_output("execute_result", {"text/plain": "1 < 2"}, execution_count=1),
            nbformat.v4.new_output("error", ename="ValueError", evalue="bad", traceback=["\x1b[31mValueError\x1b[0m: bad"]),
        ]),
    ])
    source, page = tmp_path / "n.ipynb", tmp_path / "out" / "n.html"
    nbformat.write(notebook, source)
    notebook_html.main([str(source), str(page)])
    text = page.read_text()
    assert "<h1>Title</h1>" in text and "<em>text</em>" in text and "In [1]:" in text
    assert "1 &lt; 2" in text and "ValueError: bad" in text and "\x1b" not in text
