"""Full garbage collections, printed as they happen, for ``fanout.py --gc-log``.

Shared by the benchmark servers (``baseline_tornado.py``, ``launch_renum.py``); the
bench scripts count the lines that fall inside a burst.
"""

from __future__ import annotations

import gc
import time


def log_gen2_collections() -> None:
    """Print each full (generation 2) collection: its duration and what it freed."""
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            ms = (time.perf_counter() - started[0]) * 1000
            print(f"gc gen2 {ms:.1f} ms collected={info['collected']} at={time.monotonic():.3f}", flush=True)

    gc.callbacks.append(callback)
