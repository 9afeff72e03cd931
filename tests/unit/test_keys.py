import os

import pytest

from torque_docker import keys
from torque_docker.errors import ConfigError

SECRET = bytes(range(32))


def job(jobid: str, user: str = "alice", group: str = "alice", mshost: str = "n01") -> keys.JobIdentity:
    return keys.JobIdentity(jobid, user, group, mshost)


def test_derivation_is_deterministic_and_per_job():
    a1, a2, b = (keys.JobSecrets.derive(SECRET, job(j)) for j in ("1.s", "1.s", "2.s"))
    # The OpenSSH private key file carries a random check word; the key itself is the same.
    assert (a1.user_key.public_openssh, a1.host_key.public_openssh, a1.token) == \
        (a2.user_key.public_openssh, a2.host_key.public_openssh, a2.token)
    assert a1.user_key.public_openssh != b.user_key.public_openssh
    assert a1.host_key.public_openssh != a1.user_key.public_openssh
    assert a1.token != b.token
    assert a1.user_key.private_openssh.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert a1.user_key.public_openssh.startswith("ssh-ed25519 ")


def test_other_secret_other_keys():
    assert keys.JobSecrets.derive(SECRET, job("1.s")).user_key.public_openssh != \
        keys.JobSecrets.derive(b"x" * 32, job("1.s")).user_key.public_openssh


def test_candidate_ports_distinct_in_range_and_stable():
    ports = keys.candidate_ports(SECRET, job("1.s"), 1, 0, (40000, 40015), 16)
    assert sorted(ports) == list(range(40000, 40016))
    assert ports == keys.candidate_ports(SECRET, job("1.s"), 1, 0, (40000, 40015), 16)
    assert ports != keys.candidate_ports(SECRET, job("1.s"), 2, 0, (40000, 40015), 16)
    assert len(keys.candidate_ports(SECRET, job("1.s"), 0, 0, (40000, 40999), 8)) == 8


def everything(identity: keys.JobIdentity):
    """Every value derived for a job: key material, token, candidate ports of a few containers."""
    s = keys.JobSecrets.derive(SECRET, identity)
    ports = [tuple(keys.candidate_ports(SECRET, identity, n, slot, (40000, 40999), 16))
             for n in range(3) for slot in range(2)]
    return {"user key": s.user_key.public_openssh.split()[1], "host key": s.host_key.public_openssh.split()[1],
            "token": s.token, "ports": ports}


@pytest.mark.parametrize("other", [
    job("1234.srv", user="bob", group="bob"),             # another user's job under a reused id
    job("1234.srv", user="alice", group="projx"),          # the same user, another group
    job("1234.srv", mshost="n02"),                          # the same id run from another mother superior
])
def test_one_job_id_of_two_jobs_shares_no_key_token_or_port(other):
    """Job ids repeat (new server database, wrap-around): whoever kept job 1234.srv's key
    must get nothing of the next 1234.srv of someone else."""
    mine, theirs = everything(job("1234.srv")), everything(other)
    assert mine["user key"] != theirs["user key"] and mine["host key"] != theirs["host key"]
    assert mine["token"] != theirs["token"]
    assert all(a != b for a, b in zip(mine["ports"], theirs["ports"]))
    assert everything(job("1234.srv")) == mine                    # and every node still agrees


def test_fields_cannot_be_shifted_into_each_other():
    """Length-prefixed parts: 'a|b' as a user is not 'a' and 'b' as user and group."""
    pairs = [(job("1.s", user="a|b", group="c"), job("1.s", user="a", group="b|c")),
             (job("1.s|a", user="b"), job("1.s", user="a|b")),
             (job("1.s", user="ab", group=""), job("1.s", user="a", group="b"))]
    for left, right in pairs:
        assert keys.derivation_message("token", left) != keys.derivation_message("token", right)
        assert keys.JobSecrets.derive(SECRET, left).token != keys.JobSecrets.derive(SECRET, right).token


def test_a_bare_job_id_is_refused():
    with pytest.raises(TypeError, match="JobIdentity"):
        keys.JobSecrets.derive(SECRET, "1.s")
    with pytest.raises(TypeError, match="JobIdentity"):
        keys.candidate_ports(SECRET, "1.s", 0, 0, (40000, 40999), 4)


