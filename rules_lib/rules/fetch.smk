import os

# `dvc pull`, after checking that the remote is usable (credentials, endpoint, bucket, directory): a missing
# AWS_ACCESS_KEY_ID stops here with a message naming what to set, not deep inside DVC. Data already in the
# local DVC cache is checked out without the remote. Then the data is checked against the md5 its .dvc file
# records (<package>.integrity): DVC checks out a corrupted cache object without a word.
# Relative to the working directory, where jobs run (also in a container or a pod with the sources deployed).
DVC_FETCH = os.path.relpath(LIB_DIR / "smkml" / "dvc_remote.py")


# The DVC remote is reached from where Snakemake runs (a login node): compute nodes often have no internet, and a
# download is not worth a batch job. On Kubernetes the step already runs there (its input is local()), and its
# output is a local copy of the file in the bucket (.snakemake/storage/...), which Snakemake then uploads: DVC
# checks the data out at the path its .dvc file names, and the step copies it there.
localrules:
    fetch_data,


rule fetch_data:
    input:
        dvcfile=local(project_file(f"{RAW_DATA}.dvc")),
    output:
        RAW_DATA,
    log:
        "logs/fetch_data.log",
    conda:
        "../envs/pipeline.yaml"
    threads: step("fetch_data").threads
    resources:
        **step("fetch_data").resources,
    params:
        fetch=DVC_FETCH,
        package=PACKAGE,
        # Where `dvc pull` checks the data out: next to its .dvc file (the output itself, except in pods).
        pulled=lambda wildcards, input: input.dvcfile.removesuffix(".dvc"),
    message:
        "Pulling {output} from the DVC remote"
    shell:
        "{{ python {params.fetch:q} pull {input.dvcfile:q} && python -m {params.package:q}.integrity {input.dvcfile:q} "
        "&& {{ [ {params.pulled:q} -ef {output:q} ] || cp {params.pulled:q} {output:q}; }}; }} "
        "> {log:q} 2>&1 || {{ cat {log:q} >&2; exit 1; }}"
