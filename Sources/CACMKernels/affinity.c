// The CPUs of the process's affinity mask: Swift's Glibc module does not declare sched_getaffinity (it needs
// _GNU_SOURCE), and Foundation's activeProcessorCount on Linux counts the CPUs online, not the mask (`taskset`, a
// container's cpuset).
#define _GNU_SOURCE
#include <sched.h>

#include "CACMKernels.h"

int acm_affinity_cpus(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return -1;
    return CPU_COUNT(&set);
}
