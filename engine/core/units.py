"""Human-readable units shared by the command line, the dashboard and reports."""
from __future__ import annotations

import math


def fmt_bytes(n: float | None) -> str:
    """1536 -> '1.5 KiB'; None -> 'n/a'."""
    if n is None or not math.isfinite(n):
        return "n/a"
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def fmt_energy(joules: float | None) -> str:
    """Joules in the unit that keeps 3 significant digits readable: 2.5e-6 -> '2.50 µJ'."""
    if joules is None or not math.isfinite(joules):
        return "n/a"
    for unit, scale in (("J", 1.0), ("mJ", 1e-3), ("µJ", 1e-6)):
        if abs(joules) >= scale:
            return f"{joules / scale:.3g} {unit}"
    return f"{joules * 1e9:.3g} nJ"


def fmt_ms(ms: float | None) -> str:
    """Milliseconds with a unit that fits: 0.0123 -> '12.3 µs', 1234 -> '1.23 s'."""
    if ms is None or not math.isfinite(ms):
        return "n/a"
    if ms < 1:
        return f"{ms * 1e3:.3g} µs"
    if ms >= 1000:
        return f"{ms / 1e3:.3g} s"
    return f"{ms:.3g} ms"


def fmt_speedup(x: float | None) -> str:
    """2.0 -> '2.00× faster', 0.5 -> '2.00× slower'."""
    if x is None or not math.isfinite(x) or x <= 0:
        return "n/a"
    return f"{x:.2f}× faster" if x >= 1 else f"{1 / x:.2f}× slower"