def test_identity_comes_from_what_pbs_mom_gives_every_node():
    from torque_docker.torque import context_from
    env = {"PBS_MSHOST": "n01", "PBS_NODENUM": "1"}
    ms = context_from("prologue", ["/x/mom_priv/prologue", "7.s", "alice", "grp", "name", "nodes=2"], env, cwd="/")
    sister = context_from("prologue.parallel", ["/y/mom_priv/prologue.parallel", "7.s", "alice", "grp", "name",
                                                "nodes=2"], env, cwd="/")
    assert keys.JobIdentity.of(ms) == keys.JobIdentity.of(sister) == keys.JobIdentity("7.s", "alice", "grp", "n01")


def test_generate_and_load_secret(tmp_path):
    path = str(tmp_path / "secret")
    fp = keys.generate_secret(path)
    assert oct(os.stat(path).st_mode & 0o777) == "0o400"
    assert keys.fingerprint(keys.load_secret(path)) == fp
    with pytest.raises(ConfigError, match="already exists"):
        keys.generate_secret(path)


def test_secret_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "secret"
    path.write_text("ab" * 32)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 0400"):
        keys.load_secret(str(path))


def test_missing_secret_says_how_to_make_one(tmp_path):
    with pytest.raises(ConfigError, match="torque-docker keygen"):
        keys.load_secret(str(tmp_path / "nope"))


# ----------------------------------------------------------------------------- keys without cryptography's backend
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")


def _check_word(pem: bytes) -> bytes:
    """The private section's check word of an unencrypted OpenSSH ed25519 key file."""
    import base64
    body = base64.b64decode(b"".join(pem.splitlines()[1:-1]))
    at = len(b"openssh-key-v1\0") + (4 + 4) + (4 + 4) + 4 + 4 + (4 + (4 + 11) + (4 + 32)) + 4
    return body[at:at + 4]


@pytest.mark.parametrize("through_libcrypto", [True, False])
def test_key_pairs_are_what_cryptography_makes_byte_for_byte(monkeypatch, through_libcrypto):
    """The public key comes from OpenSSL through ctypes (cryptography's import costs every
    prologue 20-35 ms), else from cryptography; the file is cryptography's format."""
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    if through_libcrypto:
        assert keys._libcrypto() is not None          # this machine's OpenSSL is used
    else:
        monkeypatch.setattr(keys, "_libcrypto", lambda: None)
    assert keys.ed25519_public(RFC8032_SEED) == RFC8032_PUBLIC
    for seed in [RFC8032_SEED] + [os.urandom(32) for _ in range(50)]:
        key = Ed25519PrivateKey.from_private_bytes(seed)
        theirs = key.private_bytes(s.Encoding.PEM, s.PrivateFormat.OpenSSH, s.NoEncryption())
        pair = keys._keypair(seed, "torque-docker-1.s")
        public = key.public_key().public_bytes(s.Encoding.OpenSSH, s.PublicFormat.OpenSSH).decode()
        assert pair.public_openssh == f"{public} torque-docker-1.s"
        assert keys.openssh_private(seed, keys.ed25519_public(seed), _check_word(theirs)) == theirs
        loaded = s.load_ssh_private_key(pair.private_openssh, password=None)
        assert loaded.private_bytes(s.Encoding.Raw, s.PrivateFormat.Raw, s.NoEncryption()) == seed
    with pytest.raises(ValueError):
        keys.ed25519_public(b"short")


def test_openssh_reads_the_key_files(tmp_path):
    import shutil
    import subprocess
    if not shutil.which("ssh-keygen"):
        pytest.skip("no ssh-keygen on this machine")
    pair = keys._keypair(os.urandom(32), "c")
    path = tmp_path / "id_ed25519"
    path.write_bytes(pair.private_openssh)
    path.chmod(0o600)
    shown = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True)
    assert shown.stdout.split()[:2] == pair.public_openssh.split()[:2]


def test_deriving_a_jobs_keys_does_not_import_cryptography():
    import subprocess
    import sys
    code = ("import sys\nfrom torque_docker import keys\n"
            "keys.JobSecrets.derive(bytes(32), keys.JobIdentity('1.s', 'u', 'u', 'n0'))\n"
            "print('cryptography' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
