"""Finding and waiting for a container's sshd by its banner, and proving it is the job's.

The banner is the first thing sshd sends, and sshd's command line appends a per-container token to
it (``VersionAddendum``), so a connect + one read proves "this job's sshd, up and
accepting" without any key exchange. The mother superior uses the same probe to learn
which candidate port each sister's container took.

A banner proves nothing to the mother superior, though: anyone who can connect to the
job's sshd reads its token, and another user on a sister node can answer on the job's
other candidate ports with the same line. So the MS takes the first candidate, in the
order the sister tried them, whose banner carries the token AND whose server proves it
holds the job's host key: one SSH key exchange (curve25519-sha256, RFC 8731) whose
exchange hash the server signs with its Ed25519 host key (RFC 4253 section 8). No
authentication follows; the connection is dropped after the signature is checked. A
fake that replays the public host key cannot sign, and a relay to the real sshd leads
to the real container.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import time
from typing import TYPE_CHECKING, Callable, Dict, Generator, List, Optional, Sequence, Tuple

from .errors import ContainerFault

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey


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
                  still_running: Callable[[], bool], interval: float = 0.005) -> None:
    """Return once the job's sshd answers on address:port; raise when the container dies or time is up.

    Polled as the start-up benchmark's floor polls (5 ms, growing to 50 ms): an sshd is
    usually up tens of ms after its container starts, and every poll that misses it by a
    long wait adds that wait to the job's start. Docker is asked whether the container
    still runs at most every 0.1 s (16 containers polling must not flood the daemon)."""
    asked = 0.0
    while True:
        if banner_matches(read_banner(address, port, timeout=1.0), token):
            return
        if time.monotonic() - asked >= 0.1 or time.monotonic() >= deadline:
            if not still_running():
                raise SshdExited(f"sshd in the container exited before answering on {address}:{port}")
            asked = time.monotonic()
        if time.monotonic() >= deadline:
            raise SshdSilent(f"sshd did not answer on {address}:{port} in time",
                             "the node may be overloaded, or the image's sshd hangs; raise [ssh] ready_timeout")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.05)


# --------------------------------------------------------------------------- host key proof
KEX_ALGORITHMS = ("curve25519-sha256", "curve25519-sha256@libssh.org")
HOST_KEY_ALGORITHM = "ssh-ed25519"
# Offered only so that negotiation can succeed; nothing is ever encrypted with them.
CIPHERS = ("aes128-ctr", "aes256-ctr", "chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com")
MACS = ("hmac-sha2-256", "hmac-sha2-512", "hmac-sha2-256-etm@openssh.com", "umac-128-etm@openssh.com")
CLIENT_VERSION = b"SSH-2.0-torque-docker_probe"
MSG_DISCONNECT, MSG_IGNORE, MSG_DEBUG, MSG_KEXINIT, MSG_KEX_ECDH_INIT, MSG_KEX_ECDH_REPLY = 1, 2, 4, 20, 30, 31
MAX_PACKET = 35000          # RFC 4253 6.1: what every implementation must accept


def ssh_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def ssh_mpint(data: bytes) -> bytes:
    """An unsigned big-endian number as an SSH mpint (RFC 4251 section 5)."""
    data = data.lstrip(b"\0")
    if data and data[0] & 0x80:
        data = b"\0" + data
    return ssh_string(data)


def name_list(names: Sequence[str]) -> bytes:
    return ssh_string(",".join(names).encode())


def host_key_blob(public_openssh: str) -> bytes:
    """``ssh-ed25519 AAAA... comment`` -> the key blob the server sends (K_S)."""
    return base64.b64decode(public_openssh.split()[1])


class _Fields:
    """Reads SSH wire types from one packet's payload."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, count: int) -> bytes:
        if self.at + count > len(self.data):
            raise ValueError("truncated SSH message")
        out = self.data[self.at:self.at + count]
        self.at += count
        return out

    def string(self) -> bytes:
        return self.take(int.from_bytes(self.take(4), "big"))

    def names(self) -> List[str]:
        return self.string().decode("ascii", "replace").split(",")


class _Wire:
    """Unencrypted SSH binary packets (before NEWKEYS), over a socket with a deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline, self.buffer = sock, deadline, b""

    def _fill(self, count: int) -> None:
        while len(self.buffer) < count:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no answer in time")
            self.sock.settimeout(left)
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buffer += chunk

    def line(self) -> bytes:
        """The server's identification line (RFC 4253 4.2), other lines before it skipped."""
        for _ in range(16):
            while b"\n" not in self.buffer:
                if len(self.buffer) > 1024:
                    raise ValueError("no identification line")
                self._fill(len(self.buffer) + 1)
            line, _, self.buffer = self.buffer.partition(b"\n")
            line = line.rstrip(b"\r")
            if line.startswith(b"SSH-"):
                return line
        raise ValueError("no identification line")

    def send(self, payload: bytes) -> None:
        padding = 8 - (5 + len(payload)) % 8
        if padding < 4:
            padding += 8
        packet = (1 + len(payload) + padding).to_bytes(4, "big") + bytes([padding]) + payload + os.urandom(padding)
        self.sock.settimeout(max(self.deadline - time.monotonic(), 0.01))
        self.sock.sendall(packet)

    def receive(self) -> bytes:
        """The next payload that is not IGNORE or DEBUG."""
        while True:
            self._fill(4)
            self._fill(_frame_size(self.buffer))
            payload, self.buffer = _unframe(self.buffer)
            if payload is not None:
                return payload


