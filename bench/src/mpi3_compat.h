/* Force-included before HPL's sources: HPL 2.x (as in hpcc 1.5.0) still calls MPI-1
 * functions that MPI-3 removed and Open MPI 4's mpi.h turns into compile errors. */
#include <mpi.h>
#undef MPI_Address
#define MPI_Address MPI_Get_address
#undef MPI_Type_struct
#define MPI_Type_struct MPI_Type_create_struct
#undef MPI_Type_extent
#undef MPI_Type_hindexed
#define MPI_Type_hindexed MPI_Type_create_hindexed
#undef MPI_Errhandler_set
#define MPI_Errhandler_set MPI_Comm_set_errhandler
