"""One root exception, and subclasses that say whose fault a failure is.

Torque gives an exit code a meaning (docs/torque-facts.md): on the mother superior 1 aborts
the job, anything else requeues it, and a sister's non-zero marks the NODE down. So every
failure says two things:

- ``user_error``: the job's own request or image is at fault. The MS aborts the job with
  the reason (exit 1, never requeued); a sister leaves it to the MS (exit 0).
- ``node_fault``: the node itself is broken (Docker not answering, disk full, its config
  or site secret wrong). Only such a failure may make a sister exit non-zero and so take
  the node down.

Everything else (an image's sshd that never answers, a port range another user's
processes hold, Docker refusing one container's settings, a bug) is neither proven: a
sister exits 0 and the MS, which probes every sister container, finds the container
missing and requeues a bounded number of times, then explains. Whatever a user can cause
must therefore never be a ``node_fault``. `cli.py` is the only place that turns these
into exit codes; everything else raises.
"""
from __future__ import annotations

import errno
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
    #: True when the node itself is broken; only then may a sister fail (node DOWN).
    node_fault = False

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

    def __init__(self, message: str, fix: str = "", *, user_error: bool = True, node_fault: bool = False) -> None:
        super().__init__(message, fix)
        self.user_error = user_error
        self.node_fault = node_fault


class ImageBusy(ImageError):
    """Another job or ``torque-docker stage`` has held the node's lock on one image (its pull
    or load) past the bound: nobody's proven fault, so a job is requeued."""

    def __init__(self, key: str, waited: float) -> None:
        super().__init__(f"another job or stager has been fetching {key} for over {waited:.0f} s",
                         "try again later, or ask the admin to stage the image", user_error=False)
        self.key = key
        self.waited = waited


class ConfigError(TorqueDockerError):
    """The node's configuration (config file, secret, templates) is wrong: the admin's to fix.

    Never the user's: a job is not refused as if it had asked for something wrong."""

    node_fault = True


class NodeFault(TorqueDockerError):
    """The node itself failed: Docker not answering, no space left, a lock held by a hung
    process. Raise it only for what no user can bring about (see the module docstring)."""

    node_fault = True


class ContainerFault(TorqueDockerError):
    """A job's container did not come up for a cause the job may have brought as much as
    the node (an sshd that never answers, candidate ports held by someone's processes,
    Docker refusing one container's settings): never takes a node down; the MS requeues
    the job a bounded number of times, then explains."""


#: errno values that say the node is out of something or broken, whoever asked.
NODE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.ENOMEM,
                         errno.EMFILE, errno.ENFILE})


def is_node_fault(error: BaseException) -> bool:
    """May this failure take the node down (a sister's non-zero exit)? Only when the node
    itself is proven broken; anything a job or another user could cause is left to the MS."""
    if isinstance(error, TorqueDockerError):
        return error.node_fault and not error.user_error
    if isinstance(error, OSError):
        return error.errno in NODE_ERRNOS
    return isinstance(error, MemoryError)


class NotOurs(Exception):
    """The job asked for no image: every hook leaves it alone. Not an error."""


def no_sshd(image: str, sshd_path: str) -> ImageError:
    """The one wording for an image without sshd, wherever Docker reports it."""
    return ImageError(f"image {image} has no {sshd_path}",
                      "install openssh-server and openssh-client in the image "
                      "(Debian/Ubuntu: apt-get install openssh-server openssh-client), "
                      "or ask the admin to set [ssh] sshd_path")


def sshd_exited(image: str, sshd_path: str, logs: str) -> ImageError:
    """The image's sshd ended at start, as the job user, before it answered: the image's to fix."""
    return ImageError(f"{sshd_path} in image {image} exited at start (container log: {logs[-300:] or 'empty'})",
                      f"the image's sshd must run as a non-root user with the job's sshd_config; "
                      f"the admin can show why with 'torque-docker check --image {image}'")
