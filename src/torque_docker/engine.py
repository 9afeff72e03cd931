"""A small Docker Engine API client: the calls the hooks make, over the daemon's unix socket.

Why not the Docker SDK: every hook is a fresh interpreter, and importing the SDK (requests,
urllib3, chardet, its credential helpers) cost 0.2-0.45 s of every hook's run here, more
than the floor itself (docs/performance.md). The hooks need a dozen JSON calls, which a
socket and a few lines of HTTP/1.1 make in a few milliseconds. The SDK stays for what
streams or authenticates (pull, load, tag, the admin's update and check): runtime.py
imports it only there.

One connection per call: the hooks call from several threads (containers start and are
removed in parallel), and a unix socket costs nothing to open. Every socket operation is
bounded by the timeout given (``[docker] api_timeout``), as the SDK's were.

Addresses other than ``unix://`` (``tcp://`` with TLS, ``ssh://``) go through the SDK's
own HTTP session (``SDKTransport``), so every endpoint the config accepts still works.

Paths are unversioned: the daemon then speaks its own API version, as the SDK's
``version="auto"`` made it do.
"""
from __future__ import annotations

import base64
import json
import socket
import struct
import urllib.parse
from typing import Any, Dict, List, Mapping, Optional, Tuple

class EngineError(Exception):
    """Docker answered, but not with success: ``status`` and Docker's own ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if message else f"HTTP {status}")
        self.status = status
        self.message = message
        self.explanation = message or f"HTTP {status}"      # as the SDK's errors name it


class Unreachable(EngineError):
    """No answer at all: the socket is missing, refused, timed out or spoke no HTTP."""

    def __init__(self, message: str) -> None:
        super().__init__(0, message)


class Response:
    def __init__(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = {k.lower(): v for k, v in headers.items()}

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            raise Unreachable(f"Docker answered HTTP {self.status} with a body that is not JSON: "
                              f"{self.body[:80]!r}") from None

    def message(self) -> str:
        """Docker's error text ({"message": ...}), else the body's start."""
        try:
            doc = json.loads(self.body)
            if isinstance(doc, dict) and isinstance(doc.get("message"), str):
                return doc["message"]
        except ValueError:
            pass
        return self.body[:300].decode("utf-8", "replace").strip()


def quote(value: str) -> str:
    """A path segment as the SDK quotes it (``/`` and ``:`` kept: image names hold both)."""
    return urllib.parse.quote(value, safe="/:")


class UnixTransport:
    """HTTP/1.1 over the daemon's unix socket, one connection per request ("Connection:
    close"). Written on the socket directly, not with http.client: that module's imports
    (email parsing, ssl) cost every hook ~10 ms, and Docker's answers need only a status
    line, headers, and a body delimited by Content-Length, chunks or the end of the
    connection."""

    MAX_LINE = 1 << 16          # a status or header line longer than this is not Docker's

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout

    def request(self, method: str, path: str, params: Optional[Mapping[str, str]] = None,
                body: Optional[bytes] = None, headers: Optional[Mapping[str, str]] = None,
                limit: Optional[int] = None) -> Response:
        """``limit``: read at most that many bytes of the body (the rest is not wanted)."""
        url = path + ("?" + urllib.parse.urlencode(params) if params else "")
        lines = [f"{method} {url} HTTP/1.1", "Host: docker", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None:
            if not any(k.lower() == "content-type" for k in (headers or {})):
                lines.append("Content-Type: application/json")
            lines.append(f"Content-Length: {len(body)}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            try:
                sock.connect(self.path)
            except OSError as exc:
                raise Unreachable(f"cannot connect to the Docker daemon at unix://{self.path}: "
                                  f"{exc.strerror or exc}") from None
            try:
                sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + (body or b""))
                with sock.makefile("rb") as reader:
                    return self._read(reader, method, limit)
            except socket.timeout:
                raise Unreachable(f"the Docker daemon at unix://{self.path} did not answer {method} {path} "
                                  f"within {self.timeout:.0f} s") from None
            except (OSError, ValueError) as exc:
                raise Unreachable(f"the Docker daemon at unix://{self.path} broke off {method} {path}: "
                                  f"{exc}") from None
        finally:
            sock.close()

    def _line(self, reader) -> bytes:
        line = reader.readline(self.MAX_LINE + 1)
        if len(line) > self.MAX_LINE:
            raise ValueError("an answer line longer than 64 KiB")
        if not line:
            raise ValueError("the connection closed in the middle of the answer")
        return line.rstrip(b"\r\n")

    def _read(self, reader, method: str, limit: Optional[int]) -> Response:
        status_line = self._line(reader)
        words = status_line.split(None, 2)
        if len(words) < 2 or not words[0].startswith(b"HTTP/1.") or not words[1].isdigit():
            raise ValueError(f"not an HTTP answer: {status_line[:60]!r}")
        status = int(words[1])
        headers: Dict[str, str] = {}
        while True:
            line = self._line(reader)
            if not line:
                break
            name, sep, value = line.decode("latin-1").partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        cap = limit if limit is not None else -1
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            data = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            parts: List[bytes] = []
            got = 0
            while cap < 0 or got < cap:
                size = int(self._line(reader).split(b";")[0].strip() or b"x", 16)
                if size == 0:
                    break
                chunk = reader.read(size)
                if len(chunk) < size:
                    raise ValueError("the connection closed in the middle of a chunk")
                parts.append(chunk)
                got += size
                if reader.read(2) != b"\r\n":
                    raise ValueError("a chunk without its line end")
            data = b"".join(parts)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            data = reader.read(length if cap < 0 else min(length, cap))
            if len(data) < (length if cap < 0 else min(length, cap)):
                raise ValueError("the connection closed before the answer's end")
        else:
            data = reader.read() if cap < 0 else reader.read(cap)
        if cap >= 0:
            data = data[:cap]
        return Response(status, data, headers)


class SDKTransport:
    """The same requests through the Docker SDK's session (tcp://, ssh://), made exactly as
    the SDK client the package used before made them. Imported only for such endpoints."""

    def __init__(self, endpoint: str, timeout: float) -> None:
        import docker
        from docker.errors import DockerException
        try:
            self.api = docker.APIClient(base_url=endpoint, version="auto", timeout=int(max(timeout, 1)))
        except DockerException as exc:
            raise Unreachable(f"cannot connect to the Docker daemon at {endpoint}: {exc}") from None

    def request(self, method: str, path: str, params: Optional[Mapping[str, str]] = None,
                body: Optional[bytes] = None, headers: Optional[Mapping[str, str]] = None,
                limit: Optional[int] = None) -> Response:
        try:
            answer = self.api.request(method, self.api._url(path), params=params, data=body,
                                      headers={"Content-Type": "application/json", **(headers or {})}
                                      if body is not None else headers, timeout=self.api.timeout)
        except OSError as exc:        # requests' errors are OSErrors
            raise Unreachable(f"the Docker daemon did not answer {method} {path}: {exc}") from None
        data = answer.content if limit is None else answer.content[:limit]
        return Response(answer.status_code, data, dict(answer.headers))


def transport_for(endpoint: str, timeout: float):
    if endpoint.startswith("unix://"):
        return UnixTransport(endpoint[len("unix://"):], timeout)
    return SDKTransport(endpoint, timeout)


class Engine:
    """The Engine API calls the package makes; errors as EngineError (with Docker's status)."""

    def __init__(self, endpoint: str, timeout: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._transport: Any = None

    @property
    def transport(self):
        if self._transport is None:
            self._transport = transport_for(self.endpoint, self.timeout)
        return self._transport

    def call(self, method: str, path: str, params: Optional[Mapping[str, str]] = None, body: Any = None,
             ok: Tuple[int, ...] = (200,), limit: Optional[int] = None) -> Response:
        data = json.dumps(body).encode() if body is not None else None
        answer = self.transport.request(method, path, params=params, body=data, limit=limit)
        if answer.status not in ok:
            raise EngineError(answer.status, answer.message())
        return answer

    # ---- system ------------------------------------------------------------
    def ping(self) -> bool:
        return self.call("GET", "/_ping").body.strip() == b"OK"

    def version(self) -> Dict[str, Any]:
        return self.call("GET", "/version").json() or {}

    # ---- images ------------------------------------------------------------
    def image_inspect(self, reference: str) -> Dict[str, Any]:
        return self.call("GET", f"/images/{quote(reference)}/json").json() or {}

    # ---- containers --------------------------------------------------------
    def containers(self, filters: Mapping[str, List[str]], all: bool = True) -> List[Dict[str, Any]]:
        params = {"all": "1" if all else "0", "filters": json.dumps(dict(filters))}
        return self.call("GET", "/containers/json", params=params).json() or []

    def inspect(self, ident: str) -> Dict[str, Any]:
        return self.call("GET", f"/containers/{quote(ident)}/json").json() or {}

    def create(self, config: Mapping[str, Any], name: Optional[str] = None) -> str:
        params = {"name": name} if name else None
        return str(self.call("POST", "/containers/create", params=params, body=dict(config), ok=(201,)).json()["Id"])

    def start(self, ident: str) -> None:
        self.call("POST", f"/containers/{quote(ident)}/start", ok=(204, 304))

    def remove(self, ident: str, force: bool = True, volumes: bool = True) -> None:
        self.call("DELETE", f"/containers/{quote(ident)}",
                  params={"force": "1" if force else "0", "v": "1" if volumes else "0"}, ok=(204,))

    def archive_stat(self, ident: str, path: str) -> Tuple[int, Dict[str, Any]]:
        """(HTTP status, the path's stat inside the container) without copying anything."""
        answer = self.transport.request("HEAD", f"/containers/{quote(ident)}/archive", params={"path": path})
        return answer.status, _path_stat(answer.headers)

    def archive(self, ident: str, path: str, limit: int) -> Tuple[Dict[str, Any], bytes]:
        """(stat, tar stream) of ``path``; at most ``limit`` bytes of the stream are read."""
        answer = self.call("GET", f"/containers/{quote(ident)}/archive", params={"path": path}, limit=limit)
        return _path_stat(answer.headers), answer.body

    def logs(self, ident: str, tail: int) -> str:
        """The last lines of stdout and stderr, as text (the stream demultiplexed when the
        container has no terminal)."""
        answer = self.call("GET", f"/containers/{quote(ident)}/logs",
                           params={"stdout": "1", "stderr": "1", "tail": str(tail)}, limit=1 << 20)
        return demultiplex(answer.body).decode("utf-8", "replace")


def _path_stat(headers: Mapping[str, str]) -> Dict[str, Any]:
    raw = headers.get("x-docker-container-path-stat", "")
    try:
        stat = json.loads(base64.b64decode(raw)) if raw else {}
    except ValueError:
        return {}
    return stat if isinstance(stat, dict) else {}


def demultiplex(data: bytes) -> bytes:
    """Docker's log stream for a container without a tty: frames of an 8-byte header
    (stream, 0, 0, 0, big-endian length) and the payload. Anything else is returned as is."""
    if len(data) < 8 or data[0] not in (0, 1, 2) or data[1:4] != b"\0\0\0":
        return data
    out, at = [], 0
    while at + 8 <= len(data):
        (size,) = struct.unpack(">I", data[at + 4:at + 8])
        out.append(data[at + 8:at + 8 + size])
        at += 8 + size
    return b"".join(out)


def parse_size(value: str) -> int:
    """A size as Docker's CLI and SDK take it (``64m``, ``1g``, ``65536``; 1024-based)."""
    text = value.strip().lower()
    if len(text) > 1 and text[-1] == "b" and text[-2].isalpha():
        text = text[:-1]
    units = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)
