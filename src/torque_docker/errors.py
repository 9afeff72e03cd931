"""One root exception, and subclasses that say whose fault a failure is.

Torque gives an exit code a meaning (docs/torque-facts.md): on the mother superior 1 aborts
the job, anything else requeues it, and a sister's non-zero marks the NODE down. So the
first thing any failure must say is whether the user can fix it (abort, never requeue),
or the node is at fault (requeue, bounded). `cli.py` is the only place that turns these
into exit codes; everything else raises.
"""
from __future__ import annotations

import unicodedata


def printable(text: str) -> str:
    """One safe line: control characters, line separators and undecodable bytes escaped.

    Job-supplied text (the -l other request, paths) ends up in messages users and admins
    read; a newline must not forge a log line or split a message."""
    out = []
    for ch in str(text):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:                 # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp"):
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


class TorqueDockerError(Exception):
    """Root of every error the package raises on purpose.

    ``message`` says what is wrong, ``fix`` what to do about it; both reach the user
    (or admin) as one ``torque-docker: ...`` line, so keep them short and concrete.
    """

    #: True when the job's own request is at fault: abort, never requeue.
    user_error = False

    def __init__(self, message: str, fix: str = "") -> None:
        message, fix = printable(message), printable(fix)
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message}; {self.fix}" if self.fix else self.message


class RequestError(TorqueDockerError):
    """The job's ``-l other=...`` request is malformed or names something unknown."""

    user_error = True


class PolicyError(TorqueDockerError):
    """The request is well-formed but the site policy does not allow it."""

    user_error = True


class ImageError(TorqueDockerError):
    """The image cannot be used (missing, unpullable, no sshd); user_error decides who fixes it."""

    def __init__(self, message: str, fix: str = "", *, user_error: bool = True) -> None:
        super().__init__(message, fix)
        self.user_error = user_error


class ConfigError(TorqueDockerError):
    """The node's configuration (config file, secret, templates) is wrong: the admin's to fix."""


class NodeFault(TorqueDockerError):
    """Something on the node failed (Docker down, ports exhausted, sshd not answering)."""


class NotOurs(Exception):
    """The job asked for no image: every hook leaves it alone. Not an error."""


def no_sshd(image: str, sshd_path: str) -> ImageError:
    """The one wording for an image without sshd, wherever Docker reports it."""
    return ImageError(f"image {image} has no {sshd_path}",
                      "install openssh-server and openssh-client in the image "
                      "(Debian/Ubuntu: apt-get install openssh-server openssh-client), "
                      "or ask the admin to set [ssh] sshd_path")
