#!/bin/bash
# Everything the tests, the demo and the benchmarks need on a fresh Debian 12 machine,
# as root. Idempotent: a second run only checks. Every install step of the project is
# here (CI runs on a fresh machine where nothing else was installed by hand).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
log() { printf '[setup %(%H:%M:%S)T] %s\n' -1 "$*"; }

[ "$(id -u)" = 0 ] || { echo "setup.sh: run as root (it installs packages and starts dockerd)" >&2; exit 1; }

packages=(
    docker.io openssh-client debootstrap rpm procps iproute2 util-linux
    openmpi-bin libopenmpi-dev mpich
    python3 python3-pip python3-setuptools python3-docker python3-jinja2 python3-filelock python3-cryptography
    python3-pytest python3-pytest-mock python3-hypothesis python3-matplotlib python3-pyflakes python3-mypy
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/var/log/torque-docker-apt.log 2>&1 \
        || { tail -30 /var/log/torque-docker-apt.log >&2; exit 1; }
fi

# Debian's mpich and openmpi both provide mpirun: the host's must be Open MPI (the test
# image's MPI for run=host jobs).
update-alternatives --set mpirun /usr/bin/mpirun.openmpi >/dev/null 2>&1 || true
update-alternatives --set mpi /usr/include/x86_64-linux-gnu/openmpi >/dev/null 2>&1 || true

if ! docker info >/dev/null 2>&1; then
    log "starting dockerd"
    nohup dockerd >/var/log/dockerd.log 2>&1 &
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { tail -20 /var/log/dockerd.log >&2; echo "dockerd did not start" >&2; exit 1; }
fi

# The package, for the system Python the hooks run under (/usr/bin/python3). The job
# starter runs as the job user, who must be able to import it: editable (handy while
# developing) only when ordinary users can read this checkout, else a real copy.
install_args=(.)
if su -s /bin/sh nobody -c "test -r '$PWD/src/torque_docker/__init__.py'" 2>/dev/null; then
    install_args=(-e .)
fi
log "installing torque-docker for /usr/bin/python3 (${install_args[*]})"
/usr/bin/python3 -m pip install -q --break-system-packages --no-deps --no-build-isolation --force-reinstall \
    "${install_args[@]}" 2>&1 | grep -v "Running pip as the 'root' user" || true
rm -rf build src/*.egg-info
(cd / && su -s /bin/sh nobody -c '/usr/bin/python3 -c "import torque_docker.starter"') \
    || { echo "setup.sh: torque_docker is not importable by ordinary users" >&2; exit 1; }

# Job users for the tests and the demo (never root).
id tduser >/dev/null 2>&1 || useradd -m -u 2001 -s /bin/bash tduser
id tduser2 >/dev/null 2>&1 || useradd -m -u 2002 -s /bin/bash tduser2
chmod 0755 /home/tduser /home/tduser2

# Test images, each cached by a hash of its recipe.
log "test images"
bash tests/images/build-test-image.sh openmpi
bash tests/images/build-test-image.sh mpich
bash tests/images/build-test-image.sh nosshd
log "ready"
