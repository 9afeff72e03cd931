"""The admin log: every decision, with the job id, on every node.

Sister scripts' output goes nowhere a person looks (pbs_mom discards it), so the admin
log is the only record of what happened there. Destination per config: syslog, a file,
or none.
"""
from __future__ import annotations

import os
import socket
import syslog
import time

from .errors import printable


class Log:
    def __init__(self, destination: str = "syslog", node: str = "") -> None:
        self.destination = destination
        self.node = node or socket.gethostname()
        if destination == "syslog":
            syslog.openlog("torque-docker", syslog.LOG_PID, syslog.LOG_DAEMON)

    def _emit(self, level: str, priority: int, jobid: str, message: str) -> None:
        line = printable(f"{level} job={jobid or '-'} node={self.node} {message}")
        if self.destination == "syslog":
            try:
                syslog.syslog(priority, line)
            except (OSError, ValueError):
                pass
        elif self.destination.startswith("file:"):
            try:
                fd = os.open(self.destination[5:], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                with os.fdopen(fd, "a") as handle:
                    handle.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")
            except (OSError, ValueError):
                pass   # logging must never break a job

    def info(self, jobid: str, message: str) -> None:
        self._emit("info", syslog.LOG_INFO, jobid, message)

    def warning(self, jobid: str, message: str) -> None:
        self._emit("warning", syslog.LOG_WARNING, jobid, message)

    def error(self, jobid: str, message: str) -> None:
        self._emit("error", syslog.LOG_ERR, jobid, message)


NULL = Log("none")
