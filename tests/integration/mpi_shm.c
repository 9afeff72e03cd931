/* Rank 0 writes into a POSIX shared-memory segment; rank 1, in a sibling container on the
 * same node, must read it back. Exits non-zero when it cannot: that is what happens when
 * the containers do not share an IPC namespace (and so /dev/shm). */
#include <fcntl.h>
#include <mpi.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int rank, ok = 1;
    char name[64];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    snprintf(name, sizeof name, "/td-shm-test-%d", (int)getuid());
    if (rank == 0) {
        int fd = shm_open(name, O_CREAT | O_RDWR, 0600);
        ok = fd >= 0 && ftruncate(fd, 4096) == 0;
        if (ok) {
            char *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            strcpy(p, "written-by-rank-0");
        }
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 1) {
        char buf[64] = "";
        int fd = shm_open(name, O_RDONLY, 0);
        ok = fd >= 0;
        if (ok) {
            char *p = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
            strncpy(buf, p, sizeof buf - 1);
            ok = strcmp(buf, "written-by-rank-0") == 0;
        }
        printf("rank=1 shm=%s read=%s\n", ok ? "ok" : "fail", buf);
        fflush(stdout);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0)
        shm_unlink(name);
    MPI_Finalize();
    return ok ? 0 : 3;
}
