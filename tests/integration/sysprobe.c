/* What a job's process may do to other processes and to the kernel, one line per call:
 *   sysprobe OTHER_PID   ->  "<call> <target>=ok" or "=<errno name>"
 * process_vm_readv on its own child (same user: what Open MPI's CMA does between ranks) and on
 * OTHER_PID (a process of another user), and calls Docker's default profile refuses:
 * keyctl, unshare of a user namespace, ptrace of another user's process. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

static char secret[32] = "read-across-processes";

static void report(const char *what, long rc)
{
    if (rc < 0)
        printf("%s=%s\n", what, errno == EPERM ? "EPERM" : errno == ESRCH ? "ESRCH" : strerror(errno));
    else
        printf("%s=ok\n", what);
    fflush(stdout);
}

static long read_from(pid_t pid, char *into)
{
    struct iovec local = {into, sizeof secret}, remote = {secret, sizeof secret};
    return process_vm_readv(pid, &local, 1, &remote, 1, 0);
}

int main(int argc, char **argv)
{
    pid_t other = argc > 1 ? atoi(argv[1]) : 0;
    char buf[32] = "";
    pid_t child = fork();
    if (child == 0) {
        pause();
        _exit(0);
    }
    long rc = read_from(child, buf);
    report("process_vm_readv same-user", rc == (long)sizeof secret && strcmp(buf, secret) == 0 ? 0 : -1);
    struct iovec local = {secret, sizeof secret}, remote = {secret, sizeof secret};
    report("process_vm_writev same-user", process_vm_writev(child, &local, 1, &remote, 1, 0));
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    if (other > 0) {
        report("process_vm_readv other-user", read_from(other, buf));
        report("ptrace other-user", ptrace(PTRACE_ATTACH, other, 0, 0));
    }
    report("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 1));
    report("unshare user", unshare(CLONE_NEWUSER));
    return 0;
}
