#!/bin/bash
# Build a test image from a debootstrap root filesystem and `docker import` it.
# No registry is reachable on the project's machines, so tests cannot pull images:
# they use this one. It is cached by tag and rebuilt only when this script (or the
# MPI program it compiles) changes, which the image's `build-hash` label records.
#
#   build-test-image.sh openmpi [TAG]   sshd + Open MPI (+ compiler), tag torque-docker-test/openmpi:latest
#   build-test-image.sh mpich   [TAG]   sshd + MPICH (+ compiler),    tag torque-docker-test/mpich:latest
#   build-test-image.sh nosshd  [TAG]   no sshd at all (for refusal tests)
#   build-test-image.sh bench   [TAG]   sshd + Open MPI + OpenBLAS and reference BLAS, no compiler:
#                                       bench/ runs the same host-built HPL and ping-pong in it
set -euo pipefail
flavour=${1:?usage: build-test-image.sh openmpi|mpich|nosshd|bench [TAG]}
tag=${2:-torque-docker-test/$flavour:latest}
here=$(cd "$(dirname "$0")" && pwd)
hash=$(cat "$0" "$here/mpi_hello.c" | sha256sum | cut -c1-16)-$flavour

if [ "$(docker image inspect -f '{{index .Config.Labels "build-hash"}}' "$tag" 2>/dev/null)" = "$hash" ]; then
    echo "image $tag is current ($hash)"
    exit 0
fi

# The Debian mirror apt already uses on this machine (never a hard-coded host).
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '$1=="deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || { echo "build-test-image: cannot find the Debian mirror in apt's sources" >&2; exit 1; }

case $flavour in
    openmpi) runtime=openssh-server,openssh-client,openmpi-bin; dev="libopenmpi-dev gcc libc6-dev" ;;
    mpich)   runtime=openssh-server,openssh-client,mpich;       dev="libmpich-dev gcc libc6-dev" ;;
    nosshd)  runtime=procps; dev="" ;;
    bench)   runtime=openssh-server,openssh-client,openmpi-bin,libopenblas0,libblas3; dev="" ;;
    *) echo "unknown flavour $flavour" >&2; exit 2 ;;
esac

root=$(mktemp -d /var/tmp/td-rootfs.XXXXXX)
trap 'umount "$root/proc" 2>/dev/null || true; rm -rf "$root"' EXIT
debootstrap --variant=minbase --include="$runtime" bookworm "$root" "$mirror" >"$root.log" 2>&1 \
    || { tail -30 "$root.log" >&2; exit 1; }
rm -f "$root.log"
if [ -n "$dev" ]; then
    mount -t proc proc "$root/proc"
    chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $dev >/dev/null
    mkdir -p "$root/opt/tdtest"
    cp "$here/mpi_hello.c" "$root/opt/tdtest/"
    chroot "$root" mpicc -O2 -o /opt/tdtest/mpi_hello /opt/tdtest/mpi_hello.c
    umount "$root/proc"
fi
# The package bakes host keys into the image; torque-docker supplies per-job ones.
rm -f "$root"/etc/ssh/ssh_host_*
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/*
echo "inside-the-$flavour-image" > "$root/etc/torque-docker-test-marker"
tar -C "$root" -c . | docker import -c "LABEL build-hash=$hash" -c 'CMD ["/bin/bash"]' - "$tag" >/dev/null
echo "built $tag ($hash)"
