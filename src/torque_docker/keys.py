"""Per-job secrets derived from one site secret, so nodes agree without talking.

Sisters finish their prologue before the mother superior's starts and cannot send it
anything (docs/torque-facts.md). Everything the MS needs to know about a sister's containers
except the port each one finally took is therefore computed, on every node alike, as
HMAC-SHA256(site secret, purpose, job id, user, group, mother superior, ...): the job's
user key pair, the sshd host key, the banner token, and the candidate ports. HMAC keeps
one job's keys from saying anything about another's, and the secret file is root-only
like munge.key.

Job ids repeat (a new pbs_server database starts again at 0, ``next_job_number`` can be
reset, ids wrap around), so the id alone would hand a later job of ANOTHER user the keys
of an earlier one: whoever kept job 1234.srv's key could log into the next 1234.srv.
Every derivation therefore binds the id to the job's user and group (pbs_mom's ``$2`` and
``$3``) and its mother superior (``PBS_MSHOST``): what every node of the job is told
identically before any container starts (prolog.c: setup_pelog_arguments,
setup_pelog_environment). The parts are length-prefixed, so no two different jobs can
spell the same message.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional, Tuple

from .errors import ConfigError

if TYPE_CHECKING:
    from .torque import HookContext

SECRET_BYTES = 32


def generate_secret(path: str, *, force: bool = False) -> str:
    """Write a new site secret (root, 0400) and return its fingerprint."""
    target = Path(path)
    if target.exists() and not force:
        raise ConfigError(f"{path} already exists", "copy the same file to every node; use --force only to replace it everywhere")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(SECRET_BYTES) + "\n")
    os.replace(tmp, target)
    return fingerprint(load_secret(path))


def load_secret(path: str) -> bytes:
    try:
        info = os.stat(path)
        text = Path(path).read_text().strip()
    except FileNotFoundError:
        raise ConfigError(f"the site secret {path} is missing",
                          "run 'torque-docker keygen' once and copy the file to every node (root, mode 0400)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the site secret {path}: {exc}", "it must be readable by root") from None
    if info.st_uid != 0 or info.st_mode & 0o077:
        raise ConfigError(f"the site secret {path} is readable by others (mode {info.st_mode & 0o777:o}, uid {info.st_uid})",
                          f"chown root {path} && chmod 0400 {path}")
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"the site secret {path} is not hex", "regenerate it with 'torque-docker keygen --force' on one node and copy it") from None
    if len(secret) < 16:
        raise ConfigError(f"the site secret {path} is too short", "regenerate it with 'torque-docker keygen --force'")
    return secret


def fingerprint(secret: bytes) -> str:
    """Safe to show: lets admins compare nodes without revealing the secret."""
    return "SHA256:" + hashlib.sha256(b"torque-docker fingerprint|" + secret).hexdigest()[:16]


@dataclass(frozen=True)
class JobIdentity:
    """What every node of one job knows identically when its prologue runs, and what the
    keys are bound to: the job id, user, group (pbs_mom's $1-$3) and the mother superior."""

    jobid: str
    user: str
    group: str
    mshost: str = ""

    @classmethod
    def of(cls, ctx: "HookContext") -> "JobIdentity":
        return cls(ctx.jobid, ctx.user, ctx.group, ctx.mshost)

    def parts(self) -> Tuple[str, str, str, str]:
        return (self.jobid, self.user, self.group, self.mshost)


DOMAIN = b"torque-docker job secrets v2"


def derivation_message(purpose: str, job: JobIdentity, *extra: object) -> bytes:
    """The HMAC input: each part as a 4-byte length and its bytes, so that no two different
    (purpose, job, ...) tuples give the same message (a '|' inside a name cannot shift fields)."""
    out = [DOMAIN]
    for part in (purpose, *job.parts(), *extra):
        data = str(part).encode("utf-8", "surrogateescape")
        out.append(len(data).to_bytes(4, "big") + data)
    return b"".join(out)


def _derive(secret: bytes, purpose: str, job: JobIdentity, *extra: object) -> bytes:
    return hmac.new(secret, derivation_message(purpose, job, *extra), hashlib.sha256).digest()


@dataclass(frozen=True)
class KeyPair:
    private_openssh: bytes
    public_openssh: str   # "ssh-ed25519 AAAA..."


def _keypair(seed: bytes, comment: str) -> KeyPair:
    """The Ed25519 key pair of a 32-byte seed, as OpenSSH writes it (what cryptography's
    OpenSSH serialization gives, byte for byte but for the random check word)."""
    public = ed25519_public(seed)
    blob = _ssh_string(b"ssh-ed25519") + _ssh_string(public)
    return KeyPair(openssh_private(seed, public), f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}")


#: OpenSSL's NID_ED25519 (EVP_PKEY_ED25519), fixed in its object registry (obj_mac.h).
EVP_PKEY_ED25519 = 1087
_libcrypto_cache: List[Any] = []


def _libcrypto() -> Any:
    """OpenSSL's libcrypto with the three calls ed25519_public needs, or None. Python's
    hashlib has already loaded it; opening it again by name costs nothing."""
    if not _libcrypto_cache:
        import ctypes
        found = None
        for name in ("libcrypto.so.3", "libcrypto.so.1.1"):
            try:
                lib = ctypes.CDLL(name)
                new, get, free = lib.EVP_PKEY_new_raw_private_key, lib.EVP_PKEY_get_raw_public_key, lib.EVP_PKEY_free
            except (OSError, AttributeError):
                continue
            new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
            new.restype = ctypes.c_void_p
            get.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_size_t)]
            get.restype = ctypes.c_int
            free.argtypes = [ctypes.c_void_p]
            free.restype = None
            found = lib
            break
        _libcrypto_cache.append(found)
    return _libcrypto_cache[0]


