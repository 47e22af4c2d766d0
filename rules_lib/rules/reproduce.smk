# Reviewer rerun: the rerun's metrics against the committed reference, within the config's tolerances.
# Not part of `all` (a new project has no reference yet): `make reproduce` asks for it after a forced rerun.
localrules:
    compare_to_reference,


rule compare_to_reference:
    input:
        metrics="results/metrics.json",
        reference=local(config["reproduce"]["reference"]),
    output:
        json="results/reproduce/comparison.json",
        html=report(
            "results/reproduce/comparison.html",
            caption="../report/comparison.rst",
            category="Reproduction",
        ),
    log:
        "logs/compare_to_reference.log",
    conda:
        "../envs/pipeline.yaml"
    resources:
        **step("compare_to_reference").resources,
    params:
        tolerances=json.dumps(config["reproduce"]["tolerances"]),
        package=PACKAGE,
    message:
        "Comparing {input.metrics} with the reference {input.reference}"
    shell:
        "python -m {params.package:q}.reproduce compare --reference {input.reference:q} --metrics {input.metrics:q} "
        "--tolerances {params.tolerances:q} --out-json {output.json:q} --out-html {output.html:q} "
        "> {log:q} 2>&1"
