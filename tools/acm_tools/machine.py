"""What machine and commit a benchmark ran on, for its report: shared by the benchmarks, which import nothing heavy here."""
import platform
import subprocess


def cpu_name():
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open('/proc/cpuinfo') as f:
            return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        return platform.processor()


def git_commit():
    """HEAD, marked when the working tree differs from it; BENCHMARKS.md itself (which another benchmark's run
    may just have rewritten) does not count."""
    sha = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no', '--', '.', ':!BENCHMARKS.md'],
                           capture_output=True, text=True).stdout.strip()
    return f'{sha} (with uncommitted changes)' if dirty else sha
