import Testing

@testable import ACMCore

/// Should read a cgroup's CPU quota as containers and Kubernetes set it, and cap the engine's threads by it.
@Suite struct CPUQuotaTests {
    /// Should read cgroup v2's cpu.max: a quota over a period, or "max" for none.
    @Test func readsCGroupV2() {
        #expect(cpuQuota(cgroupV2Max: "200000 100000\n") == 2)
        #expect(cpuQuota(cgroupV2Max: "150000 100000") == 1.5)
        #expect(cpuQuota(cgroupV2Max: "max 100000\n") == nil)
        #expect(cpuQuota(cgroupV2Max: "") == nil)
        #expect(cpuQuota(cgroupV2Max: "garbage") == nil)
    }

    /// Should read cgroup v1's quota and period, -1 meaning none.
    @Test func readsCGroupV1() {
        #expect(cpuQuota(cgroupV1Quota: "50000\n", period: "100000\n") == 0.5)
        #expect(cpuQuota(cgroupV1Quota: "-1\n", period: "100000\n") == nil)
        #expect(cpuQuota(cgroupV1Quota: "300000", period: "0") == nil)
    }

    /// Should find the cgroups with the CPU controller in /proc/self/cgroup, v1 first.
    @Test func findsTheCPUController() {
        let v1 = "12:cpu,cpuacct:/kubepods/pod1/c1\n4:memory:/kubepods/pod1/c1\n1:name=systemd:/\n0::/\n"
        #expect(cgroupCPUPaths(v1).map { "\($0.version) \($0.path)" } == ["1 /kubepods/pod1/c1", "2 "])
        #expect(cgroupCPUPaths("0::/system.slice/acm-serve.service\n").map { "\($0.version) \($0.path)" }
            == ["2 /system.slice/acm-serve.service"])
        #expect(cgroupCPUPaths("2:cpuacct:/\n3:cpuset:/\n").isEmpty)
    }

    /// Should cap the affinity mask's CPUs by the quota, rounded up, and never go below 1.
    @Test func capsByTheQuota() {
        #expect(coresAllowed(affinity: 64, quota: 2) == 2)
        #expect(coresAllowed(affinity: 64, quota: 1.5) == 2)
        #expect(coresAllowed(affinity: 2, quota: 8) == 2)
        #expect(coresAllowed(affinity: 8, quota: nil) == 8)
        #expect(coresAllowed(affinity: 8, quota: 0.1) == 1)
        #expect(availableCores() >= 1)
    }
}
