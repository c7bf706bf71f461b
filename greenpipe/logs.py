"""How greenpipe's log lines look: timestamped text, or one JSON object per line.

Text (the default): ``2026-12-04T16:06:07.123Z INFO greenpipe.worker: ...``,
the time in UTC to the millisecond, so a log appended to by hand (``>>
worker.log``) or read beside another program's still makes a timeline.
JSON (``LOG_FORMAT=json``): ``{"time", "level", "logger", "message", "pid"}``
per line, and ``"exception"`` with the traceback when there is one.
"""

from __future__ import annotations

import json
import logging
import time

TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
HANDLER_NAME = "greenpipe"  # the root handler greenpipe's entry points own


class TextFormatter(logging.Formatter):
    """``TIME LEVEL logger: message``, TIME as ISO-8601 UTC with milliseconds."""

    converter = time.gmtime
    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s.%03dZ"

    def __init__(self) -> None:
        super().__init__(TEXT)


class JsonFormatter(TextFormatter):
    """One JSON object per line; a traceback is a field, never more lines."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure(level: str, log_format: str = "text") -> None:
    """Log to stderr at `level` in `log_format` ("text" or "json").

    Called again (the entry points log before their settings are read), it
    changes the format of the handler it made. A root logger that someone
    else configured (a host app) keeps its handlers; only the level is set.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if h.get_name() == HANDLER_NAME]
    if ours:
        ours[0].setFormatter(formatter(log_format))
    elif not root.handlers:
        handler = logging.StreamHandler()
        handler.set_name(HANDLER_NAME)
        handler.setFormatter(formatter(log_format))
        root.addHandler(handler)
    root.setLevel(getattr(logging, level))
