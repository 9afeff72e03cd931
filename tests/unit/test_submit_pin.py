"""[images] pin: the submit filter rewrites a tag to the digest it names at qsub.

The registry side is exercised against a small registry on localhost that speaks the
parts of the distribution API the filter uses (HEAD manifests, the anonymous bearer
token dance Docker Hub uses); localhost registries are plain HTTP, as Docker treats them.
The daemon side is pointed at a socket that does not exist (a user outside the docker
group), so the registry is what answers.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import test_submit_filter as shared
from test_submit_filter import QSUB_REJECT, qsub_sees
from torque_docker import pin

site = shared.site            # the submit-host fixtures, shared with test_submit_filter.py
tmp_path = shared.tmp_path

DIGEST = "sha256:" + "ab" * 32


class FakeRegistry(BaseHTTPRequestHandler):
    tags = {"lab/x": {"1": DIGEST}}
    token = "t0ken"
    seen: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/token?"):
            self.seen.append(self.path)
            body = json.dumps({"token": self.token}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(404)
        self.end_headers()

    def do_HEAD(self):
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            port = self.server.server_address[1]
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="http://localhost:{port}/token",'
                                                 f'service="fake",scope="repository:lab/x:pull"')
            self.end_headers()
            return
        assert "manifest.list.v2+json" in self.headers.get("Accept", "")
        parts = self.path.split("/")        # /v2/<repo...>/manifests/<tag>
        repo, tag = "/".join(parts[2:-2]), parts[-1]
        digest = self.tags.get(repo, {}).get(tag)
        if digest is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Docker-Content-Digest", digest)
        self.end_headers()


@pytest.fixture()
def registry():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeRegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeRegistry.seen = []
    yield f"localhost:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def configure(site, pin_mode: str, allowed: str = "*") -> None:
    site.config.write_text(f"[images]\nallowed = {allowed}\npin = {pin_mode}\n"
                           "[docker]\nendpoint = unix:///nonexistent/docker.sock\n")


def test_reference_is_read_as_docker_reads_it():
    ref = pin.Reference("debian:12")
    assert (ref.registry, ref.repository, ref.tag, ref.familiar) == ("docker.io", "library/debian", "12", "debian")
    ref = pin.Reference("localhost:5000/lab/x")
    assert (ref.registry, ref.repository, ref.tag, ref.familiar) == ("localhost:5000", "lab/x", "latest",
                                                                      "localhost:5000/lab/x")
    ref = pin.Reference("lab/openfoam:11@" + DIGEST)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == ("docker.io", "lab/openfoam", "11", DIGEST)
    assert pin.registry_url(pin.Reference("debian")) == "https://registry-1.docker.io"
    assert pin.registry_url(pin.Reference("reg.example.org:5000/a/b:1")) == "https://reg.example.org:5000"
    assert pin.pinned("lab/x:1", DIGEST) == f"lab/x:1@{DIGEST}"


def test_registry_digest_with_the_anonymous_token(registry):
    assert pin.from_registry(f"{registry}/lab/x:1") == (DIGEST, "")
    assert FakeRegistry.seen and "scope=repository%3Alab%2Fx%3Apull" in FakeRegistry.seen[0]
    digest, why = pin.from_registry(f"{registry}/lab/x:2")
    assert digest == "" and "answered 404" in why


def test_short_form_is_pinned_at_qsub(site, registry):
    configure(site, "submit")
    script = b"#!/bin/bash\n#PBS -l image=" + f"{registry}/lab/x:1".encode() + b"\n#PBS -l other=model=process\necho\n"
    rc, out, err = site.run([], script)
    assert rc == 0, err
    assert qsub_sees([], out)["other"] == f"image={registry}/lab/x:1@{DIGEST};model=process"
    assert f"image {registry}/lab/x:1 pinned to {DIGEST}" in err


def test_long_form_in_the_script_is_pinned_by_a_later_line(site, registry):
    configure(site, "required")
    script = f"#PBS -l other=image={registry}/lab/x:1;run=host\necho\n".encode()
    rc, out, err = site.run([], script)
    assert rc == 0, err
    assert out.startswith(script.split(b"echo")[0])
    assert qsub_sees([], out)["other"] == f"image={registry}/lab/x:1@{DIGEST};run=host"


def test_unresolvable_tag_is_submitted_unpinned_with_a_warning(site, registry):
    configure(site, "submit")
    script = f"#PBS -l other=image={registry}/lab/x:2\necho\n".encode()
    rc, out, err = site.run([], script)
    assert (rc, out) == (0, script)
    assert "warning: job submitted unpinned: cannot resolve" in err and "answered 404" in err


def test_unresolvable_tag_is_refused_when_pinning_is_required(site):
    configure(site, "required")
    rc, out, err = site.run(["-l", "image=localhost:1/lab/x:1"], b"echo\n")
    assert rc == QSUB_REJECT and out == b""
    lines = err.splitlines()
    assert lines[0].startswith("torque-docker: job not submitted: the site requires pinned images and "
                               "cannot resolve localhost:1/lab/x:1 to a digest here")
    assert lines[1].startswith("torque-docker: what to do: name the digest yourself")


def test_command_line_request_cannot_be_pinned(site, registry):
    configure(site, "required")
    rc, out, err = site.run(["-l", f"other=image={registry}/lab/x:1"], b"echo\n")
    assert rc == QSUB_REJECT and "cannot be changed by the submit filter" in err
    configure(site, "submit")
    rc, out, err = site.run(["-l", f"other=image={registry}/lab/x:1"], b"echo\n")
    assert (rc, out) == (0, b"echo\n") and "warning: job submitted unpinned" in err


def test_digest_outside_the_allowed_patterns_is_not_pinned(site, registry):
    configure(site, "submit", allowed=f"{registry}/lab/x:1")
    rc, out, err = site.run(["-l", f"image={registry}/lab/x:1"], b"echo\n")
    assert rc == 0 and qsub_sees(["-l", f"image={registry}/lab/x:1"], out)["other"] == f"image={registry}/lab/x:1"
    assert f"has no pattern for {registry}/lab/x:1@{DIGEST}" in err


def test_pin_off_never_asks_anyone(site, registry):
    configure(site, "off")
    rc, out, err = site.run(["-l", f"image={registry}/lab/x:1"], b"echo\n")
    assert rc == 0 and b"@sha256" not in out and FakeRegistry.seen == []


def test_user_given_digest_is_kept(site, registry):
    configure(site, "required")
    script = f"#PBS -l image=lab/x:1@{DIGEST}\necho\n".encode()
    rc, out, err = site.run([], script)
    assert rc == 0 and qsub_sees([], out)["other"] == f"image=lab/x:1@{DIGEST}" and FakeRegistry.seen == []


@pytest.mark.parametrize("answer", [b"", b"garbage"])
def test_a_daemon_that_answers_nothing_is_a_reason_not_a_crash(tmp_path, answer):
    """A daemon restarting (or anything else on the socket) closing at once: pin = submit
    must go on to the registry and at worst warn, not fail every container qsub."""
    import os
    import socket
    path = str(tmp_path / "docker.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)

    def serve():
        for _ in range(2):
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(answer)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        digest, why = pin.from_daemon(f"unix://{path}", "lab/x:1")
    finally:
        server.close()
        os.unlink(path)
    assert digest == "" and "not an HTTP answer" in why


def test_a_registry_that_trickles_is_bounded_as_a_whole():
    """urllib bounds each socket operation; a registry that sends a byte every few seconds
    would hold qsub far longer. The whole lookup has one deadline."""
    import socket
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    stop = threading.Event()

    def trickle():
        try:
            conn, _ = listener.accept()
            conn.recv(4096)
            for char in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 100:
                if stop.wait(0.5):
                    break
                conn.send(bytes([char]))
            conn.close()
        except OSError:
            pass        # the client gave up and closed: that is the point

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        digest, why = pin.from_registry(f"localhost:{listener.getsockname()[1]}/lab/x:1", total=1.5)
        assert digest == "" and "did not answer within 2 s" in why     # given up, not finished
    finally:
        stop.set()
        listener.close()


class FileRealmRegistry(FakeRegistry):
    def do_HEAD(self):
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Bearer realm="file:///etc/passwd",service="x"')
        self.end_headers()


def test_a_token_service_that_is_not_http_is_never_opened():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FileRealmRegistry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        digest, why = pin.from_registry(f"localhost:{server.server_address[1]}/lab/x:1")
        assert digest == "" and "not http(s): file:///etc/passwd" in why
    finally:
        server.shutdown()
        server.server_close()