def _frame_size(buffer: bytes) -> int:
    """Bytes of the binary packet (RFC 4253 6) that starts the buffer, length field included."""
    length = int.from_bytes(buffer[:4], "big")
    if not 5 <= length <= MAX_PACKET:
        raise ValueError(f"bad packet length {length}")
    return 4 + length


def _unframe(buffer: bytes) -> "Tuple[Optional[bytes], bytes]":
    """(the first packet's payload, or None for IGNORE/DEBUG, what follows it)."""
    size = _frame_size(buffer)
    packet, rest = buffer[4:size], buffer[size:]
    padding = packet[0]
    if padding + 1 >= len(packet):
        raise ValueError("bad padding")
    payload = packet[1:len(packet) - padding]
    if payload[0] in (MSG_IGNORE, MSG_DEBUG):
        return None, rest
    if payload[0] == MSG_DISCONNECT:
        raise ConnectionError("the server disconnected")
    return payload, rest


def _client_kexinit() -> bytes:
    return (bytes([MSG_KEXINIT]) + os.urandom(16) + name_list(KEX_ALGORITHMS) + name_list([HOST_KEY_ALGORITHM])
            + name_list(CIPHERS) * 2 + name_list(MACS) * 2 + name_list(["none"]) * 2 + name_list([]) * 2
            + b"\0" + bytes(4))


def proves_host_key(address: str, port: int, token: str, expected_public: str, timeout: float = 3.0) -> Optional[str]:
    """Connect, check the banner carries ``token``, run the key exchange and verify that the
    server signed it with the host key ``expected_public`` (``ssh-ed25519 AAAA...``).

    Returns the banner when all holds, None otherwise (wrong or no key, bad signature,
    no common algorithm, not SSH, no answer within ``timeout``)."""
    # Imported here: only the mother superior proves keys, and a hook pays ~20 ms for it.
    from cryptography.exceptions import InvalidSignature
    deadline = time.monotonic() + timeout
    try:
        expected = host_key_blob(expected_public)
        with socket.create_connection((address, port), timeout=timeout) as sock:
            wire = _Wire(sock, deadline)
            sock.sendall(CLIENT_VERSION + b"\r\n")
            exchange = _exchange(wire.line(), token, expected)
            try:
                step = next(exchange)
                while True:
                    if step is None:
                        step = exchange.send(wire.receive())
                    else:
                        wire.send(step)
                        step = exchange.send(None)
            except StopIteration as done:
                return done.value
    except (OSError, ValueError, InvalidSignature, IndexError):
        return None


