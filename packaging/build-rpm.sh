#!/bin/bash
# Build the torque-docker noarch RPM with rpmbuild.
#
#   bash packaging/build-rpm.sh [--git] [OUTDIR]      (OUTDIR default: dist/)
#
# Source0 is made from the working tree (what you have checked out, edits included),
# or with --git from `git archive HEAD` (a release: exactly what is committed).
# rpmbuild runs in a private temporary _topdir; only the .rpm files land in OUTDIR.
# On a machine whose Python is not managed by rpm (Debian with its `rpm` package) the
# BuildRequires cannot be checked against an rpm database, so they are skipped there.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
from_git=0
if [ "${1:-}" = "--git" ]; then from_git=1; shift; fi
out=${1:-$repo/dist}
spec=$repo/packaging/torque-docker.spec
name=torque-docker
version=$(sed -n 's/^Version:[[:space:]]*//p' "$spec")
[ -n "$version" ] || { echo "build-rpm: no Version: in $spec" >&2; exit 1; }
command -v rpmbuild >/dev/null || { echo "build-rpm: rpmbuild is missing (dnf install rpm-build / apt-get install rpm)" >&2; exit 1; }

top=$(mktemp -d "${TMPDIR:-/tmp}/td-rpmbuild.XXXXXX")
trap 'rm -rf "$top"' EXIT
mkdir -p "$top"/{SOURCES,SPECS,BUILD,BUILDROOT,RPMS,SRPMS}
tarball=$top/SOURCES/$name-$version.tar.gz
if [ $from_git = 1 ]; then
    git -C "$repo" archive --format=tar.gz --prefix="$name-$version/" -o "$tarball" HEAD
else
    # 'S': the package's hooks/ and templates/ symlinks keep their relative targets.
    tar -C "$repo" --exclude=__pycache__ --exclude='*.egg-info' --exclude='*.pyc' \
        --transform "s,^,$name-$version/,S" --owner=0 --group=0 \
        -czf "$tarball" README.md docs setup.cfg pyproject.toml src hooks templates packaging
fi
cp "$spec" "$top/SPECS/"

nodeps=()
rpm -q --whatprovides python3 >/dev/null 2>&1 || nodeps=(--nodeps)
rpmbuild -bb "${nodeps[@]}" --define "_topdir $top" "$top/SPECS/$name.spec" >"$top/build.log" 2>&1 \
    || { tail -40 "$top/build.log" >&2; echo "build-rpm: rpmbuild failed" >&2; exit 1; }

mkdir -p "$out"
find "$top/RPMS" -name '*.rpm' -exec cp {} "$out/" \; -exec sh -c 'echo "$1/$(basename "$2")"' _ "$out" {} \;
