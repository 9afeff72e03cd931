"""Image pinning at qsub: a tag resolved to the digest it names now.

A job that names ``lab/openfoam:11`` may start hours later, on several nodes, and again
after a requeue; a tag can move in between, so nodes could run different builds. With
``[images] pin = submit|required`` the submit filter resolves the tag once and submits
``lab/openfoam:11@sha256:...`` (Docker ignores the tag when a digest is given, and keeps
it readable in the job's .o line), so every node and every requeue runs that build.

Where the digest comes from, first answer wins, each bounded by TIMEOUT:
1. the local Docker daemon, when the submitting user may talk to it: the image's
   ``RepoDigests`` (it was pulled from the registry), else the daemon's distribution
   endpoint (asks the registry, pulls nothing);
2. the registry itself over its HTTP API (``HEAD /v2/<repo>/manifests/<tag>``, anonymous
   bearer token when asked for), which needs no daemon and no group membership.

Plain HTTP over the standard library: the Docker SDK costs every qsub a noticeable part
of a second to import, and the filter runs without site-packages.
"""
from __future__ import annotations

import json
import re
import socket
import urllib.parse

TIMEOUT = 5.0          # each socket operation
TOTAL_TIMEOUT = 10.0   # a whole registry lookup, name resolution included: qsub waits for it
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
])


class Reference:
    """Docker's reading of a reference: registry, repository, tag, digest."""

    def __init__(self, text: str) -> None:
        rest, _, digest = text.partition("@")
        self.digest = digest
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, self.tag = rest[:colon], rest[colon + 1:]
        else:
            self.tag = "latest"
        first, sep, remainder = rest.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost"):
            self.registry, self.repository = first, remainder
        else:
            self.registry, self.repository = "docker.io", rest
        if self.registry == "docker.io" and "/" not in self.repository:
            self.repository = "library/" + self.repository
        self.text = text

    @property
    def familiar(self) -> str:
        """The name as ``docker images`` shows it (what RepoDigests entries start with)."""
        if self.registry == "docker.io":
            return self.repository[len("library/"):] if self.repository.startswith("library/") else self.repository
        return f"{self.registry}/{self.repository}"


def pinned(reference: str, digest: str) -> str:
    """``name:tag`` with its digest: ``name:tag@sha256:...``."""
    return f"{reference.partition('@')[0]}@{digest}"


# ----------------------------------------------------------------------------- daemon
class _UnixHTTP:
    """One GET over the daemon's unix socket, HTTP/1.0 so the body ends with the connection."""

    def __init__(self, path: str) -> None:
        self.path = path

    def get(self, url: str) -> "tuple[int, bytes]":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        try:
            sock.connect(self.path)
            sock.sendall(f"GET {url} HTTP/1.0\r\nHost: docker\r\n\r\n".encode("ascii"))
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            sock.close()
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        words = head.split(b" ", 2)
        if len(words) < 2:
            raise ValueError(f"not an HTTP answer: {head[:40]!r}")
        return int(words[1]), body


def from_daemon(endpoint: str, reference: str) -> "tuple[str, str]":
    """(digest, '') or ('', why not) from the local daemon."""
    if not endpoint.startswith("unix://"):
        return "", f"the daemon at {endpoint} is not a local socket"
    ref = Reference(reference)
    http = _UnixHTTP(endpoint[len("unix://"):])
    quoted = urllib.parse.quote(reference, safe=":@")
    try:
        status, body = http.get(f"/images/{quoted}/json")
        if status == 200:
            for entry in json.loads(body).get("RepoDigests") or []:
                name, _, digest = entry.partition("@")
                if name == ref.familiar and _DIGEST.fullmatch(digest):
                    return digest, ""
        status, body = http.get(f"/distribution/{quoted}/json")
        if status == 200:
            digest = (json.loads(body).get("Descriptor") or {}).get("digest", "")
            if _DIGEST.fullmatch(digest):
                return digest, ""
        why = json.loads(body).get("message", f"HTTP {status}") if body.startswith(b"{") else f"HTTP {status}"
        return "", f"Docker: {why}"
    except (OSError, ValueError) as exc:
        return "", f"no local Docker ({exc.strerror if isinstance(exc, OSError) and exc.strerror else exc})"


