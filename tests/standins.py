"""Stand-in sister containers: what the mother superior sees of a large job on the network.

A test instrument (used by tests/unit and bench/scale.py), not part of the product. One
asyncio process listens for many "sister containers" at once, each on its own loopback
address (127.0.0.0/8 is all local on Linux) and on the candidate port its prologue.parallel
would have taken, and answers like the container's sshd does:

- the banner ``SSH-2.0-OpenSSH_9.2p1 Debian-2 <container token>-<image tag>`` and an
  honest key exchange signed with the job's host key (RFC 4253 section 8, RFC 8731), which
  is what ``probe.find_ports`` checks;
- candidates before the taken one can be held by another job's sshd (another token,
  another host key), as when a port was in use on that node;
- a sister can be slow (its listener opens ``delay`` seconds after start), or dead
  (nothing listens: its container never started), or silent (accepts and never speaks);
- a real OpenSSH client (the MS's push, the first ``mpirun`` hop) is relayed to one real
  sshd given by ``relay`` (host, port): a container of the test image running the job's
  own sshd_config, so logins are the real thing. The client's identification line, which
  OpenSSH sends first, tells a probe from a login.

Run as ``python3 tests/standins.py SPEC.json``; prints ``ready`` once every listener
without a delay is up, and serves until killed. ``Standins`` does that from Python.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import resource
import struct
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_ssh_private_key

PROBE_CLIENT = b"SSH-2.0-torque-docker_probe"


@dataclass
class Sister:
    alias: str
    address: str
    candidates: List[int]
    token: str                       # probe.container_token(...)
    at: int = 0                      # index of the candidate its container took
    taken: List[int] = field(default_factory=list)   # earlier candidates another job holds
    delay: float = 0.0               # its sshd answers this long after start
    dead: bool = False               # nothing listens anywhere
    silent: bool = False             # accepts on its port, never speaks
    relay: Optional[List] = None     # (host, port) of the real sshd its logins go to, if not the common one


def _s(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _blob(key: Ed25519PrivateKey) -> bytes:
    return _s(b"ssh-ed25519") + _s(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def _packet(payload: bytes) -> bytes:
    pad = 8 - (5 + len(payload)) % 8
    pad = pad + 8 if pad < 4 else pad
    return struct.pack(">IB", 1 + len(payload) + pad, pad) + payload + bytes(pad)


async def _read_packet(reader: asyncio.StreamReader) -> bytes:
    length = struct.unpack(">I", await reader.readexactly(4))[0]
    body = await reader.readexactly(length)
    return body[1:length - body[0]]


class Server:
    def __init__(self, sisters: Sequence[Sister], host_key: Ed25519PrivateKey, image_tag: str,
                 relay: Optional[Tuple[str, int]]) -> None:
        self.sisters, self.key, self.image_tag, self.relay = sisters, host_key, image_tag, relay
        self.other_key = Ed25519PrivateKey.generate()
        self.servers: List[asyncio.AbstractServer] = []

    async def _kex(self, reader, writer, version: bytes, client_version: bytes, key: Ed25519PrivateKey) -> None:
        names = lambda *n: _s(",".join(n).encode())   # noqa: E731
        server_kexinit = (bytes([20]) + os.urandom(16) + names("curve25519-sha256") + names("ssh-ed25519")
                          + names("aes128-ctr") * 2 + names("hmac-sha2-256") * 2 + names("none") * 2
                          + names() * 2 + b"\0" + bytes(4))
        writer.write(_packet(server_kexinit))
        client_kexinit = await _read_packet(reader)
        init = await _read_packet(reader)
        if init[0] != 30:
            return
        q_c = init[5:5 + struct.unpack(">I", init[1:5])[0]]
        ephemeral = X25519PrivateKey.generate()
        q_s = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        secret = ephemeral.exchange(X25519PublicKey.from_public_bytes(q_c))
        k = secret.lstrip(b"\0")
        k = b"\0" + k if k and k[0] & 0x80 else k
        h = hashlib.sha256(_s(client_version) + _s(version) + _s(client_kexinit) + _s(server_kexinit)
                           + _s(_blob(key)) + _s(q_c) + _s(q_s) + _s(k)).digest()
        writer.write(_packet(bytes([31]) + _s(_blob(key)) + _s(q_s) + _s(_s(b"ssh-ed25519") + _s(key.sign(h)))))
        await writer.drain()
        await reader.read(1)          # the probe hangs up

    async def _relay(self, reader, writer, first: bytes, target: Tuple[str, int]) -> None:
        up_reader, up_writer = await asyncio.open_connection(*target)
        up_writer.write(first)

        async def pump(src, dst) -> None:
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                try:
                    dst.write_eof()
                except (OSError, RuntimeError):
                    pass

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        up_writer.close()

    def handler(self, token: str, key: Ed25519PrivateKey, silent: bool = False,
                relay: Optional[Tuple[str, int]] = None):
        target = relay or self.relay

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                if silent:
                    await reader.read(1 << 16)
                    return
                version = f"SSH-2.0-OpenSSH_9.2p1 Debian-2 {token}-{self.image_tag}".encode()
                relaying = target is not None and key is self.key
                if not relaying:             # like sshd: the banner first
                    writer.write(version + b"\r\n")
                try:
                    first = await asyncio.wait_for(reader.readline(), 2.0)
                except asyncio.TimeoutError:
                    first = b""
                if first and not first.startswith(PROBE_CLIENT) and relaying:
                    await self._relay(reader, writer, first, target)   # type: ignore[arg-type]
                    return
                if relaying:
                    writer.write(version + b"\r\n")
                if first:
                    await self._kex(reader, writer, version, first.rstrip(b"\r\n"), key)
            except (ConnectionError, OSError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
        return serve

    async def listen(self, address: str, port: int, handler) -> None:
        self.servers.append(await asyncio.start_server(handler, address, port, backlog=256, reuse_address=True))

    async def start(self) -> None:
        later = []
        for sister in self.sisters:
            if sister.dead:
                continue
            for index in sister.taken:
                await self.listen(sister.address, sister.candidates[index],
                                  self.handler(sister.token.split(".")[0] + "x.n0s0", self.other_key))
            own = (sister.address, sister.candidates[sister.at],
                   self.handler(sister.token, self.key, silent=sister.silent,
                                relay=pair(sister.relay) if sister.relay else None))
            if sister.delay > 0:
                later.append((sister.delay, own))
            else:
                await self.listen(*own)
        for delay, own in later:
            asyncio.get_running_loop().call_later(delay, lambda own=own: asyncio.ensure_future(self.listen(*own)))


def pair(value: Sequence) -> Tuple[str, int]:
    return str(value[0]), int(value[1])


async def _main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    key = load_ssh_private_key(spec["host_private"].encode(), None)
    assert isinstance(key, Ed25519PrivateKey)
    relay = tuple(spec["relay"]) if spec.get("relay") else None
    server = Server([Sister(**s) for s in spec["sisters"]], key, spec.get("image_tag", "0"), relay)  # type: ignore[arg-type]
    await server.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


class Standins:
    """The stand-in process, started and stopped from Python (a context manager)."""

    def __init__(self, sisters: Sequence[Sister], host_private_openssh: "str | bytes", workdir: Path, image_tag: str = "0",
                 relay: Optional[Tuple[str, int]] = None) -> None:
        self.spec = workdir / "standins.json"
        self.spec.write_text(json.dumps({"sisters": [asdict(s) for s in sisters], "host_private": host_private_openssh.decode() if isinstance(host_private_openssh, bytes)
                                         else host_private_openssh,
                                         "image_tag": image_tag, "relay": list(relay) if relay else None}))
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "Standins":
        self.proc = subprocess.Popen([sys.executable, __file__, str(self.spec)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError("stand-in sisters did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class ScaleJob:
    """Everything the MS's connect step takes, for a job of stand-in sisters (see scale_job)."""
    ctx: object
    cfg: object
    state: object
    user: object
    nodes: list
    local_started: list
    address: str
    secrets: object
    hosts: list
    sisters: List[Sister]


