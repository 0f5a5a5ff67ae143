"""Daemon logging: readable lines on stderr, JSON lines in a rotating file under the log dir.

Called once by ``edgeinfer serve``; library code only uses ``logging.getLogger``.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from datetime import UTC, datetime
from pathlib import Path

_FIELDS = ("model", "request_id", "code")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any known extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: getattr(record, k) for k in _FIELDS if hasattr(record, k)})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup(log_dir: Path, *, verbose: bool, max_bytes: int = 10 << 20, backups: int = 5) -> Path:
    """Configure the root logger; returns the JSON log file's path."""
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = log_dir / "edgeinfer.log"
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    rotating = logging.handlers.RotatingFileHandler(
        path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
    )
    rotating.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [console, rotating]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return path
