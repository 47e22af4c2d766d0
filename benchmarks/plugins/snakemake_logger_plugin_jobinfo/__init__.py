"""A Snakemake logger plugin that writes each job's own information as Snakemake computed it, one JSON line per
job: {"jobid", "rule", "threads"}. The benchmark's plain run takes each job's threads from here.

Snakemake prints a job's `threads:` only for rules without a `message:` (and only when above 1), and every rule of
the demo project has a message, so the printed dry run does not say how many threads a job gets. A logger plugin
receives the same job record that the printed line is made from. Used by `benchmarks/pipeline.py` as
`snakemake ... --logger jobinfo --logger-jobinfo-path FILE`, with this folder (benchmarks/plugins/) on PYTHONPATH;
Snakemake finds logger plugins by their package name (snakemake_logger_plugin_<name>).
"""

# No `from __future__ import annotations`: Snakemake turns the settings' field types into argparse types.
import json
from dataclasses import dataclass, field
from logging import LogRecord
from typing import Optional

from snakemake_interface_logger_plugins.base import LogHandlerBase
from snakemake_interface_logger_plugins.common import LogEvent
from snakemake_interface_logger_plugins.settings import LogHandlerSettingsBase


@dataclass
class LogHandlerSettings(LogHandlerSettingsBase):
    path: Optional[str] = field(
        default=None,
        metadata={"help": "file to append one JSON line per job to", "required": True},
    )


class LogHandler(LogHandlerBase):
    def emit(self, record: LogRecord) -> None:
        if getattr(record, "event", None) != LogEvent.JOB_INFO:
            return
        line = {"jobid": record.jobid, "rule": record.rule_name, "threads": record.threads}
        with open(self.settings.path, "a") as out:
            out.write(json.dumps(line) + "\n")

    @property
    def writes_to_stream(self) -> bool:
        return False  # Snakemake keeps its own output, which the benchmark reads too

    @property
    def writes_to_file(self) -> bool:
        return False  # not a log file Snakemake should list at the end

    @property
    def has_filter(self) -> bool:
        return True  # every job, whatever the profile's `quiet:` hides from the printed output

    @property
    def has_formatter(self) -> bool:
        return True

    @property
    def needs_rulegraph(self) -> bool:
        return False
