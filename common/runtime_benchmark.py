"""TorchScript vs ONNX Runtime for one exported model, side by side, measured in one run.

For each runtime: single-image latency p50/p95 with 1 and 2 threads, batch-32 throughput
(1 thread), and the cold start of a fresh Python process, from its launch to the first
prediction, with that process's peak RSS (what a server or a CLI call pays). Shared machines
are noisy, so the two runtimes are measured in interleaved rounds and the table carries
ratios (ONNX Runtime over TorchScript), which are steadier than absolute times.

Used by each project's benchmark command (mnist, landmark, scones), which supplies the two
files and the input the models take.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# The child process: load the model, predict once, report seconds since the child's launch
# (its own start time, taken from the OS) and its own peak RSS.
_COLD_START = r"""
import json, os, resource, sys, time
import numpy as np
import psutil
runtime, path, shape, dtype = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
x = np.zeros(shape, dtype=dtype)
if runtime == "onnxruntime":
    from common.serving import load_onnx
    model = load_onnx(path, threads=1)
    out = model.run(x)
else:
    import warnings, torch
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = torch.jit.load(path, map_location="cpu").eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x))
seconds = time.time() - psutil.Process().create_time()
# VmHWM: this process's own peak (getrusage's ru_maxrss survives exec and reports the parent's)
try:
    peak_mb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
except (OSError, StopIteration):
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "torch_imported": "torch" in sys.modules}))
"""


def _percentiles(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    run()  # warm-up: allocation, kernel selection
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]


def cold_start(runtime: str, path: Path, shape: tuple[int, ...], dtype: str) -> dict:
    """Launch a fresh interpreter that loads `path` and predicts once; seconds to first prediction, peak MB."""
    result = subprocess.run([sys.executable, "-c", _COLD_START, runtime, str(path), json.dumps(list(shape)), dtype],
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"cold start of {path} with {runtime} failed: {result.stderr.strip()[-500:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def compare(torchscript_path: str | Path, onnx_path: str | Path, make_input: Callable[[int], np.ndarray], *,
            model: str, repeats: int = 50, batch: int = 32, cold_starts: int = 3) -> list[dict]:
    """One row per runtime plus a ratio row; `make_input(n)` gives a batch of n inputs as the models take it."""
    import torch

    from common.serving import load_onnx, load_torchscript

    torchscript_path, onnx_path = Path(torchscript_path), Path(onnx_path)
    single, batched = make_input(1), make_input(batch)
    scripted = load_torchscript(torchscript_path)
    sessions = {threads: load_onnx(onnx_path, threads=threads) for threads in (1, 2)}
    results: dict[str, dict] = {"TorchScript": {}, "ONNX Runtime": {}}
    threads_before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            session = sessions[threads]
            with torch.no_grad():
                ts_single = lambda: scripted(torch.from_numpy(single))  # noqa: E731
                ts_batch = lambda: scripted(torch.from_numpy(batched))  # noqa: E731
                # interleave the runtimes so that a burst of load on the machine hits both
                rounds = {"TorchScript": [], "ONNX Runtime": []}
                for _ in range(3):
                    rounds["TorchScript"].append(_percentiles(ts_single, repeats // 3 + 1))
                    rounds["ONNX Runtime"].append(_percentiles(lambda: session.run(single), repeats // 3 + 1))
                for runtime, measured in rounds.items():
                    results[runtime][f"p50 ms ({threads} thread{'s' * (threads > 1)})"] = round(
                        statistics.median(m[0] for m in measured), 3)
                    results[runtime][f"p95 ms ({threads} thread{'s' * (threads > 1)})"] = round(
                        statistics.median(m[1] for m in measured), 3)
                if threads == 1:
                    ts_ms, _ = _percentiles(ts_batch, max(3, repeats // 10))
                    ort_ms, _ = _percentiles(lambda: sessions[1].run(batched), max(3, repeats // 10))
                    results["TorchScript"][f"batch-{batch} images/s"] = round(batch / ts_ms * 1000, 1)
                    results["ONNX Runtime"][f"batch-{batch} images/s"] = round(batch / ort_ms * 1000, 1)
    finally:
        torch.set_num_threads(threads_before)
    for runtime, name, path in (("TorchScript", "torchscript", torchscript_path),
                                ("ONNX Runtime", "onnxruntime", onnx_path)):
        starts = [cold_start(name, path, single.shape, str(single.dtype)) for _ in range(cold_starts)]
        results[runtime]["cold start s"] = round(statistics.median(s["seconds"] for s in starts), 3)
        results[runtime]["serving peak RSS MB"] = round(statistics.median(s["peak_mb"] for s in starts), 1)
        results[runtime]["imports torch"] = starts[0]["torch_imported"]
    rows = [{"model": model, "runtime": runtime, **values} for runtime, values in results.items()]
    ts, ort = results["TorchScript"], results["ONNX Runtime"]
    ratio = {"model": model, "runtime": "ONNX Runtime speed-up (x)"}
    for key in ts:
        if key.startswith(("p50", "p95", "cold", "serving")):
            ratio[key] = round(ts[key] / ort[key], 2)  # > 1: ONNX Runtime is faster / leaner
        elif key.startswith("batch"):
            ratio[key] = round(ort[key] / ts[key], 2)
    rows.append(ratio)
    return rows