def ed25519_public(seed: bytes) -> bytes:
    """The Ed25519 public key of ``seed``, computed by OpenSSL (EVP_PKEY_new_raw_private_key,
    the same code cryptography calls) through ctypes: importing cryptography's OpenSSL
    backend costs every prologue 20-35 ms, the call itself microseconds. Where libcrypto
    cannot be used so, cryptography computes it."""
    if len(seed) != 32:
        raise ValueError("an Ed25519 seed is 32 bytes")
    lib = _libcrypto()
    if lib is not None:
        import ctypes
        pkey = lib.EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, None, seed, len(seed))
        if pkey:
            try:
                out, size = ctypes.create_string_buffer(32), ctypes.c_size_t(32)
                if lib.EVP_PKEY_get_raw_public_key(pkey, out, ctypes.byref(size)) == 1 and size.value == 32:
                    return out.raw
            finally:
                lib.EVP_PKEY_free(pkey)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _ssh_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def openssh_private(seed: bytes, public: bytes, check: Optional[bytes] = None) -> bytes:
    """An unencrypted OpenSSH private key file (PROTOCOL.key in OpenSSH's source): the magic,
    cipher and kdf "none", one public key, then the private section (a check word twice,
    the key, an empty comment, padding 1, 2, 3, ... to 8 bytes), base64 in 76-column lines,
    exactly as cryptography writes it."""
    kind = b"ssh-ed25519"
    check = os.urandom(4) if check is None else check
    private = (check + check + _ssh_string(kind) + _ssh_string(public) + _ssh_string(seed + public)
               + _ssh_string(b""))
    private += bytes(range(1, 1 + 8 - len(private) % 8))
    body = (b"openssh-key-v1\0" + _ssh_string(b"none") + _ssh_string(b"none") + _ssh_string(b"")
            + (1).to_bytes(4, "big") + _ssh_string(_ssh_string(kind) + _ssh_string(public)) + _ssh_string(private))
    return b"-----BEGIN OPENSSH PRIVATE KEY-----\n" + base64.encodebytes(body) + b"-----END OPENSSH PRIVATE KEY-----\n"


@dataclass(frozen=True)
class JobSecrets:
    """Everything derived for one job; identical on every node of the job."""

    user_key: KeyPair
    host_key: KeyPair
    token: str

    @classmethod
    def derive(cls, secret: bytes, job: JobIdentity) -> "JobSecrets":
        if not isinstance(job, JobIdentity):
            raise TypeError("JobSecrets.derive needs a JobIdentity (a job id alone repeats)")
        return cls(
            user_key=_keypair(_derive(secret, "user-key", job), f"torque-docker-{job.jobid}"),
            host_key=_keypair(_derive(secret, "host-key", job), f"torque-docker-host-{job.jobid}"),
            token="td" + _derive(secret, "token", job).hex()[:20],
        )


def candidate_ports(secret: bytes, job: JobIdentity, node_index: int, slot: int, port_range: Tuple[int, int],
                    count: int) -> List[int]:
    """Distinct pseudo-random ports for one container, the same on the MS and on the node."""
    if not isinstance(job, JobIdentity):
        raise TypeError("candidate_ports needs a JobIdentity (a job id alone repeats)")
    lo, hi = port_range
    span = hi - lo + 1
    ports: List[int] = []
    counter = 0
    while len(ports) < min(count, span):
        value = int.from_bytes(_derive(secret, "port", job, node_index, slot, counter)[:4], "big")
        port = lo + value % span
        if port not in ports:
            ports.append(port)
        counter += 1
    return ports
