import os

import pytest

from torque_docker import keys
from torque_docker.errors import ConfigError

SECRET = bytes(range(32))


def test_derivation_is_deterministic_and_per_job():
    a1, a2, b = (keys.JobSecrets.derive(SECRET, j) for j in ("1.s", "1.s", "2.s"))
    # The OpenSSH private key file carries a random check word; the key itself is the same.
    assert (a1.user_key.public_openssh, a1.host_key.public_openssh, a1.token) == \
        (a2.user_key.public_openssh, a2.host_key.public_openssh, a2.token)
    assert a1.user_key.public_openssh != b.user_key.public_openssh
    assert a1.host_key.public_openssh != a1.user_key.public_openssh
    assert a1.token != b.token
    assert a1.user_key.private_openssh.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert a1.user_key.public_openssh.startswith("ssh-ed25519 ")


def test_other_secret_other_keys():
    assert keys.JobSecrets.derive(SECRET, "1.s").user_key.public_openssh != \
        keys.JobSecrets.derive(b"x" * 32, "1.s").user_key.public_openssh


def test_candidate_ports_distinct_in_range_and_stable():
    ports = keys.candidate_ports(SECRET, "1.s", 1, 0, (40000, 40015), 16)
    assert sorted(ports) == list(range(40000, 40016))
    assert ports == keys.candidate_ports(SECRET, "1.s", 1, 0, (40000, 40015), 16)
    assert ports != keys.candidate_ports(SECRET, "1.s", 2, 0, (40000, 40015), 16)
    assert len(keys.candidate_ports(SECRET, "1.s", 0, 0, (40000, 40999), 8)) == 8


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
