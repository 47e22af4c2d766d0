rule evaluate_model:
    input:
        model="results/model/model.pt",
        history="results/model/history.json",
        test=f"{PROCESSED_DIR}/test.npz",
        run=RUN_FILE,
    output:
        metrics="results/metrics.json",
        predictions="results/predictions.csv",
        table=report(
            "results/metrics.html",
            caption="../report/metrics.rst",
            category="Evaluation",
        ),
        confusion=report(
            "results/plots/confusion_matrix.png",
            caption="../report/confusion_matrix.rst",
            category="Evaluation",
        ),
        curves=report(
            "results/plots/training_curves.png",
            caption="../report/training_curves.rst",
            category="Evaluation",
        ),
        record=RECORDS["evaluate_model"],
    log:
        "logs/evaluate_model.log",
    conda:
        "../envs/pipeline.yaml"
    threads: step("evaluate_model").threads
    resources:
        **step("evaluate_model").resources,
    params:
        package=PACKAGE,
    message:
        "Evaluating {input.model} on the held-out split"
    shell:
        "python -m {params.package:q}.evaluate --model {input.model:q} --test {input.test:q} "
        "--metrics {output.metrics:q} --table {output.table:q} "
        "--confusion-plot {output.confusion:q} --history {input.history:q} "
        "--curves-plot {output.curves:q} --predictions {output.predictions:q} "
        "--record {output.record:q} > {log:q} 2>&1 || (python -m {params.package:q}.tracking fail "
        "--run-file {input.run:q} --step evaluate_model >> {log:q} 2>&1; exit 1)"
