/* MPI ping-pong between ranks 0 and 1: half the round-trip time (latency) and the
 * bandwidth it implies, per message size. Each size is measured in REPS batches and the
 * median batch is reported, so one descheduled moment on a noisy machine does not decide.
 * Batches last about BATCH seconds (calibrated per size), so a whole run stays short.
 *   pingpong [max_bytes]   rank 0 prints, per size, the median batch and the fastest one:
 *   PINGPONG bytes=<n> iters=<i> lat_us=<t> bw_MBps=<b> lat_min_us=<t> bw_max_MBps=<b>
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REPS 7
#define BATCH 0.02   /* seconds of traffic per batch */

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void round_trip(int rank, char *buf, long bytes)
{
    if (rank == 0) {
        MPI_Send(buf, (int)bytes, MPI_CHAR, 1, 0, MPI_COMM_WORLD);
        MPI_Recv(buf, (int)bytes, MPI_CHAR, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    } else if (rank == 1) {
        MPI_Recv(buf, (int)bytes, MPI_CHAR, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Send(buf, (int)bytes, MPI_CHAR, 0, 0, MPI_COMM_WORLD);
    }
}

int main(int argc, char **argv)
{
    int rank, size;
    long max_bytes = argc > 1 ? atol(argv[1]) : 4L << 20;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size < 2) {
        if (rank == 0) fprintf(stderr, "pingpong needs 2 ranks\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    char *buf = malloc(max_bytes > 0 ? max_bytes : 1);
    memset(buf, 1, max_bytes > 0 ? max_bytes : 1);
    for (long bytes = 1; bytes <= max_bytes; bytes *= 4) {
        /* Calibrate: batches of about BATCH seconds whatever the size and the transport
         * (a rank sharing a core with its peer can take milliseconds per round trip). */
        double t0 = 0.0;
        int iters = 1;
        for (int k = 0; k < 11; k++) {
            MPI_Barrier(MPI_COMM_WORLD);
            if (k == 1) t0 = MPI_Wtime();
            round_trip(rank, buf, bytes);
        }
        if (rank == 0) {
            double rtt = (MPI_Wtime() - t0) / 10.0;
            iters = rtt > 0 ? (int)(BATCH / rtt) : 10000;
            iters = iters < 10 ? 10 : iters > 10000 ? 10000 : iters;
        }
        MPI_Bcast(&iters, 1, MPI_INT, 0, MPI_COMM_WORLD);
        double t[REPS];
        for (int r = -1; r < REPS; r++) {   /* r == -1: warm-up */
            MPI_Barrier(MPI_COMM_WORLD);
            double start = MPI_Wtime();
            for (int i = 0; i < iters; i++) {
                round_trip(rank, buf, bytes);
            }
            double dt = MPI_Wtime() - start;
            if (r >= 0) t[r] = dt / iters / 2.0;
        }
        if (rank == 0) {
            qsort(t, REPS, sizeof t[0], cmp);
            double half = t[REPS / 2], fastest = t[0];
            printf("PINGPONG bytes=%ld iters=%d lat_us=%.3f bw_MBps=%.1f lat_min_us=%.3f bw_max_MBps=%.1f\n",
                   bytes, iters, half * 1e6, bytes / half / 1e6, fastest * 1e6, bytes / fastest / 1e6);
            fflush(stdout);
        }
    }
    free(buf);
    MPI_Finalize();
    return 0;
}
