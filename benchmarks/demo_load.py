"""Load check of the demo: N clients submit a text-to-video request at the same moment.

    python benchmarks/demo_load.py                  # starts `python -m vmoba.ui`, writes results/demo_load.json
    python benchmarks/demo_load.py --url http://127.0.0.1:7860 --clients 8

Each client asks for its own seed; every returned clip is decoded and compared with the clip this script makes
itself with the same pipeline and seed (PSNR above 30 dB, and closer to its own seed's clip than to any other),
so a request that came back with another user's result, or none, counts as a failure. The demo runs one
generation at a time (a queue of bounded length), so the last client waits for all the others: the JSON
records each request's latency, the total time, the start-up time of the server (to a served page) and the
machine's load average while it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "demo_load.json"
MODEL = "embedded default (64x64 moving shapes)"
KNOBS = [0.25, "threshold", "query_head", "token", "1d,2d,3d", 3, 32, 80, 1, 2, 2, 2, 2, 2]  # DEFAULT_VMOBA_CONFIG
REQUEST = dict(prompt="a green square moves down", frames=5, height=64, width=64, steps=4, guidance=5.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(port: int, timeout: float = 120.0) -> tuple[subprocess.Popen, float, float | None]:
    """``python -m vmoba.ui`` on ``port`` (through GRADIO_SERVER_PORT): seconds until the page is served, and the
    CPU seconds the server used until then (on a busy machine the first depends on the neighbours, the second
    much less)."""
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "vmoba.ui"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    while time.perf_counter() - start < timeout:
        if server.poll() is not None:
            raise RuntimeError(f"the demo exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200 and b"vmoba" in response.read():
                    return server, time.perf_counter() - start, cpu_seconds(server.pid)
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"the demo did not serve a page within {timeout:.0f} s")


def reference_clips(seeds: list[int]) -> dict[int, np.ndarray]:
    import torch

    import vmoba
    from vmoba.pipelines import DEFAULT_VMOBA_CONFIG, load_default_pipeline

    pipe = load_default_pipeline(quiet=True)
    pipe.set_progress_bar_config(disable=True)
    vmoba.enable(pipe, DEFAULT_VMOBA_CONFIG)
    r = REQUEST
    return {seed: pipe(r["prompt"], height=r["height"], width=r["width"], num_frames=r["frames"],
                       num_inference_steps=r["steps"], guidance_scale=r["guidance"],
                       generator=torch.Generator().manual_seed(seed), output_type="np").frames[0] for seed in seeds}


def run_load(url: str, clients: int = 8, references: dict[int, np.ndarray] | None = None) -> dict:
    """``clients`` concurrent /generate requests, one seed each, released together; checks every result."""
    from gradio_client import Client

    from vmoba.video import psnr, read_video

    seeds = list(range(100, 100 + clients))
    references = references or reference_clips(seeds)
    connections = [Client(url, verbose=False) for _ in seeds]
    barrier = threading.Barrier(clients)
    outcomes: dict[int, dict] = {}

    def one(client, seed):
        barrier.wait()
        start = time.perf_counter()
        try:
            r = REQUEST
            video, *_ = client.predict(r["prompt"], MODEL, "VMoBA", r["frames"], r["height"], r["width"], r["steps"],
                                       r["guidance"], seed, *KNOBS, api_name="/generate")
            served = read_video(video)[:, ::4, ::4]  # the clip is shown 4x larger
            scores = {other: psnr(served, ref) for other, ref in references.items()}
            outcomes[seed] = dict(seconds=time.perf_counter() - start, psnr=scores[seed],
                                  best_other=max(v for k, v in scores.items() if k != seed),
                                  correct=scores[seed] > 30 and scores[seed] == max(scores.values()), error=None)
        except Exception as exc:  # recorded, and the run fails below
            outcomes[seed] = dict(seconds=time.perf_counter() - start, correct=False, error=f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=one, args=(c, s)) for c, s in zip(connections, seeds)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = time.perf_counter() - start
    latencies = sorted(o["seconds"] for o in outcomes.values())
    return {"clients": clients, "request": REQUEST, "total_seconds": round(total, 2),
            "latency_seconds": {"min": round(latencies[0], 2), "median": round(latencies[len(latencies) // 2], 2),
                                "max": round(latencies[-1], 2)},
            "all_correct": all(o["correct"] for o in outcomes.values()),
            "errors": [o["error"] for o in outcomes.values() if o["error"]],
            "per_request": {str(k): {n: (round(v, 2) if isinstance(v, float) else v) for n, v in o.items()}
                            for k, o in sorted(outcomes.items())}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running demo (default: start `python -m vmoba.ui` on a free port)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--out", default=str(RESULT))
    args = parser.parse_args(argv)
    import torch

    from vmoba.checks import atomic_output

    torch.set_num_threads(1)
    server, startup, startup_cpu = None, None, None
    url = args.url
    load_before = os.getloadavg()
    if url is None:
        port = free_port()
        server, startup, startup_cpu = start_server(port)
        url = f"http://127.0.0.1:{port}/"
    try:
        references = reference_clips(list(range(100, 100 + args.clients)))
        result = run_load(url, args.clients, references)
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    result.update(startup_seconds=None if startup is None else round(startup, 2),
                  startup_cpu_seconds=None if startup_cpu is None else round(startup_cpu, 2),
                  load_average_before=[round(x, 2) for x in load_before],
                  load_average_after=[round(x, 2) for x in os.getloadavg()],
                  machine=dict(cpus=os.cpu_count(), python=platform.python_version(), platform=platform.platform()),
                  note="one generation at a time (concurrency_limit=1, queue max_size=16); torch on 1 thread")
    with atomic_output(args.out) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_request"}, indent=2))
    return 0 if result["all_correct"] and not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
