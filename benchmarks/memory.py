"""Peak memory of this process since it started, for benchmarks that run phases as children.

Not `getrusage(RUSAGE_SELF).ru_maxrss`: Linux keeps that across exec, so a child started by a
parent that holds gigabytes reports the parent's peak. The kernel's VmHWM belongs to the
process's own address space, which exec replaces.
"""

from __future__ import annotations

import resource


def peak_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # macOS: bytes there, close enough to say so
