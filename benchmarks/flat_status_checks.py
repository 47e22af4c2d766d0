"""A what-if for benchmarks/slurm_pipeline.py: Snakemake with the Slurm plugin's status checks at a fixed interval.

    python benchmarks/flat_status_checks.py SECONDS [snakemake arguments ...]

snakemake-executor-plugin-slurm (2.8.0) checks its jobs first after `slurm-init-seconds-before-status-checks`, then
10 s later than the time before each time a check finds none finished (up to 180 s), back to the first wait when
one has. Only the first wait is a setting. This runs Snakemake's own command line with every wait set to SECONDS
instead, to measure what the growing waits cost a pipeline of short jobs (`slurm_pipeline.py --what-if-status S`).

It changes the plugin in this process only, for a measurement: it is not how the generated project runs, and the
benchmark's figures for the profile as typed never use it. (A fixed short interval means one `sacct` call every
SECONDS while jobs run, which busy shared clusters ask users not to do.)
"""

from __future__ import annotations

import sys

USAGE = "python benchmarks/flat_status_checks.py SECONDS [snakemake arguments ...]"
MAX_WAIT_S = 180  # the plugin's own cap on its wait between status checks (max_sleep_time)


def flat_status_checks(seconds: float) -> None:
    """Make every wait between two status checks of the Slurm executor `seconds` long."""
    import snakemake_executor_plugin_slurm as slurm

    original = slurm.Executor.check_active_jobs

    async def check_active_jobs(self, active_jobs):
        async for job in original(self, active_jobs):
            yield job
        self.next_seconds_between_status_checks = seconds

    slurm.Executor.check_active_jobs = check_active_jobs


def main(argv: list[str]) -> int:
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        seconds = float(argv[0])
    except ValueError:
        print(f"flat_status_checks.py: SECONDS must be a number, not {argv[0]!r}", file=sys.stderr)
        return 2
    if not 0 < seconds <= MAX_WAIT_S:
        print(f"flat_status_checks.py: SECONDS must be more than 0 and at most {MAX_WAIT_S}, not {argv[0]}",
              file=sys.stderr)
        return 2
    flat_status_checks(seconds)
    from snakemake.cli import main as snakemake_main

    sys.argv = ["snakemake", *argv[1:]]
    return snakemake_main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
