"""The small Docker Engine API client (engine.py) and the Runtime over it, against a fake
daemon: an HTTP server on a unix socket in this process (standard library only).

The container configuration is checked against what the Docker SDK itself built for the
same settings (the SDK is still installed: pull, load and the admin use it).
"""
from __future__ import annotations

import base64
import json
import socket
import socketserver
import struct
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest

from torque_docker import engine
from torque_docker.errors import ContainerFault, ImageError, NodeFault, is_node_fault
from torque_docker.runtime import ContainerSpec, Runtime, create_body

Answer = Tuple[int, Dict[str, str], bytes]


class FakeDaemon:
    """Answers each (method, path) from ``routes``; records every request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.routes: Dict[Tuple[str, str], Callable[[dict], Answer]] = {}
        self.seen: List[dict] = []
        daemon = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def address_string(self) -> str:
                return "unix"

            def handle_any(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = {"method": self.command, "path": urllib.parse.unquote(url.path),   # as Go's router decodes
                           "query": dict(urllib.parse.parse_qsl(url.query)), "body": body,
                           "host": self.headers.get("Host")}
                daemon.seen.append(request)
                route = daemon.routes.get((self.command, request["path"]))
                status, headers, payload = route(request) if route else (
                    404, {}, json.dumps({"message": f"page not found: {url.path}"}).encode())
                self.send_response(status)
                chunked = headers.pop("chunked", None)
                for name, value in headers.items():
                    self.send_header(name, value)
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(payload), 7):
                        piece = payload[i:i + 7]
                        self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                    return
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD" and payload:
                    self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = do_HEAD = handle_any

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(str(path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def ok_json(doc, status: int = 200) -> Callable[[dict], Answer]:
    return lambda request: (status, {"Content-Type": "application/json"}, json.dumps(doc).encode())


@pytest.fixture
def daemon(tmp_path):
    fake = FakeDaemon(tmp_path / "docker.sock")
    yield fake
    fake.close()


@pytest.fixture
def runtime(daemon):
    return Runtime(f"unix://{daemon.path}", 5)


def spec(**changes) -> ContainerSpec:
    base = dict(image="lab/x:1", name="td-1-s-n0", hostname="td-1-s-n0",
                command=("/usr/sbin/sshd", "-D", "-e"), user="2001:2001", group_add=("2002", "2003"),
                labels={"torque-docker.job": "1.s"}, binds=(("/home/u", "/home/u", False), ("/etc/x", "/etc/x", True)),
                shm_size="64m", cpuset_cpus="0-1", mem_limit="1073741824", ipc_mode="shareable",
                cgroup_parent="/torque/1.s", pids_limit=4096, ulimits=(("memlock", -1, -1), ("nofile", 1024, 4096)),
                tmpfs=(("/tmp", "1g"),), read_only=True, seccomp='{"defaultAction":"SCMP_ACT_ERRNO"}',
                devices=(("/dev/infiniband/uverbs0", "/dev/infiniband/uverbs0"),),
                env=(("NVIDIA_VISIBLE_DEVICES", "void"), ("CUDA_VISIBLE_DEVICES", "0,1")), gpu_ids=("0", "1"))
    base.update(changes)
    return ContainerSpec(**base)


# ----------------------------------------------------------------------------- the wire
def test_a_call_sends_method_path_query_and_json_and_reads_the_answer(daemon, runtime):
    daemon.routes[("POST", "/containers/create")] = ok_json({"Id": "abc123", "Warnings": []}, 201)
    daemon.routes[("POST", "/containers/abc123/start")] = lambda r: (204, {}, b"")
    assert runtime.start(spec()) == "abc123"
    create, start = daemon.seen
    assert create["query"] == {"name": "td-1-s-n0"} and create["host"] == "docker"
    assert json.loads(create["body"]) == create_body(spec())
    assert start["method"] == "POST" and start["body"] == b""


def test_names_in_paths_are_quoted_as_the_sdk_quotes_them(daemon):
    daemon.routes[("GET", "/images/lab/x:1@sha256:ab/json")] = ok_json({"Id": "sha256:1"})
    api = engine.Engine(f"unix://{daemon.path}", 5)
    assert api.image_inspect("lab/x:1@sha256:ab") == {"Id": "sha256:1"}
    api.call("GET", f"/containers/{engine.quote('a b?c')}/json", ok=(404,))
    assert daemon.seen[-1]["path"] == "/containers/a b?c/json"      # sent as a%20b%3Fc, decoded by the server


def test_a_chunked_answer_is_read_whole(daemon):
    doc = [{"Id": f"c{i}", "Names": [f"/n{i}"], "State": "running", "Labels": {"k": "v"}, "Created": 7}
           for i in range(50)]
    daemon.routes[("GET", "/containers/json")] = lambda r: (200, {"chunked": "1"}, json.dumps(doc).encode())
    found = Runtime(f"unix://{daemon.path}", 5).containers(jobid="1.s", host="n0")
    assert [c.id for c in found] == [f"c{i}" for i in range(50)] and found[3].name == "n3"
    query = daemon.seen[0]["query"]
    assert query["all"] == "1"
    assert json.loads(query["filters"]) == {"label": ["torque-docker.job=1.s", "torque-docker.host=n0"]}


def test_docker_errors_carry_status_and_message(daemon):
    daemon.routes[("GET", "/containers/x/json")] = ok_json({"message": "No such container: x"}, 404)
    api = engine.Engine(f"unix://{daemon.path}", 5)
    with pytest.raises(engine.EngineError) as info:
        api.inspect("x")
    assert info.value.status == 404 and info.value.message == "No such container: x"


# ----------------------------------------------------------------------------- no daemon
def test_no_daemon_is_a_node_fault_that_says_start_dockerd(tmp_path):
    runtime = Runtime(f"unix://{tmp_path}/missing.sock", 5)      # no connection is made here
    with pytest.raises(NodeFault) as info:
        runtime.containers(jobid="1.s")
    assert "does not answer" in info.value.message and "systemctl start docker" in info.value.fix
    assert is_node_fault(info.value)
    with pytest.raises(NodeFault):
        runtime.remove("abc")


def test_a_daemon_that_never_answers_is_bounded_by_the_timeout(tmp_path):
    path = tmp_path / "silent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)                     # accepts (in the backlog) and never answers
    try:
        runtime = Runtime(f"unix://{path}", 0.3)
        with pytest.raises(NodeFault) as info:
            runtime.state("abc")
        assert "did not answer" in info.value.message
    finally:
        listener.close()


def test_a_daemon_that_speaks_no_http_is_unreachable(tmp_path):
    path = tmp_path / "garbage.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def garbage() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"hello\r\n")
        conn.close()

    threading.Thread(target=garbage, daemon=True).start()
    try:
        with pytest.raises(engine.Unreachable):
            engine.Engine(f"unix://{path}", 5).ping()
    finally:
        listener.close()


def raw_daemon(tmp_path, answer: bytes) -> socket.socket:
    """A daemon that answers every connection with ``answer`` verbatim, then closes it."""
    path = tmp_path / "raw.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(answer)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener


def test_a_body_that_ends_with_the_connection_is_read(tmp_path):
    listener = raw_daemon(tmp_path, b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + b'{"a": [1, 2]}')
    try:
        answer = engine.UnixTransport(str(tmp_path / "raw.sock"), 5).request("GET", "/x")
        assert answer.status == 200 and answer.json() == {"a": [1, 2]}
        assert answer.headers["content-type"] == "application/json"
    finally:
        listener.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n0123456789abcdefghij",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n0123456789abcdefghij",
])
def test_a_limit_reads_no_more_of_the_body(tmp_path, answer):
    listener = raw_daemon(tmp_path, answer)
    try:
        transport = engine.UnixTransport(str(tmp_path / "raw.sock"), 5)
        assert transport.request("GET", "/x", limit=12).body == b"0123456789ab"
        assert transport.request("GET", "/x").body == b"0123456789abcdefghij"
    finally:
        listener.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nshort",                     # cut off
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",             # not a chunk size
    b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n",                 # a header without end
    b"",                                                                           # closed at once
])
def test_a_broken_answer_is_unreachable_not_a_crash(tmp_path, answer):
    listener = raw_daemon(tmp_path, answer)
    try:
        with pytest.raises(engine.Unreachable):
            engine.UnixTransport(str(tmp_path / "raw.sock"), 5).request("GET", "/x")
    finally:
        listener.close()


# ----------------------------------------------------------------------------- Runtime over it
def test_gone_containers_and_images_are_answers_not_errors(daemon, runtime):
    for method, path in (("GET", "/containers/x/json"), ("DELETE", "/containers/x"), ("GET", "/images/lab/y:1/json")):
        daemon.routes[(method, path)] = ok_json({"message": "No such object"}, 404)
    assert runtime.state("x") == ("gone", None)
    assert runtime.init_pid("x") == ("gone", 0)
    assert runtime.remove("x") is False
    assert runtime.image_id("lab/y:1") is None
    assert next(r for r in daemon.seen if r["method"] == "DELETE")["query"] == {"force": "1", "v": "1"}


def test_removal_already_in_progress_counts_as_removed_other_conflicts_do_not(daemon, runtime):
    daemon.routes[("DELETE", "/containers/a")] = ok_json({"message": "removal of container a is already in progress"}, 409)
    daemon.routes[("DELETE", "/containers/b")] = ok_json({"message": "something else"}, 500)
    assert runtime.remove("a") is True
    with pytest.raises(NodeFault):
        runtime.remove("b")


def test_an_image_name_docker_refuses_is_the_users_mistake(daemon, runtime):
    daemon.routes[("GET", "/images/BAD/json")] = ok_json({"message": "invalid reference format"}, 400)
    with pytest.raises(ImageError) as info:
        runtime.image_id("BAD")
    assert info.value.user_error


def test_state_pid_path_and_volumes_from_inspect(daemon, runtime):
    daemon.routes[("GET", "/containers/c/json")] = ok_json(
        {"State": {"Status": "running", "Pid": 4242, "ExitCode": 0}, "HostConfig": {"Memory": 5 << 20}})
    daemon.routes[("GET", "/images/lab/x:1/json")] = ok_json(
        {"Id": "sha256:1", "RepoDigests": ["lab/x@sha256:ff"],
         "Config": {"Env": ["A=1", "PATH=/opt/bin:/bin"], "Volumes": {"/data": {}, "/cache": {}}}})
    assert runtime.state("c") == ("running", 0)
    assert runtime.init_pid("c") == ("running", 4242)
    assert runtime.limits("c") == {"cpus": None, "memory": 5 << 20, "cpuset": None}
    assert runtime.image_path("lab/x:1") == "/opt/bin:/bin"
    assert runtime.image_volumes("lab/x:1") == ["/cache", "/data"]
    assert runtime.image_digest("lab/x:1") == ("sha256:1", "lab/x@sha256:ff")


def test_start_failures_keep_their_meaning(daemon, runtime):
    """Image missing: the image's error; exec not found: no sshd; a refusal of this
    container: never the node's; Docker short of disk: the node's. A failed start removes
    the half-made container."""
    daemon.routes[("DELETE", "/containers/td-1-s-n0")] = lambda r: (204, {}, b"")
    daemon.routes[("POST", "/containers/create")] = ok_json({"message": "No such image: lab/x:1"}, 404)
    with pytest.raises(ImageError):
        runtime.start(spec())
    daemon.routes[("POST", "/containers/create")] = ok_json({"Id": "c1"}, 201)
    cases = [("OCI runtime create failed: exec: \"/usr/sbin/sshd\": executable file not found in $PATH", ImageError, False),
             ("error mounting: no space left on device", NodeFault, True),
             ("invalid mount config for type bind", ContainerFault, False)]
    for message, kind, node in cases:
        daemon.routes[("POST", "/containers/c1/start")] = ok_json({"message": message}, 500)
        with pytest.raises(kind) as info:
            runtime.start(spec())
        assert is_node_fault(info.value) is node, message
    assert sum(1 for r in daemon.seen if r["method"] == "DELETE") == 3


def test_has_file_reads_only_the_status_of_a_head(daemon, runtime):
    stat = base64.b64encode(json.dumps({"name": "bash", "size": 5, "mode": 493}).encode()).decode()
    daemon.routes[("HEAD", "/containers/c/archive")] = lambda r: (
        (200, {"X-Docker-Container-Path-Stat": stat}, b"") if r["query"]["path"] == "/bin/bash"
        else (500, {}, b""))
    assert runtime.has_file("c", "/bin/bash") is True
    assert runtime.has_file("c", "/loop") is False       # an image's broken path: not usable, never a fault


def test_logs_are_demultiplexed(daemon, runtime):
    frames = b"".join(struct.pack(">BxxxI", stream, len(text)) + text
                      for stream, text in ((1, b"out line\n"), (2, b"sshd: no hostkeys available\n")))
    daemon.routes[("GET", "/containers/c/logs")] = lambda r: (200, {}, frames)
    assert runtime.logs("c", tail=5) == "out line\nsshd: no hostkeys available"
    assert daemon.seen[0]["query"] == {"stdout": "1", "stderr": "1", "tail": "5"}
    assert engine.demultiplex(b"plain text") == b"plain text"


def test_image_file_follows_links_and_removes_its_container(daemon, runtime):
    import io
    import tarfile

    def tar_of(name: str, data: bytes) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        return out.getvalue()

    def header(stat: dict) -> Dict[str, str]:
        return {"X-Docker-Container-Path-Stat": base64.b64encode(json.dumps(stat).encode()).decode()}

    def archive(request):
        path = request["query"]["path"]
        if path == "/etc/group":
            return 200, header({"mode": 1 << 27, "linkTarget": "/real/group"}), b""
        if path == "/real/group":
            return 200, header({"mode": 0o644}), tar_of("group", b"root:x:0:\n")
        return 404, {}, b'{"message": "no such file"}'

    daemon.routes[("POST", "/containers/create")] = ok_json({"Id": "tmp1"}, 201)
    daemon.routes[("GET", "/containers/tmp1/archive")] = archive
    daemon.routes[("DELETE", "/containers/tmp1")] = lambda r: (204, {}, b"")
    assert runtime.image_file("sha256:1", "/etc/group", {"torque-docker.job": "1.s"}) == b"root:x:0:\n"
    assert runtime.image_file("sha256:1", "/etc/missing", {}) is None
    created = json.loads(daemon.seen[0]["body"])
    assert created["NetworkDisabled"] is True and created["HostConfig"] == {"NetworkMode": "none"}
    assert [r["method"] for r in daemon.seen].count("DELETE") == 2


# ----------------------------------------------------------------------------- same as the SDK sent
def test_the_container_configuration_is_what_the_docker_sdk_sent():
    """The body the SDK's ``containers.run(detach=True, ...)`` built from the arguments the
    package used to give it, for the same spec (None values dropped, as the SDK drops them)."""
    from docker.models.containers import _create_container_args
    from docker.types import ContainerConfig, DeviceRequest
    from docker.types import Mount as DockerMount
    from docker.types import Ulimit

    s = spec()
    kwargs = dict(
        image=s.image, command=list(s.command), name=s.name, hostname=s.hostname,
        detach=True, network_mode="host", user=s.user, group_add=list(s.group_add),
        labels=s.labels, security_opt=["no-new-privileges", f"seccomp={s.seccomp}"],
        cap_drop=["ALL"], init=True,
        mounts=[DockerMount(target=dst, source=src, type="bind", read_only=ro) for src, dst, ro in s.binds],
        shm_size=s.shm_size, stdin_open=False, tty=False, cpuset_cpus=s.cpuset_cpus, mem_limit=s.mem_limit,
        ipc_mode=s.ipc_mode, cgroup_parent=s.cgroup_parent, pids_limit=s.pids_limit,
        ulimits=[Ulimit(name=n, soft=soft, hard=hard) for n, soft, hard in s.ulimits],
        tmpfs={path: f"rw,exec,nosuid,nodev,size={size},mode=1777" for path, size in s.tmpfs},
        read_only=True, devices=[f"{h}:{c}:rwm" for h, c in s.devices], version="1.41",
        environment=[f"{n}={v}" for n, v in s.env],
        device_requests=[DeviceRequest(driver="nvidia", device_ids=list(s.gpu_ids), capabilities=[["gpu"]])])
    created = _create_container_args(kwargs)
    created.pop("name")
    sdk = {k: v for k, v in ContainerConfig("1.41", **created).items() if v is not None}
    assert json.loads(json.dumps(create_body(s))) == json.loads(json.dumps(sdk))


def test_sizes_as_docker_reads_them():
    assert engine.parse_size("64m") == 64 << 20
    assert engine.parse_size("1g") == 1 << 30
    assert engine.parse_size("1gb") == 1 << 30
    assert engine.parse_size("65536") == 65536
    assert engine.parse_size("512K") == 512 << 10
    with pytest.raises(ValueError):
        engine.parse_size("lots")


def test_the_hooks_path_does_not_import_the_docker_sdk(daemon, runtime):
    """What the hooks call never loads the SDK (0.2-0.45 s of imports per hook here)."""
    import subprocess
    import sys
    code = ("import sys\n"
            "from torque_docker import cli, config, lifecycle, torque, sweep, state, runtime\n"
            f"r = runtime.Runtime('unix://{daemon.path}', 5)\n"
            "r.containers(jobid='1.s'); r.remove('x'); r.state('x')\n"
            "heavy = [m for m in ('docker', 'requests', 'urllib3', 'jinja2', 'cryptography', 'http.client') if m in sys.modules]\n"
            "print(','.join(heavy))\n")
    daemon.routes[("GET", "/containers/json")] = ok_json([])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_other_endpoints_go_through_the_sdks_session(daemon):
    """tcp:// and ssh:// addresses use the SDK's own HTTP session (TLS, ssh); the same calls
    and answers, here over the SDK's unix adapter against the fake daemon."""
    daemon.routes[("GET", "/version")] = ok_json({"ApiVersion": "1.41", "Version": "20.10"})
    daemon.routes[("GET", "/v1.41/containers/c/json")] = ok_json({"State": {"Status": "exited", "ExitCode": 3}})
    daemon.routes[("DELETE", "/v1.41/containers/gone")] = ok_json({"message": "No such container: gone"}, 404)
    transport = engine.SDKTransport(f"unix://{daemon.path}", 5)
    api = engine.Engine("tcp://unused", 5)
    api._transport = transport
    runtime = Runtime("tcp://unused", 5)
    runtime.engine = api
    assert runtime.state("c") == ("exited", 3)
    assert runtime.remove("gone") is False
    assert [r["path"] for r in daemon.seen][-2:] == ["/v1.41/containers/c/json", "/v1.41/containers/gone"]


