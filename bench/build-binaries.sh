#!/bin/bash
# Build the benchmark programs ONCE, on the host, into OUT; native runs and container runs
# then execute the very same files (the containers see them through the job's working
# directory, which torque-docker bind-mounts). Host and bench image are both Debian 12 with
# the same Open MPI and BLAS packages (run.py checks the versions match).
#
#   build-binaries.sh HPCC_SOURCE_DIR OUT
#     OUT/xhpl-openblas   HPL (from hpcc's source) on OpenBLAS (pthread build, run with 1 thread)
#     OUT/xhpl-refblas    the same HPL on the reference BLAS (netlib, Debian's libblas3)
#     OUT/pingpong        MPI ping-pong, latency and bandwidth
set -euo pipefail
src=${1:?usage: build-binaries.sh HPCC_SOURCE_DIR OUT}
out=${2:?usage: build-binaries.sh HPCC_SOURCE_DIR OUT}
here=$(cd "$(dirname "$0")" && pwd)
hpl=$src/hpl
mkdir -p "$out/obj"
libdir=/usr/lib/x86_64-linux-gnu
# HPL's Fortran-BLAS calling convention (dgemm_ etc.), which every libblas.so.3 exports.
defs="-include $here/src/mpi3_compat.h -DAdd_ -DF77_INTEGER=int -DStringSunStyle -I$hpl/include"
sources=("$hpl"/src/{auxil,blas,comm,grid,panel,pauxil,pfact,pgesv}/*.c
         "$hpl"/testing/{matgen,timer,pmatgen,ptimer,ptest}/*.c "$here/src/xhpl_main.c")
objs=()
for c in "${sources[@]}"; do objs+=("$out/obj/$(basename "${c%.c}").o"); done
printf '%s\n' "${sources[@]}" | xargs -P "$(nproc)" -I{} sh -c \
    'c={}; o='"$out"'/obj/$(basename "${c%.c}").o; [ "$o" -nt "$c" ] || mpicc -O3 -fomit-frame-pointer -funroll-loops -w '"$defs"' -c "$c" -o "$o"'
# The BLAS is chosen by the run path, not by Debian's libblas.so.3 alternative (which may
# point at either): DT_RPATH wins over LD_LIBRARY_PATH and the alternatives link.
mpicc -o "$out/xhpl-openblas" "${objs[@]}" -L"$libdir/openblas-pthread" -Wl,--disable-new-dtags,-rpath,"$libdir/openblas-pthread" -lblas -lm
mpicc -o "$out/xhpl-refblas" "${objs[@]}" -L"$libdir/blas" -Wl,--disable-new-dtags,-rpath,"$libdir/blas" -l:libblas.so.3 -lm
mpicc -O2 -o "$out/pingpong" "$here/src/pingpong.c"
echo "built $out/xhpl-openblas $out/xhpl-refblas $out/pingpong"
