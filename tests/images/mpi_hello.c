/* Each rank prints its host name, uid and the image's marker, so a test can prove
 * that every rank ran inside a container of the image, as the job user. */
#include <mpi.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int rank, size, len, token = 0;
    char host[MPI_MAX_PROCESSOR_NAME], marker[128] = "no-marker";
    FILE *f;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_processor_name(host, &len);
    f = fopen("/etc/torque-docker-test-marker", "r");
    if (f) {
        if (fgets(marker, sizeof marker, f))
            marker[strcspn(marker, "\n")] = 0;
        fclose(f);
    }
    /* A ring exchange, so the ranks really talk to each other. */
    if (size > 1) {
        if (rank == 0) {
            token = 1;
            MPI_Send(&token, 1, MPI_INT, 1, 0, MPI_COMM_WORLD);
            MPI_Recv(&token, 1, MPI_INT, size - 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else {
            MPI_Recv(&token, 1, MPI_INT, rank - 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            token++;
            MPI_Send(&token, 1, MPI_INT, (rank + 1) % size, 0, MPI_COMM_WORLD);
        }
    }
    printf("rank=%d size=%d host=%s uid=%d marker=%s ring=%d\n",
           rank, size, host, (int)getuid(), marker, rank == 0 ? token : -1);
    MPI_Finalize();
    return 0;
}
