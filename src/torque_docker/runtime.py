"""Everything that talks to Docker: the only module (with engine.py) that does.

The hooks' calls go through engine.py (its own HTTP/1.1 on the daemon's socket): importing the
Docker SDK would cost every hook more than starting its container (docs/performance.md).
The SDK is imported only by what streams or authenticates: pull, load, tag, the admin's
live update and ``client`` (check). Errors of either are turned into the package's own
here, with the fix in the message, so the rest of the code never sees a Docker exception.
"""
from __future__ import annotations

import io
import json
import os
import re
import tarfile
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple

from . import limits
from .engine import Engine, EngineError, Unreachable, parse_size
from .errors import ContainerFault, ImageError, NodeFault, no_sshd

if TYPE_CHECKING:
    from .config import Config

LABEL = "torque-docker"          # every container we make carries LABEL.job etc.
L_JOB, L_HOST, L_NODE, L_SLOT = f"{LABEL}.job", f"{LABEL}.host", f"{LABEL}.node-index", f"{LABEL}.slot"
L_ALIAS, L_USER, L_PORT = f"{LABEL}.alias", f"{LABEL}.user", f"{LABEL}.port"
#: Words of a Docker error that say the node itself is short of something or broken.
NODE_TROUBLE = ("no space left on device", "read-only file system", "input/output error", "too many open files",
                "disk quota exceeded", "connection refused", "cannot connect to the docker daemon")


#: Words of a refusal that come from an OCI hook (the NVIDIA runtime's nvidia-container-cli,
#: which mounts the driver into the image's file system): the image can cause any of its
#: errors (a symlink of the image's into a read-only path gives "read-only file system").
HOOK_WORDS = ("error running hook", "nvidia-container-cli")


def node_trouble(text: str, sources: Sequence[str] = ()) -> bool:
    """Does Docker's refusal say the node is out of something or broken? Not when it names
    one of the container's bind sources: a user's directory (a FUSE mount of theirs that
    answers EIO, say) can put those very words in it, and a user must not mark a node down.
    Nor when an OCI hook failed (``HOOK_WORDS``): the hook works on the image's files."""
    if any(source and source in text for source in sources):
        return False
    lowered = text.lower()
    if any(word in lowered for word in HOOK_WORDS):
        return False
    return any(word in lowered for word in NODE_TROUBLE)


DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"   # Docker's own default


@dataclass(frozen=True)
class ContainerSpec:
    image: str
    name: str
    hostname: str
    command: Tuple[str, ...]
    user: str                               # "uid:gid"
    group_add: Tuple[str, ...]
    labels: Dict[str, str]
    binds: Tuple[Tuple[str, str, bool], ...]  # (host path, container path, read only)
    shm_size: str = "64m"
    cpuset_cpus: Optional[str] = None
    mem_limit: Optional[str] = None
    ipc_mode: Optional[str] = None
    cgroup_parent: Optional[str] = None
    pids_limit: Optional[int] = None                   # None or 0: no limit
    ulimits: Tuple[Tuple[str, int, int], ...] = ()     # (name, soft, hard)
    tmpfs: Tuple[Tuple[str, str], ...] = ()            # (container path, size): /tmp, the image's VOLUMEs
    read_only: bool = False                            # the image's file system
    seccomp: str = ""                       # a profile's text (Docker takes the text, not a path); "": Docker's default
    devices: Tuple[Tuple[str, str], ...] = ()          # (host node, container path): [devices] paths
    env: Tuple[Tuple[str, str], ...] = ()              # the container's own variables (gpus.py: the GPU ones)
    gpu_ids: Tuple[str, ...] = ()                      # GPUs by index through the NVIDIA runtime (docker --gpus)


@dataclass(frozen=True)
class LoadedImages:
    """What a tarball held: its images (by id, in the tarball's order) and the tags it claimed."""

    ids: Tuple[str, ...]
    tags: Tuple[str, ...]


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    status: str
    labels: Dict[str, str]
    created: str = ""