def test_no_daemon_behind_another_endpoint_is_unreachable(tmp_path):
    with pytest.raises(engine.Unreachable):
        engine.SDKTransport(f"unix://{tmp_path}/missing.sock", 2)


def test_an_epilogue_loads_neither_the_sdk_nor_the_set_ups_modules(daemon, tmp_path):
    """A whole epilogue (the sister's: nothing of this job left) against the fake daemon:
    its removal asks Docker, and nothing heavier than it needs is imported."""
    import subprocess
    import sys
    conf = tmp_path / "td.conf"
    conf.write_text(f"[docker]\nendpoint = unix://{daemon.path}\n[paths]\nstate_dir = {tmp_path}/state\n"
                    f"[ssh]\ninclude_dir = {tmp_path}/ssh\n[log]\ndestination = none\n[network]\nnode_name = n1\n")
    daemon.routes[("GET", "/containers/json")] = ok_json([])
    code = ("import sys\nfrom torque_docker.cli import run_hook\n"
            "rc = run_hook('epilogue.parallel', ['epilogue.parallel', '7.s', 'u', 'u', 'job', '1', "
            "'other=image=lab/x:1,walltime=00:01:00', 'cput=0', 'batch', '0', ''])\n"
            "heavy = [m for m in ('docker', 'requests', 'jinja2', 'cryptography', 'http.client',"
            " 'torque_docker.lifecycle', 'torque_docker.keys') if m in sys.modules]\n"
            "print(rc, ','.join(heavy))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "TORQUE_DOCKER_CONF": str(conf),
                               "PYTHONPATH": str(Path(engine.__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0"]
    assert [r["path"] for r in daemon.seen] == ["/containers/json"]
    assert json.loads(daemon.seen[0]["query"]["filters"])["label"] == ["torque-docker.job=7.s", "torque-docker.host=n1"]
