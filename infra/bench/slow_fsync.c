// LD_PRELOAD shim for benchmarks: every fsync/fdatasync of the process
// first sleeps FSYNC_DELAY_US microseconds (default 1250), so a run on a
// machine with a fast virtual disk shows what a slower disk would do.
// 1250 us brings SQLite (WAL, synchronous = FULL, a transaction of two
// inserts, one connection) to the ~700 commits/s of issue 6's reference
// machine. Built and preloaded by infra/bench/host.sh when FSYNC_DELAY_US
// is set; never part of payfn itself.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

static void delay(void) {
    static long ns = -1;
    if (ns < 0) {
        const char *us = getenv("FSYNC_DELAY_US");
        ns = (us ? atol(us) : 1250) * 1000L;
    }
    struct timespec t = {ns / 1000000000L, ns % 1000000000L};
    nanosleep(&t, 0);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    delay();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    delay();
    return real(fd);
}