def _exchange(server_version: bytes, token: str,
              expected: bytes) -> "Generator[Optional[bytes], Optional[bytes], Optional[str]]":
    """The client's side of the proof (RFC 4253 7-8, RFC 8731), without I/O, so that the
    threaded and the event-loop probes run the same checks: it yields a payload to send,
    or None to be sent the server's next packet, and returns the banner when the server
    signed the exchange with ``expected``, None when anything does not hold."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    banner = server_version.decode("ascii", "replace")
    if not banner_matches(banner, token):
        return None
    client_kexinit = _client_kexinit()
    yield client_kexinit
    server_kexinit = yield None
    assert server_kexinit is not None
    if server_kexinit[0] != MSG_KEXINIT:
        return None
    fields = _Fields(server_kexinit[17:])
    server_kex, server_host_keys = fields.names(), fields.names()
    if HOST_KEY_ALGORITHM not in server_host_keys or not any(k in server_kex for k in KEX_ALGORITHMS):
        return None
    ephemeral = X25519PrivateKey.generate()
    q_c = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    yield bytes([MSG_KEX_ECDH_INIT]) + ssh_string(q_c)
    reply = yield None
    assert reply is not None
    if not _signed_by(expected, server_version, client_kexinit, server_kexinit, ephemeral, q_c, reply):
        return None
    return banner


class _AsyncWire(_Wire):
    """The same packets over asyncio streams (the probe of many sisters at once)."""

    def __init__(self, reader: "asyncio.StreamReader", deadline: float) -> None:
        self.reader, self.deadline, self.buffer = reader, deadline, b""

    async def afill(self, count: int) -> None:
        while len(self.buffer) < count:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no answer in time")
            chunk = await asyncio.wait_for(self.reader.read(4096), left)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buffer += chunk

    async def aline(self) -> bytes:
        for _ in range(16):
            while b"\n" not in self.buffer:
                if len(self.buffer) > 1024:
                    raise ValueError("no identification line")
                await self.afill(len(self.buffer) + 1)
            line, _, self.buffer = self.buffer.partition(b"\n")
            line = line.rstrip(b"\r")
            if line.startswith(b"SSH-"):
                return line
        raise ValueError("no identification line")

    async def areceive(self) -> bytes:
        while True:
            await self.afill(4)
            await self.afill(_frame_size(self.buffer))
            payload, self.buffer = _unframe(self.buffer)
            if payload is not None:
                return payload


def _packet(payload: bytes) -> bytes:
    padding = 8 - (5 + len(payload)) % 8
    if padding < 4:
        padding += 8
    return (1 + len(payload) + padding).to_bytes(4, "big") + bytes([padding]) + payload + os.urandom(padding)


def _signed_by(expected: bytes, server_version: bytes, client_kexinit: bytes, server_kexinit: bytes,
               ephemeral: "X25519PrivateKey", q_c: bytes, reply: bytes) -> bool:
    """Did the server's ECDH reply sign this exchange with the host key blob ``expected``?"""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    if reply[0] != MSG_KEX_ECDH_REPLY:
        return False
    fields = _Fields(reply[1:])
    k_s, q_s, signature = fields.string(), fields.string(), fields.string()
    if k_s != expected:
        return False
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(q_s))
    exchange_hash = hashlib.sha256(
        ssh_string(CLIENT_VERSION) + ssh_string(server_version) + ssh_string(client_kexinit)
        + ssh_string(server_kexinit) + ssh_string(k_s) + ssh_string(q_c) + ssh_string(q_s)
        + ssh_mpint(shared)).digest()
    sig = _Fields(signature)
    if sig.string() != HOST_KEY_ALGORITHM.encode():
        return False
    key = _Fields(k_s)
    key.string()
    Ed25519PublicKey.from_public_bytes(key.string()).verify(sig.string(), exchange_hash)
    return True


async def aproves_host_key(address: str, port: int, token: str, expected_public: str,
                           timeout: float = 3.0) -> Optional[str]:
    """``proves_host_key`` on the event loop: the same checks, the same answer."""
    # Imported here: only the mother superior proves keys, and a hook pays ~20 ms for it.
    from cryptography.exceptions import InvalidSignature
    deadline = time.monotonic() + timeout
    writer = None
    try:
        expected = host_key_blob(expected_public)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout)
        wire = _AsyncWire(reader, deadline)
        writer.write(CLIENT_VERSION + b"\r\n")
        exchange = _exchange(await wire.aline(), token, expected)
        try:
            step = next(exchange)
            while True:
                if step is None:
                    step = exchange.send(await wire.areceive())
                else:
                    writer.write(_packet(step))
                    step = exchange.send(None)
        except StopIteration as done:
            return done.value
    except (OSError, ValueError, InvalidSignature, IndexError, asyncio.TimeoutError):
        return None
    finally:
        if writer is not None:
            writer.close()


# At most this many probe connections are open at once (a per-node 1,000-node job has
# 999 sisters; the MS's file descriptors and its sisters' accept queues stay small).
PROBE_CONCURRENCY = 256
RETRY_PAUSE = 0.2


def find_ports(targets: Dict[str, Tuple[str, Sequence[int], str]], deadline: float,
               host_key: str, proof_timeout: float = 3.0,
               passes: Optional[Dict[str, int]] = None) -> Dict[str, Tuple[int, str]]:
    """For each alias -> (address, candidates, container token): (the port of the job's
    container, the image id it announces).

    That port is the FIRST candidate, in the order the node tried them, whose banner
    carries the container's token and whose server proves it holds the job's host key
    (``aproves_host_key``); a fake answer on another candidate is passed over, wherever
    it is. The candidates of one container are tried in that order and the probe stops at
    the first proven one: a sister took its first free candidate, so a container is
    usually found with one connection, not one per candidate. All containers are probed
    at once on one event loop (at most PROBE_CONCURRENCY connections open), each until
    the one shared ``deadline``: a slow sister costs the job its own delay, once.
    ``passes`` (when given) receives how many passes over its candidates each alias took.
    Returns only the found.
    """
    found: Dict[str, Tuple[int, str]] = {}
    counts = passes if passes is not None else {}

    async def one(alias: str, gate: asyncio.Semaphore) -> None:
        address, candidates, token = targets[alias]
        counts[alias] = 0
        while True:
            counts[alias] += 1
            for port in candidates:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                async with gate:
                    banner = await aproves_host_key(address, port, token, host_key, min(proof_timeout, left))
                if banner:
                    found[alias] = (port, banner_image(banner))
                    return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(RETRY_PAUSE, left))

    async def all_of() -> None:
        gate = asyncio.Semaphore(PROBE_CONCURRENCY)
        await asyncio.gather(*(one(alias, gate) for alias in targets))

    if targets:
        asyncio.run(all_of())
    return found