def scale_job(workdir: Path, num_nodes: int, slots: int, model: str, *, base: Tuple[int, int] = (127, 3),
              jobid: str = "1.scale", user_name: str = "tduser", ready_timeout: float = 60.0,
              dead: Sequence[int] = (), slow: Sequence[int] = (), slow_delay: float = 5.0,
              taken_every: int = 10) -> ScaleJob:
    """A job of ``num_nodes`` x ``slots`` as the MS's prologue has it when its connect step
    starts (plan from exec_host, keys, its own containers up), and stand-in sisters for
    every other node: every ``taken_every``-th sister container found its first two
    candidates taken by another job; nodes in ``dead`` never answer, those in ``slow``
    answer ``slow_delay`` seconds after the stand-ins start. Node addresses are loopback
    addresses, which the plan uses as node names (they resolve to themselves)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from torque_docker import config, identity, keys, plan, probe
    from torque_docker.records import JobRecord, StartedContainer
    from torque_docker.state import NodeState
    from torque_docker.torque import HookContext

    hosts_of = addresses(num_nodes, base)
    assigned = [h for h in hosts_of for _ in range(slots)]
    secret = bytes(range(32))
    # Only the name reaches the connect step (the SSH config's User); ids as an ordinary user's.
    user = identity.UserInfo(user_name, 2001, 2001, "/nonexistent", "/bin/sh", "", ((user_name, 2001),))
    environ = {"PBS_MSHOST": hosts_of[0]}
    nodefile = workdir / "aux" / jobid
    nodefile.parent.mkdir(parents=True, exist_ok=True)
    nodefile.write_text("".join(f"{h}\n" for h in assigned))
    ctx = HookContext(kind="prologue", jobid=jobid, user=user.name, group=user.groups[0][0], jobname="scale",
                      resource_list=f"nodes={num_nodes}:ppn={slots},other=image=x;model={model}", node_index=0,
                      pbs_home=workdir, workdir=str(workdir), nodefile=nodefile, environ=environ)
    cfg = dataclasses.replace(config.defaults(), ssh_include_dir=str(workdir / "ssh"),
                              paths_state_dir=str(workdir / "state"), ssh_ready_timeout=ready_timeout)
    job = keys.JobIdentity.of(ctx)  # type: ignore[arg-type]
    secrets_ = keys.JobSecrets.derive(secret, job)

    def ports(node_index: int, slot: int) -> List[int]:
        return keys.candidate_ports(secret, job, node_index, slot, cfg.network_port_range,
                                    cfg.network_port_candidates)

    nodes = plan.plan_job(jobid, assigned, model, ports)
    state = NodeState(cfg.paths_state_dir)
    state.ensure()
    ctr = state.ctr_dir(jobid)
    ctr.mkdir(parents=True)
    (ctr / "ssh.d").mkdir()
    for name in ("ssh_config", "hosts", "hosts-launcher"):
        (ctr / name).write_text("")
    state.save_job(JobRecord(jobid=jobid))
    local_started: List[StartedContainer] = []
    for c in nodes[0].containers:
        port = next(p for p in c.candidates if p not in {s.port for s in local_started})
        local_started.append(StartedContainer(name=c.name, alias=c.alias, port=port, slot=c.slot, address=hosts_of[0]))
    sisters = []
    count = 0
    used = {(hosts_of[0], c.port) for c in local_started}
    for node in nodes[1:]:
        for c in node.containers:
            count += 1
            address = hosts_of[node.index]
            # Containers of one node may share candidates: a later one takes the next free
            # one, as the node's port reservation makes it.
            taken = [i for i in ([0, 1] if taken_every and count % taken_every == 0 else [])
                     if (address, c.candidates[i]) not in used]
            at = max(taken, default=-1) + 1
            while (address, c.candidates[at]) in used:
                at += 1
            used.update({(address, c.candidates[i]) for i in taken + [at]})
            sisters.append(Sister(alias=c.alias, address=address, candidates=list(c.candidates),
                                  token=probe.container_token(secrets_.token, node.index, c.slot),
                                  at=at, taken=taken, dead=node.index in dead,
                                  delay=slow_delay if node.index in slow else 0.0))
    # The MS's own containers answer too (the first hop from a sister, the push's relay).
    for c, started in zip(nodes[0].containers, local_started):
        sisters.append(Sister(alias=c.alias, address=hosts_of[0], candidates=list(c.candidates),
                              token=probe.container_token(secrets_.token, 0, c.slot),
                              at=c.candidates.index(started.port)))
    return ScaleJob(ctx, cfg, state, user, nodes, local_started, hosts_of[0], secrets_, assigned, sisters)


def addresses(count: int, base: Tuple[int, int] = (127, 3)) -> List[str]:
    """``count`` distinct loopback addresses, 127.3.0.1 onwards (the tests' nodes use 127.0.1.x)."""
    return [f"{base[0]}.{base[1] + (i + 1) // 65536}.{((i + 1) // 256) % 256}.{(i + 1) % 256}" for i in range(count)]


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(_main(sys.argv[1]))
