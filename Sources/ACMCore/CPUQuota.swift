import CACMKernels
import Foundation

// How many cores the engine should use by default: the CPUs this process may run on, fewer where a cgroup CPU
// quota allows less. A container started with `--cpus 2`, or a Kubernetes pod with a CPU limit of 2, still sees
// every core of the node in its affinity mask; one engine thread per node core would then be throttled by the
// quota, its threads descheduled mid-operation while the others wait for them at the next join. The mask itself is
// read with `sched_getaffinity` (`acm_affinity_cpus`): Foundation's `activeProcessorCount` on Linux counts the CPUs
// online, so under `taskset -c 0` or a container's cpuset it gave every core of the machine.

/// The cores this process may use: the CPUs of its affinity mask, or the cgroup's CPU quota rounded up where that is
/// fewer (cgroup v2's `cpu.max`, v1's `cpu.cfs_quota_us` over `cpu.cfs_period_us`).
public func availableCores() -> Int {
    let mask = Int(acm_affinity_cpus())
    let affinity = mask > 0 ? mask : ProcessInfo.processInfo.activeProcessorCount
    let quota = readCGroupCPUQuota()
    return coresAllowed(affinity: affinity, quota: quota)
}

/// `affinity` capped by `quota` (CPUs, fractional) rounded up, and at least 1.
func coresAllowed(affinity: Int, quota: Double?) -> Int {
    guard let quota, quota > 0 else { return max(1, affinity) }
    return max(1, min(affinity, Int(quota.rounded(.up))))
}

/// The CPU quota of this process's cgroup in CPUs, e.g. 1.5; nil when there is none ("max", -1) or it cannot be
/// read.
func readCGroupCPUQuota() -> Double? {
    func read(_ path: String) -> String? { try? String(contentsOfFile: path, encoding: .utf8) }
    guard let membership = read("/proc/self/cgroup") else { return nil }
    for (version, path) in cgroupCPUPaths(membership) {
        // The process's own cgroup, then the hierarchy's root: a container's view (v1 without a cgroup namespace)
        // lists the host's path but mounts its own cgroup at the root.
        let root = version == 1 ? "/sys/fs/cgroup/cpu" : "/sys/fs/cgroup"
        for dir in [root + path, root] {
            if version == 2, let max = read(dir + "/cpu.max") { return cpuQuota(cgroupV2Max: max) }
            if version == 1, let quota = read(dir + "/cpu.cfs_quota_us"), let period = read(dir + "/cpu.cfs_period_us") {
                return cpuQuota(cgroupV1Quota: quota, period: period)
            }
        }
    }
    return nil
}

/// The cgroups that hold the CPU controller, from /proc/self/cgroup: (1, path) for a v1 hierarchy whose controllers
/// include `cpu`, (2, path) for the v2 one ("0::path"); the v1 one first, as a v1 `cpu` controller is the one that
/// enforces where both are listed.
func cgroupCPUPaths(_ membership: String) -> [(version: Int, path: String)] {
    var v1: [(Int, String)] = [], v2: [(Int, String)] = []
    for line in membership.split(separator: "\n") {
        let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
        guard fields.count == 3 else { continue }
        let path = String(fields[2]) == "/" ? "" : String(fields[2])
        if fields[0] == "0", fields[1].isEmpty {
            v2.append((2, path))
        } else if fields[1].split(separator: ",").contains("cpu") {
            v1.append((1, path))
        }
    }
    return v1 + v2
}

/// cgroup v2's `cpu.max` ("200000 100000", or "max 100000"): CPUs, nil for no limit.
func cpuQuota(cgroupV2Max text: String) -> Double? {
    let fields = text.split(whereSeparator: \.isWhitespace)
    guard fields.count >= 1, fields[0] != "max", let quota = Double(fields[0]) else { return nil }
    let period = fields.count >= 2 ? Double(fields[1]) ?? 100_000 : 100_000
    return quota > 0 && period > 0 ? quota / period : nil
}

/// cgroup v1's `cpu.cfs_quota_us` (-1: no limit) over `cpu.cfs_period_us`: CPUs, nil for no limit.
func cpuQuota(cgroupV1Quota quota: String, period: String) -> Double? {
    guard let q = Double(quota.trimmingCharacters(in: .whitespacesAndNewlines)),
        let p = Double(period.trimmingCharacters(in: .whitespacesAndNewlines)), q > 0, p > 0
    else { return nil }
    return q / p
}
