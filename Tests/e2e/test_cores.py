"""The cores acm-serve takes for its compute threads by default: the CPUs of its affinity mask (`taskset`, a
container's cpuset), not every CPU of the machine (Foundation's count on Linux, which it used until 2026-12-03)."""
import os
import re
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get('ACM_SERVE_BIN', os.path.join(REPO, '.build', 'release', 'acm-serve'))


def cores(*prefix):
    out = subprocess.run([*prefix, BIN, 'version'], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    m = re.search(r'^cores: (\d+) ', out.stdout, re.M)
    assert m, out.stdout
    return int(m.group(1))


def test_cores_follow_the_affinity_mask():
    allowed = sorted(os.sched_getaffinity(0))
    unpinned = cores()
    assert unpinned <= len(allowed)
    assert cores('taskset', '-c', str(allowed[0])) == 1
    if len(allowed) >= 2:
        assert cores('taskset', '-c', f'{allowed[0]},{allowed[1]}') == min(2, unpinned)
