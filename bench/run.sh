#!/bin/bash
# torque-docker benchmarks, one command:  bash bench/run.sh [--quick] [run.py options]
#
# As root on the project's Debian 12 machine, after scripts/setup.sh (Docker, the package):
# installs what only the benchmark needs (idempotent), builds the bench image, fetches
# hpcc's source from Debian (HPL lives inside it) and builds HPL + the ping-pong once,
# then runs bench/run.py. Results: bench/results/<run id>/ (git-ignored).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cache=${TD_BENCH_CACHE:-/var/tmp/td-bench-cache}
export TD_BENCH_CACHE=$cache
log() { echo "bench: $*" >&2; }

[ "$(id -u)" = 0 ] || { echo "bench: run as root (the simulator plays pbs_mom)" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "bench: no Docker daemon; run scripts/setup.sh first" >&2; exit 1; }

# Host packages: the same Open MPI and BLAS the image gets (native runs use them), the
# compiler for HPL and the ping-pong, matplotlib for the chart.
pkgs=(openmpi-bin libopenmpi-dev gcc libc6-dev libopenblas0 libblas3 python3-matplotlib openssh-client)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

bash "$repo/tests/images/build-test-image.sh" bench >&2

# HPL's source, from Debian's hpcc source package (no other network than the package
# registries here). A private deb-src list: the machine's apt sources stay untouched.
src=$cache/src
if [ ! -d "$src/hpcc-1.5.0/hpl" ]; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=$(awk '$1=="deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$mirror" ] || { echo "bench: cannot find the Debian mirror in apt's sources" >&2; exit 1; }
    apt_dir=$cache/apt
    mkdir -p "$apt_dir/lists/partial" "$src"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm main" > "$apt_dir/sources.list"
    opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
          -o "Dir::State::Lists=$apt_dir/lists" -o "APT::Sandbox::User=root")
    log "fetching hpcc's source (HPL) from Debian"
    apt-get -q "${opts[@]}" update >/dev/null
    # Only the upstream tarball is needed; apt checks it against the signed .dsc.
    (cd "$src" && apt-get -q "${opts[@]}" source --download-only hpcc >/dev/null 2>&1 || true)
    orig=$(ls "$src"/hpcc_*.orig.tar.gz 2>/dev/null | head -1)
    [ -n "$orig" ] || { echo "bench: could not download hpcc's source" >&2; exit 1; }
    want=$(awk '/^Checksums-Sha256:/ {f=1; next} f && /orig.tar.gz/ {print $1; exit}' "$src"/hpcc_*.dsc)
    [ "$(sha256sum "$orig" | cut -d' ' -f1)" = "$want" ] || { echo "bench: $orig does not match its .dsc" >&2; exit 1; }
    tar -C "$src" -xzf "$orig"
fi
bash "$here/build-binaries.sh" "$src/hpcc-1.5.0" "$cache/bin" >&2

exec /usr/bin/python3 "$here/run.py" "$@"
