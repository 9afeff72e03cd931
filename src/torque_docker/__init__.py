"""torque-docker: Torque (PBS) jobs inside Docker containers, MPI across nodes included."""

__version__ = "0.1.0"
