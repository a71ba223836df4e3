"""What a `relgraph` command shows in the terminal while Dagster runs its assets.

Dagster's own console logger prints every engine event (about 120 DEBUG lines for
`make run`). In the terminal a person wants one line when a stage starts and one when it
ends, the lines the stages write themselves (rows extracted, examples per split, cache
hit or miss, one line per epoch with the validation metric, the champion's decision) and
errors. `progress_logger` is that logger: the run's engine events still go to the run's
event log (the Dagster UI shows all of them), and `--verbose` gives back Dagster's own
console logger at DEBUG.
"""

from __future__ import annotations

import logging
import sys
import time

import dagster as dg
from dagster._core.log_manager import LOG_RECORD_METADATA_ATTR

# Engine events shown as a stage's start, end and failure; every other event stays in the
# run's event log.
_STARTED, _ENDED, _FAILED = "STEP_START", "STEP_SUCCESS", "STEP_FAILURE"


class _StageHandler(logging.Handler):
    """Formats a run's log records as a person reads them: `name ...` / `name done (s)`,
    the stages' own messages indented beneath, warnings and errors marked."""

    def __init__(self, stream, asset_names: dict[str, str]):
        # DEBUG: the engine's step events come at that level; the stages' own debug lines
        # are left out below.
        super().__init__(level=logging.DEBUG)
        self.stream, self.names, self.started = stream, asset_names, {}

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, LOG_RECORD_METADATA_ATTR, None) or {}
        step = meta.get("step_key") or ""
        name = self.names.get(step, step.replace("__", "/"))
        event = meta.get("dagster_event")
        kind = event.event_type_value if event is not None else None
        if kind == _STARTED:
            self.started[step] = time.monotonic()
            line = f"{name} ..."
        elif kind == _ENDED:
            line = f"{name} done ({time.monotonic() - self.started.get(step, time.monotonic()):.1f} s)"
        elif kind == _FAILED:
            line = f"{name} FAILED"
        elif kind is None and record.levelno >= logging.INFO:
            message = meta.get("orig_message", record.getMessage())
            mark = {logging.WARNING: "warning: ", logging.ERROR: "error: "}.get(record.levelno, "")
            line = "\n".join(f"  {mark}{part}" for part in str(message).strip("\n").split("\n"))
        else:
            return
        self.stream.write(line + "\n")
        self.stream.flush()


def progress_logger(asset_names: dict[str, str]) -> dg.LoggerDefinition:
    """A Dagster logger for the terminal; `asset_names` maps step keys (op names) to the
    names the user knows (`ecommerce/customer_churn/sage`)."""

    @dg.logger(description="relgraph's terminal: one line per stage and the stages' messages")
    def _progress(init_context: dg.InitLoggerContext) -> logging.Logger:
        log = logging.Logger("relgraph.progress", level=logging.DEBUG)
        log.addHandler(_StageHandler(sys.stdout, asset_names))
        return log

    return _progress