class Runtime:
    """Docker as the package uses it. Connects at the first call, not here: a hook that
    finds nothing to do never opens the socket."""

    def __init__(self, endpoint: str, timeout: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.engine = Engine(endpoint, timeout)
        self._client: Any = None

    @classmethod
    def from_config(cls, cfg: "Config") -> "Runtime":
        """The node's Docker daemon, as ``[docker] endpoint`` and ``api_timeout`` name it."""
        return cls(cfg.docker_endpoint, cfg.docker_api_timeout)

    def ping(self) -> None:
        """Does the daemon answer? A NodeFault saying how to start it when not."""
        try:
            if not self.engine.ping():
                raise EngineError(200, "its _ping did not answer OK")
        except EngineError as exc:
            raise NodeFault(f"the Docker daemon does not answer ({_short(exc)})",
                            "start dockerd on this node (systemctl start docker)") from None

    def version(self) -> str:
        """The daemon's version (``?`` when it does not say)."""
        try:
            return str(self.engine.version().get("Version", "?"))
        except EngineError as exc:
            raise NodeFault(f"the Docker daemon does not say its version ({_short(exc)})",
                            "start dockerd on this node (systemctl start docker)") from None

    @property
    def client(self) -> Any:
        """The Docker SDK's client, made on first use (pull, load, tag, update, check)."""
        if self._client is None:
            import docker
            from docker.errors import DockerException
            try:
                self._client = docker.DockerClient(base_url=self.endpoint, version="auto",
                                                   timeout=int(max(self.timeout, 1)))
            except DockerException as exc:
                raise self._down(exc) from None
        return self._client

    def _down(self, exc: BaseException) -> NodeFault:
        return NodeFault(f"the Docker daemon at {self.endpoint} does not answer ({_short(exc)})",
                         "start dockerd on this node (systemctl start docker)")

    def _fault(self, exc: EngineError, what: str) -> NodeFault:
        """A Docker error of a call the job cannot influence: the node's."""
        if isinstance(exc, Unreachable):
            return self._down(exc)
        return NodeFault(f"{what}: {_short(exc)}")

    # ---- images -----------------------------------------------------------
    def _image(self, reference: str) -> Optional[Dict[str, Any]]:
        """The image's inspect document; None when there is no such image."""
        try:
            return self.engine.image_inspect(reference)
        except Unreachable as exc:
            raise self._down(exc) from None
        except EngineError as exc:
            if exc.status == 404:
                return None
            if exc.status == 400:      # "invalid reference format": the user's name, not the node
                raise ImageError(f"Docker does not accept the image name {reference} ({_short(exc)})",
                                 "use NAME[:TAG] in lower case, e.g. image=debian:12") from None
            raise NodeFault(f"Docker failed to look up image {reference}: {_short(exc)}") from None

    def image_id(self, reference: str) -> Optional[str]:
        found = self._image(reference)
        return str(found["Id"]) if found is not None else None

    def image_digest(self, reference: str) -> Tuple[str, str]:
        """(image id, repo digest or '') of a local image."""
        found = self._image(reference)
        if found is None:
            raise ImageError(f"image {reference} is not on this node", "check the image name")
        digests = found.get("RepoDigests") or []
        return str(found["Id"]), (digests[0] if digests else "")

    def image_path(self, reference: str) -> str:
        """The PATH the image declares (Docker's default when it declares none)."""
        try:
            env = ((self.engine.image_inspect(reference).get("Config") or {}).get("Env")) or []
        except EngineError:
            env = []
        for item in env:
            if item.startswith("PATH="):
                return item[5:]
        return DEFAULT_PATH

    def pull(self, reference: str, timeout: float) -> str:
        """Pull with a bound: a pull that cannot finish before prologalarm must fail clearly."""
        from docker.errors import ImageNotFound, NotFound
        client = self.client
        result: Dict[str, Any] = {}

        def work() -> None:
            try:
                result["image"] = client.images.pull(reference)
            except Exception as exc:  # reported below
                result["error"] = exc

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise ImageError(f"pulling {reference} took longer than {timeout:.0f} s",
                             "ask the admin to stage it ('torque-docker stage IMAGE') or try again later",
                             user_error=False)
        if "error" in result:
            exc = result["error"]
            text = str(exc).lower()
            if "no such host" in text:       # the name's registry part does not resolve: the name is wrong
                raise ImageError(f"image {reference} cannot be pulled: its registry does not resolve ({_short(exc)})",
                                 "check the image name (its part before the first '/' is the registry "
                                 "when it holds a dot or a port), or ask the admin to stage it") from None
            # The name is wrong, or the user may not have it: the user's to fix. Anything else
            # (registry down, a timeout) is nobody's proven fault: requeued, never a node down.
            user = isinstance(exc, (ImageNotFound, NotFound)) or any(
                word in text for word in ("not found", "denied", "unauthorized", "manifest unknown",
                                          "does not exist", "invalid reference format"))
            raise ImageError(f"image {reference} is not on this node and cannot be pulled ({_short(exc)})",
                             "check the name and tag, or ask the admin to stage it", user_error=user) from None
        return self.image_id(reference) or ""

    def load_private(self, fd: int) -> LoadedImages:
        """Load a ``docker save`` tarball from an open descriptor WITHOUT its tags.

        ``docker load`` moves every tag a tarball names (manifest.json RepoTags, the legacy
        ``repositories`` file, OCI index.json name annotations): a user's tarball tagged
        like the site's image would replace it for every later job on the node. So the
        tarball is streamed through a rewriter that removes all of them, and the images
        come back untagged, to be run by id (see untagged_tar)."""
        from docker.errors import APIError, DockerException
        client = self.client
        claimed: List[str] = []
        failure: Dict[str, BaseException] = {}
        read_end, write_end = os.pipe()
        source = os.fdopen(os.dup(fd), "rb")

        def rewrite() -> None:
            try:
                with os.fdopen(write_end, "wb") as sink:
                    claimed.extend(untagged_tar(source, sink))
            except BaseException as exc:       # reported after Docker's answer
                failure["error"] = exc
            finally:
                source.close()

        def body() -> Iterator[bytes]:
            while True:
                chunk = os.read(read_end, 1 << 20)
                if not chunk:
                    return
                yield chunk

        worker = threading.Thread(target=rewrite, daemon=True)
        worker.start()
        try:
            images = client.images.load(body())
            error: Optional[str] = None
        except (APIError, DockerException) as exc:
            images, error = [], _short(exc)
        finally:
            os.close(read_end)
            worker.join(60)
        if "error" in failure:
            cause = failure["error"]
            message = cause.message if isinstance(cause, ImageError) else f"it is not a readable tar archive ({cause})"
            raise ImageError(f"the image tarball {message}", "give a file made by 'docker save NAME:TAG'") from None
        if error is not None:
            raise ImageError(f"Docker cannot load the image tarball: {error}", "give a file made by 'docker save'")
        ids = tuple(dict.fromkeys(image.id for image in images))
        return LoadedImages(ids, tuple(claimed))

    def tag(self, image_id: str, reference: str) -> None:
        repository, _, tag = reference.rpartition(":") if ":" in reference.rsplit("/", 1)[-1] else (reference, "", "latest")
        from docker.errors import APIError, DockerException
        try:
            self.client.api.tag(image_id, repository, tag or "latest")
        except (APIError, DockerException) as exc:
            raise NodeFault(f"Docker could not tag {image_id[:19]} as {reference}: {_short(exc)}") from None

    def image_volumes(self, reference: str) -> List[str]:
        """The paths the image declares as VOLUMEs."""
        try:
            config = self.engine.image_inspect(reference).get("Config") or {}
        except EngineError as exc:
            raise self._fault(exc, f"Docker failed to inspect image {reference}") from None
        return sorted((config.get("Volumes") or {}).keys())

    def image_file(self, image_id: str, path: str, labels: Dict[str, str], limit: int = 4 << 20) -> Optional[bytes]:
        """A file of an image as Docker itself resolves it (symlinks followed inside the
        image): read from a container that is created from the image and never started,
        then removed. None when the image has no such file (or it is over ``limit``)."""
        try:
            ident = self.engine.create({"Image": image_id, "Cmd": ["/torque-docker-never-runs"], "Labels": labels,
                                        "NetworkDisabled": True, "HostConfig": {"NetworkMode": "none"}})
        except EngineError as exc:
            raise self._fault(exc, f"Docker could not create a container of {image_id[:19]}") from None
        try:
            for _ in range(16):
                try:
                    info, data = self.engine.archive(ident, path, limit=limit + (1 << 20))
                except EngineError as exc:
                    if exc.status == 404:
                        return None
                    raise
                if info.get("mode", 0) & (1 << 27) and info.get("linkTarget"):    # Go's os.ModeSymlink
                    path = info["linkTarget"]
                    continue
                with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                    member = tar.next()
                    if member is None or not member.isreg() or member.size > limit:
                        return b"" if member is None or not member.isreg() else None
                    extracted = tar.extractfile(member)
                    return extracted.read() if extracted else b""
            return None
        except Unreachable as exc:
            raise self._down(exc) from None
        except EngineError as exc:
            text = re.sub(r"/\S*/merged(?=/)", "", _short(exc))        # Docker's own storage paths
            if node_trouble(text):
                raise NodeFault(f"Docker could not read {path} of image {image_id[:19]}: {text}") from None
            # Docker resolves the path inside the image: a symlink loop or a path through a
            # file is the image's doing ("too many links"), never a fault of the node.
            raise ImageError(f"Docker cannot read {path} in the image: {text}",
                             f"make {path} a plain file of the image", user_error=True) from None
        finally:
            self.remove(ident)

    def init_pid(self, ident: str) -> Tuple[str, int]:
        """(status, host pid of the container's init); pid 0 when it is not running."""
        attrs = self._inspect(ident)
        if attrs is None:
            return "gone", 0
        state = attrs.get("State") or {}
        return state.get("Status", "unknown"), int(state.get("Pid") or 0)

    def _inspect(self, ident: str) -> Optional[Dict[str, Any]]:
        try:
            return self.engine.inspect(ident)
        except EngineError as exc:
            if exc.status == 404:
                return None
            raise self._fault(exc, f"Docker failed to inspect {ident}") from None

    # ---- containers ---------------------------------------------------------
    def start(self, spec: ContainerSpec) -> str:
        self._check_spec(spec)
        try:
            ident = self.engine.create(create_body(spec), name=spec.name)
            self.engine.start(ident)
            return ident
        except Unreachable as exc:
            raise NodeFault(f"Docker could not start container {spec.name}: {_short(exc)}",
                            "start dockerd on this node (systemctl start docker)") from None
        except EngineError as exc:
            if exc.status == 404 and "no such image" in exc.message.lower():
                raise ImageError(f"image {spec.image} is not on this node", "check the image name") from None
            text = _short(exc)
            self.remove(spec.name)
            if any(word in text.lower() for word in HOOK_WORDS):
                # the image's files can make the hook fail as well as a broken driver can
                raise ContainerFault(f"Docker could not start container {spec.name}: an OCI hook failed: {text}",
                                     "if the image puts its own files or links where the NVIDIA driver is mounted, "
                                     "try another image; if every GPU job fails on this node, check its driver "
                                     "(nvidia-smi) and the NVIDIA Container Toolkit") from None
            if "executable file not found" in text or "no such file or directory" in text:
                raise no_sshd(spec.image, spec.command[0]) from None
            if "could not select device driver" in text:
                # [gpus] method = nvidia-runtime on a node whose Docker has no NVIDIA runtime
                raise NodeFault(f"Docker could not give container {spec.name} its GPUs {','.join(spec.gpu_ids)}: {text}",
                                "install the NVIDIA Container Toolkit on this node (nvidia-ctk runtime configure "
                                "--runtime=docker, then restart dockerd), or set [gpus] method = devices") from None
            if "error setting rlimit" in text:
                # runc raises the container's limits from the daemon's: without CAP_SYS_RESOURCE
                # (or above dockerd's own hard limits) the kernel refuses.
                raise NodeFault(f"Docker could not give container {spec.name} its ulimits "
                                f"({limits.show(spec.ulimits)}): {text}",
                                "let dockerd raise them (docker.service: LimitMEMLOCK=infinity, LimitNOFILE=..., "
                                "and CAP_SYS_RESOURCE), or lower [limits] ulimits / user_max") from None
            if node_trouble(text, [src for src, _, _ in spec.binds]):
                raise NodeFault(f"Docker could not start container {spec.name}: {text}") from None
            # Docker refused THIS container (its settings, the image's file system against
            # what the job mounts): what the job brings can cause it, so never a node down.
            raise ContainerFault(f"Docker could not start container {spec.name}: {text}",
                                 "if the image or the request is unusual, try another; else tell the admin") from None

    @staticmethod
    def _check_spec(spec: ContainerSpec) -> None:
        """Sizes the SDK used to refuse before asking Docker (the config validates them)."""
        for size in (spec.shm_size, spec.mem_limit):
            if size:
                try:
                    parse_size(size)
                except ValueError:
                    raise NodeFault(f"Docker cannot take the size {size!r} for container {spec.name}",
                                    "fix the size in the torque-docker config") from None

    def has_file(self, ident: str, path: str) -> bool:
        """Is ``path`` in the container's file system? Docker's archive endpoint answers a HEAD
        with the file's stat (resolved inside the container), without copying anything."""
        try:
            status, _ = self.engine.archive_stat(ident, path)
        except EngineError as exc:
            raise NodeFault(f"Docker failed to look into container {ident[:12]}: {_short(exc)}") from None
        # Anything but a plain answer is "not usable here": an image can make Docker fail on
        # its own paths (a symlink loop answers HTTP 500), and what an image does must never
        # be a fault of the node (a sister's NodeFault takes the node down).
        return status == 200

    def state(self, ident: str) -> Tuple[str, Optional[int]]:
        """(status, exit code) of a container; ('gone', None) when it no longer exists."""
        attrs = self._inspect(ident)
        if attrs is None:
            return "gone", None
        state = attrs.get("State") or {}
        return state.get("Status", "unknown"), state.get("ExitCode")

    def logs(self, ident: str, tail: int = 5) -> str:
        try:
            return self.engine.logs(ident, tail=tail).strip()
        except EngineError:
            return ""

    def remove(self, ident: str) -> bool:
        """Force-remove, with its anonymous volumes; True when it existed. Never raises for
        'already gone'."""
        try:
            self.engine.remove(ident, force=True, volumes=True)
            return True
        except EngineError as exc:
            if exc.status == 404:
                return False
            if exc.status == 409 and "already in progress" in exc.message:
                return True
            raise self._fault(exc, f"Docker could not remove {ident}") from None

    def containers(self, jobid: Optional[str] = None, host: Optional[str] = None) -> List[ContainerInfo]:
        labels = [L_JOB if jobid is None else f"{L_JOB}={jobid}"]
        if host is not None:
            labels.append(f"{L_HOST}={host}")
        try:
            found = self.engine.containers({"label": labels}, all=True)
        except EngineError as exc:
            raise self._fault(exc, "Docker failed to list containers") from None
        return [ContainerInfo(c["Id"], (c.get("Names") or ["/?"])[0].lstrip("/"), c.get("State", ""),
                              c.get("Labels") or {}, str(c.get("Created", "")))
                for c in found]

    def update(self, ident: str, **limits: object) -> None:
        from docker.errors import APIError, DockerException
        try:
            self.client.api.update_container(ident, **limits)
        except (APIError, DockerException) as exc:
            raise NodeFault(f"Docker could not update {ident}: {_short(exc)}") from None

    def limits(self, ident: str) -> Dict[str, object]:
        """What Docker enforces now: read back after a live change."""
        host = (self._inspect(ident) or {}).get("HostConfig") or {}
        quota, period = host.get("CpuQuota") or 0, host.get("CpuPeriod") or 0
        return {"cpus": round(quota / period, 3) if quota > 0 and period else None,
                "memory": host.get("Memory") or None, "cpuset": host.get("CpusetCpus") or None}

    def usage(self, ident: str):
        """Usage so far of a running container (None when it is not running)."""
        from .usage import host_usage
        try:
            attrs = self.engine.inspect(ident)
        except EngineError:
            return None
        state = attrs.get("State", {})
        if not state.get("Pid"):
            return None
        from datetime import datetime, timezone
        try:
            started = datetime.fromisoformat(state.get("StartedAt", "")[:26].rstrip("Z")).replace(
                tzinfo=timezone.utc).timestamp()
        except ValueError:
            started = 0.0
        return host_usage(state["Pid"], attrs.get("Name", "").lstrip("/"), started)


def create_body(spec: ContainerSpec) -> Dict[str, Any]:
    """The Engine API's container configuration for a job container: what the Docker SDK's
    ``containers.run(detach=True, ...)`` sent for the same settings (host network, the
    user's ids, every capability dropped, no new privileges, an init, bind mounts)."""
    host: Dict[str, Any] = {
        "NetworkMode": "host",
        "GroupAdd": list(spec.group_add),
        "SecurityOpt": ["no-new-privileges"] + ([f"seccomp={spec.seccomp}"] if spec.seccomp else []),
        "CapDrop": ["ALL"],
        "Init": True,
        "Mounts": [{"Target": dst, "Source": src, "Type": "bind", "ReadOnly": ro} for src, dst, ro in spec.binds],
        "ShmSize": parse_size(spec.shm_size),
    }
    if spec.cpuset_cpus:
        host["CpusetCpus"] = spec.cpuset_cpus
    if spec.mem_limit:
        host["Memory"] = parse_size(spec.mem_limit)
    if spec.ipc_mode:
        host["IpcMode"] = spec.ipc_mode
    if spec.cgroup_parent:
        host["CgroupParent"] = spec.cgroup_parent
    if spec.pids_limit:
        host["PidsLimit"] = spec.pids_limit
    if spec.ulimits:
        host["Ulimits"] = [{"Name": n, "Soft": soft, "Hard": hard} for n, soft, hard in spec.ulimits]
    if spec.tmpfs:
        # exec allowed as on a host's /tmp; sized, so a job cannot fill the node's memory
        host["Tmpfs"] = {path: f"rw,exec,nosuid,nodev,size={size},mode=1777" for path, size in spec.tmpfs}
    if spec.read_only:
        host["ReadonlyRootfs"] = True
    if spec.devices:
        host["Devices"] = [{"PathOnHost": h, "PathInContainer": inside, "CgroupPermissions": "rwm"}
                           for h, inside in spec.devices]
    if spec.gpu_ids:
        host["DeviceRequests"] = [{"Driver": "nvidia", "Count": 0, "DeviceIDs": list(spec.gpu_ids),
                                   "Capabilities": [["gpu"]], "Options": {}}]
    body: Dict[str, Any] = {
        "Image": spec.image, "Cmd": list(spec.command), "Hostname": spec.hostname, "User": spec.user,
        "Labels": dict(spec.labels), "Tty": False, "OpenStdin": False, "StdinOnce": False,
        "AttachStdin": False, "AttachStdout": False, "AttachStderr": False, "NetworkDisabled": False,
        "HostConfig": host}
    if spec.env:
        body["Env"] = [f"{name}={value}" for name, value in spec.env]
    return body


def _short(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " ".join(str(text).split())[:300]


def untagged_tar(source, sink) -> List[str]:
    """Copy a ``docker save`` tar stream from source to sink without any image name in it;
    returns the names it carried. Members are copied as they come (the archive may be
    large and is read once); manifest.json keeps its entries with ``RepoTags`` emptied, the
    legacy ``repositories`` file is dropped, and OCI ``index.json`` loses its name
    annotations. A tar without manifest.json is refused (Docker would fall back to the
    legacy format, whose only names are in ``repositories``)."""
    claimed: List[str] = []
    seen_manifest = False
    names = ("io.containerd.image.name", "org.opencontainers.image.ref.name")
    with tarfile.open(fileobj=source, mode="r|*", bufsize=1 << 20) as tin, \
            tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, bufsize=1 << 20) as tout:
        tout.copybufsize = 1 << 20          # type: ignore[attr-defined]  # (3.8+; typeshed lacks it)
        for member in tin:
            name = os.path.normpath(member.name).lstrip("/")
            if name == "repositories":
                continue
            if name in ("manifest.json", "index.json") and member.isreg():
                handle = tin.extractfile(member)
                try:
                    document = json.loads(handle.read(16 << 20) if handle else b"")
                except ValueError:
                    raise ImageError(f"has a {name} that is not JSON") from None
                if name == "manifest.json":
                    seen_manifest = True
                    for entry in document if isinstance(document, list) else []:
                        if isinstance(entry, dict):
                            claimed += [str(t) for t in entry.get("RepoTags") or []]
                            entry["RepoTags"] = None
                else:
                    for entry in (document.get("manifests") or []) if isinstance(document, dict) else []:
                        annotations = entry.get("annotations") if isinstance(entry, dict) else None
                        if isinstance(annotations, dict):
                            claimed += [str(annotations.pop(k)) for k in names if k in annotations]
                payload = json.dumps(document).encode()
                copy = tarfile.TarInfo(member.name)
                copy.size, copy.mode, copy.mtime = len(payload), member.mode, member.mtime
                tout.addfile(copy, io.BytesIO(payload))
            elif member.isreg():
                tout.addfile(member, tin.extractfile(member))
            else:
                tout.addfile(member)
    if not seen_manifest:
        raise ImageError("has no manifest.json (not made by 'docker save' of Docker 1.10 or later)")
    return list(dict.fromkeys(claimed))
