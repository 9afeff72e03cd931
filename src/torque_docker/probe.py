"""Finding and waiting for a container's sshd by its banner.

The banner is the first thing sshd sends, and sshd's command line appends a per-container token to
it (``VersionAddendum``), so a connect + one read proves "this job's sshd, up and
accepting" without any key exchange. The mother superior uses the same probe to learn
which candidate port each sister's container took.
"""
from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Optional, Sequence, Tuple

from .errors import ContainerFault


class SshdExited(ContainerFault):
    """The container (its sshd) ended before it answered."""


class SshdSilent(ContainerFault):
    """The container runs, but its sshd did not answer in time."""


def read_banner(address: str, port: int, timeout: float = 1.0) -> Optional[str]:
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while b"\n" not in data and len(data) < 512:
                chunk = sock.recv(512)
                if not chunk:
                    break
                data += chunk
            return data.decode("ascii", "replace").strip()
    except OSError:
        return None


def container_token(job_token: str, node_index: int, slot: int) -> str:
    """Unique per container: candidate ports of two containers may coincide, so the job's
    token alone could make the MS take one container's sshd for another's."""
    return f"{job_token}.n{node_index}s{slot}"


def banner_matches(banner: Optional[str], token: str) -> bool:
    """The banner ends with ``TOKEN`` or ``TOKEN-IMAGEID`` (our VersionAddendum)."""
    if not banner or not banner.startswith("SSH-2.0-"):
        return False
    last = banner.split()[-1]
    return last == token or last.startswith(token + "-")


def banner_image(banner: Optional[str]) -> str:
    """The image id a job's sshd announces after its token ('' when none)."""
    last = (banner or "").split()[-1:] or [""]
    return last[0].split("-", 1)[1] if "-" in last[0] else ""


def wait_for_sshd(address: str, port: int, token: str, deadline: float,
                  still_running: Callable[[], bool], interval: float = 0.02) -> None:
    """Return once the job's sshd answers on address:port; raise when the container dies or time is up."""
    while True:
        if banner_matches(read_banner(address, port, timeout=1.0), token):
            return
        if not still_running():
            raise SshdExited(f"sshd in the container exited before answering on {address}:{port}")
        if time.monotonic() >= deadline:
            raise SshdSilent(f"sshd did not answer on {address}:{port} in time",
                             "the node may be overloaded, or the image's sshd hangs; raise [ssh] ready_timeout")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.25)


def find_ports(targets: Dict[str, Tuple[str, Sequence[int], str]],
               deadline: float) -> Dict[str, Tuple[int, str]]:
    """For each alias -> (address, candidates, container token): (the candidate whose banner
    carries that token, the image id it announces).

    Sisters' containers were up before the MS prologue started, so one pass normally
    finds them all; retries cover a slow node until the deadline. Returns only the found.
    """
    found: Dict[str, Tuple[int, str]] = {}

    def probe(item: Tuple[str, str, int, str]) -> Tuple[str, int, Optional[str]]:
        alias, address, port, token = item
        banner = read_banner(address, port, timeout=1.0)
        return alias, port, banner if banner_matches(banner, token) else None

    with ThreadPoolExecutor(max_workers=32) as pool:
        while True:
            work = [(alias, address, port, token) for alias, (address, ports, token) in targets.items()
                    if alias not in found for port in ports]
            for alias, port, banner in pool.map(probe, work):
                if banner:
                    found[alias] = (port, banner_image(banner))
            if len(found) == len(targets) or time.monotonic() >= deadline:
                return found
            time.sleep(0.2)
