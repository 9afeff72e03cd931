"""The mother superior's probe: which candidate port holds a sister's container.

The servers here are fake SSH servers written from RFC 4253 / RFC 8731 independently of
the probe's own code (the integration tests run the probe against real OpenSSH in every
multi-node job). They answer the key exchange honestly with the job's host key, or as an
attacker would: the job's banner line (anyone can read it from the real sshd) with no
key exchange, with a key of their own, or replaying the job's PUBLIC host key signed by
another key.
"""
from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
import time
from typing import List

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from torque_docker import probe

JOB_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def openssh_public(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode() + " test"


def s(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def blob(key: Ed25519PrivateKey) -> bytes:
    return s(b"ssh-ed25519") + s(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


class FakeSshd:
    """One listening socket; ``mode`` says how it answers: honest, banner (no key exchange),
    own-key (a host key of its own), replay (the job's public key, signed by another)."""

    def __init__(self, token: str, mode: str = "honest") -> None:
        self.token, self.mode = token, mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._loop, daemon=True).start()

    def close(self) -> None:
        self.sock.close()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _recv_exact(conn, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = conn.recv(count - len(data))
            if not chunk:
                raise ConnectionError
            data += chunk
        return data

    def _packet(self, conn) -> bytes:
        length = struct.unpack(">I", self._recv_exact(conn, 4))[0]
        body = self._recv_exact(conn, length)
        return body[1:length - body[0]]

    @staticmethod
    def _send(conn, payload: bytes) -> None:
        pad = 8 - (5 + len(payload)) % 8
        pad = pad + 8 if pad < 4 else pad
        conn.sendall(struct.pack(">IB", 1 + len(payload) + pad, pad) + payload + bytes(pad))

    def _serve(self, conn) -> None:
        try:
            version = f"SSH-2.0-OpenSSH_9.2p1 Debian-2 {self.token}-abc".encode()
            conn.sendall(version + b"\r\n")
            if self.mode == "banner":
                time.sleep(0.3)
                return
            client_version = b""
            while not client_version.endswith(b"\n"):
                client_version += self._recv_exact(conn, 1)
            client_version = client_version.rstrip(b"\r\n")
            names = lambda *n: s(",".join(n).encode())   # noqa: E731
            server_kexinit = (bytes([20]) + os.urandom(16) + names("curve25519-sha256") + names("ssh-ed25519")
                              + names("aes128-ctr") * 2 + names("hmac-sha2-256") * 2 + names("none") * 2
                              + names() * 2 + b"\0" + bytes(4))
            self._send(conn, server_kexinit)
            client_kexinit = self._packet(conn)
            init = self._packet(conn)
            assert init[0] == 30
            q_c = init[5:5 + struct.unpack(">I", init[1:5])[0]]
            ephemeral = X25519PrivateKey.generate()
            q_s = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            secret = ephemeral.exchange(X25519PublicKey.from_public_bytes(q_c))
            k = int.from_bytes(secret, "big").to_bytes(33, "big").lstrip(b"\0")
            k = b"\0" + k if k[0] & 0x80 else k
            presented = OTHER_KEY if self.mode == "own-key" else JOB_KEY
            signer = JOB_KEY if self.mode == "honest" else OTHER_KEY
            h = hashlib.sha256(s(client_version) + s(version) + s(client_kexinit) + s(server_kexinit)
                               + s(blob(presented)) + s(q_c) + s(q_s) + s(k)).digest()
            signature = s(b"ssh-ed25519") + s(signer.sign(h))
            self._send(conn, bytes([31]) + s(blob(presented)) + s(q_s) + s(signature))
            time.sleep(0.3)
        except (OSError, AssertionError):
            pass
        finally:
            conn.close()


@pytest.fixture
def servers():
    made: List[FakeSshd] = []

    def make(token: str, mode: str = "honest") -> FakeSshd:
        made.append(FakeSshd(token, mode))
        return made[-1]

    yield make
    for server in made:
        server.close()


TOKEN = probe.container_token("tdjob", 1, 0)


@pytest.mark.parametrize("mode,accepted", [("honest", True), ("banner", False), ("own-key", False),
                                           ("replay", False)])
def test_only_a_server_holding_the_job_host_key_is_accepted(servers, mode, accepted):
    server = servers(TOKEN, mode)
    banner = probe.proves_host_key("127.0.0.1", server.port, TOKEN, openssh_public(JOB_KEY), timeout=3)
    assert (banner is not None) is accepted
    if accepted:
        assert probe.banner_matches(banner, TOKEN) and probe.banner_image(banner) == "abc"


def test_the_wrong_token_is_not_accepted_even_with_the_right_key(servers):
    server = servers(probe.container_token("tdjob", 1, 1))
    assert probe.proves_host_key("127.0.0.1", server.port, TOKEN, openssh_public(JOB_KEY), timeout=3) is None


def test_nothing_listening_or_silent_is_bounded():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        started = time.monotonic()
        assert probe.proves_host_key("127.0.0.1", silent.getsockname()[1], TOKEN, openssh_public(JOB_KEY),
                                     timeout=0.5) is None
        assert time.monotonic() - started < 5      # a bound exists (the value itself is not timed)
    finally:
        silent.close()


@pytest.mark.parametrize("fakes", ["banner", "replay", "own-key"])
def test_a_fake_banner_on_other_candidates_never_wins(servers, fakes):
    """Another user on the sister node answers the job's banner on candidates before and
    after the real one: the MS takes the real container, wherever the fakes are."""
    before, real, after = servers(TOKEN, fakes), servers(TOKEN), servers(TOKEN, fakes)
    found = probe.find_ports({"td-1-n1": ("127.0.0.1", [before.port, real.port, after.port], TOKEN)},
                             time.monotonic() + 5, host_key=openssh_public(JOB_KEY))
    assert found == {"td-1-n1": (real.port, "abc")}


def test_the_first_proven_candidate_wins(servers):
    first, second = servers(TOKEN), servers(TOKEN)
    found = probe.find_ports({"a": ("127.0.0.1", [first.port, second.port], TOKEN)}, time.monotonic() + 5,
                             host_key=openssh_public(JOB_KEY))
    assert found == {"a": (first.port, "abc")}
    found = probe.find_ports({"a": ("127.0.0.1", [second.port, first.port], TOKEN)}, time.monotonic() + 5,
                             host_key=openssh_public(JOB_KEY))
    assert found == {"a": (second.port, "abc")}


def test_only_fakes_means_not_found(servers):
    fake = servers(TOKEN, "replay")
    assert probe.find_ports({"a": ("127.0.0.1", [fake.port], TOKEN)}, time.monotonic() + 0.5,
                            host_key=openssh_public(JOB_KEY)) == {}


def test_containers_are_told_apart_when_their_candidate_ports_overlap(servers):
    """Two containers of a job whose candidate lists share ports: each alias must map to
    the sshd that announces ITS container token, not to whichever answers first."""
    t0, t1 = probe.container_token("tdjob", 1, 0), probe.container_token("tdjob", 1, 1)
    p0, p1 = servers(t0).port, servers(t1).port
    found = probe.find_ports({"a0": ("127.0.0.1", [p1, p0], t0), "a1": ("127.0.0.1", [p0, p1], t1)},
                             time.monotonic() + 5, host_key=openssh_public(JOB_KEY))
    assert found == {"a0": (p0, "abc"), "a1": (p1, "abc")}


def test_ssh_mpint_follows_rfc_4251():
    assert probe.ssh_mpint(b"\0\0\x12\x34") == b"\0\0\0\x02\x12\x34"
    assert probe.ssh_mpint(b"\x80\x01") == b"\0\0\0\x03\0\x80\x01"
    assert probe.ssh_mpint(b"\0") == b"\0\0\0\0"
