"""Where a batch's time goes in the local engine on CUDA: stage medians, then torch.profiler.

PYTHONPATH=/tmp/site:$PWD python3 benchmarks/cuda/profile_cuda.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from torch.profiler import ProfilerActivity, profile

from benchmarks.engine_bench import make_requests
from serving.commands.demo import demo_spec
from serving.engine.local.engine import LocalEngine


def main() -> None:
    spec = demo_spec()
    engine = LocalEngine(spec, device="cuda")
    engine.start()
    for size in (32, 4096):
        reqs = make_requests(spec, size, 20, np.random.default_rng(0))
        for _ in range(3):
            engine.forward(reqs)
        times, stages = [], []
        for _ in range(10):
            t0 = time.perf_counter()
            engine.forward(reqs)
            times.append(time.perf_counter() - t0)
            stages.append(dict(engine.last_timings))
        medians = {k: round(statistics.median(s[k] for s in stages) * 1e3, 3) for k in stages[0]}
        print(size, "requests: forward ms", round(statistics.median(times) * 1e3, 3), medians)
    reqs = make_requests(spec, 4096, 20, np.random.default_rng(0))
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            engine.forward(reqs)
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=18))
    engine.close()


if __name__ == "__main__":
    main()