# ----------------------------------------------------------------------------- registry
def registry_url(ref: Reference) -> str:
    host = "registry-1.docker.io" if ref.registry == "docker.io" else ref.registry
    name = host.split(":")[0]
    insecure = name == "localhost" or name.startswith("127.")    # Docker's default insecure registries
    return f"{'http' if insecure else 'https'}://{host}"


def _bearer(challenge: str) -> "dict[str, str]":
    return dict(re.findall(r'(\w+)="([^"]*)"', challenge))


def from_registry(reference: str, total: float = TOTAL_TIMEOUT) -> "tuple[str, str]":
    """(digest, '') or ('', why not) from the registry's HTTP API, anonymously, within ``total``
    seconds: urllib bounds each socket operation but not name resolution or a slow trickle,
    and the user's qsub waits for this. The lookup runs in a daemon thread that is simply
    abandoned past the bound (the filter process exits soon after)."""
    import threading
    outcome: "list[tuple[str, str]]" = []
    worker = threading.Thread(target=lambda: outcome.append(_from_registry(reference)), daemon=True)
    worker.start()
    worker.join(total)
    if not outcome:
        return "", f"{Reference(reference).registry} did not answer within {total:.0f} s"
    return outcome[0]


def _from_registry(reference: str) -> "tuple[str, str]":
    import urllib.request
    from http.client import HTTPException
    from urllib.error import HTTPError, URLError

    ref = Reference(reference)
    url = f"{registry_url(ref)}/v2/{ref.repository}/manifests/{urllib.parse.quote(ref.tag)}"
    headers = {"Accept": ACCEPT}
    for _attempt in range(2):
        request = urllib.request.Request(url, method="HEAD", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
                digest = answer.headers.get("Docker-Content-Digest", "")
                if _DIGEST.fullmatch(digest):
                    return digest, ""
                return "", f"{ref.registry} sent no digest for {reference}"
        except HTTPError as exc:
            challenge = exc.headers.get("WWW-Authenticate", "") if exc.headers else ""
            if exc.code == 401 and challenge.lower().startswith("bearer") and "Authorization" not in headers:
                params = _bearer(challenge)
                realm = params.pop("realm", "")
                if not realm:
                    return "", f"{ref.registry} asks for credentials"
                if urllib.parse.urlsplit(realm).scheme not in ("http", "https"):
                    # urlopen would also follow file: and ftp: names the registry chose
                    return "", f"{ref.registry} names a token service that is not http(s): {realm[:80]}"
                token_url = realm + "?" + urllib.parse.urlencode(params)
                try:
                    with urllib.request.urlopen(token_url, timeout=TIMEOUT) as answer:
                        token = json.loads(answer.read()).get("token", "")
                except (OSError, ValueError) as token_error:
                    return "", f"{ref.registry} gave no token: {token_error}"
                headers["Authorization"] = f"Bearer {token}"
                continue
            return "", f"{ref.registry} answered {exc.code} for {reference}"
        except (URLError, OSError, ValueError, HTTPException) as exc:
            # HTTPException: a server that speaks broken HTTP (BadStatusLine) is unreachable too
            return "", f"cannot reach {ref.registry} ({getattr(exc, 'reason', exc)!s:.200})"
    return "", f"{ref.registry} refused the anonymous token for {reference}"


def resolve(reference: str, endpoint: str) -> "tuple[str, str]":
    """The digest the tag names now: (digest, '') or ('', every reason it could not be found)."""
    reasons = []
    for source in (lambda: from_daemon(endpoint, reference), lambda: from_registry(reference)):
        digest, why = source()
        if digest:
            return digest, ""
        reasons.append(why)
    return "", "; ".join(reasons)
