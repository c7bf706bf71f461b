"""A cluster with a back channel: the "first joiner" fix and the limited-resources fix.

    python -m examples.cluster                       # 4 workers, 2000 jobs
    python -m examples.cluster --workers 6 --jobs 5000 --limit 20

The master binds a PUSH for jobs and a PULL for the back channel, both over
IPC, and starts the worker processes itself. Each worker connects both ways,
sends "ready", then a result per job on the back channel. The master waits
for every "ready" and for every job connection's handshake before the first
job (without that, the first worker to connect would get them all), pushes
the jobs and collects every result.

A worker runs jobs concurrently but keeps at most --limit in flight: above
the limit it pauses its puller, and resumes when back under half of it (the
fix for running out of file descriptors when every job opens one). Jobs it
has not pulled stay queued in ZeroMQ, not in the worker.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

from greenpipe.pushpull import Puller, Pusher  # noqa: E402


def worker(name: str, jobs: str, back: str, limit: int) -> int:
    stopping = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stopping.set)
    in_flight, peak, paused = 0, 0, 0
    with Puller(jobs) as puller, Pusher(back) as results:
        results.wait_for_peers(1, timeout=10)
        results.send_json({"ready": name})

        def run(job: dict) -> None:
            nonlocal in_flight
            gevent.sleep(random.uniform(0.002, 0.01))  # holds a resource meanwhile
            results.send_json({"job": job["id"], "worker": name, "peak": peak})
            in_flight -= 1
            if puller.paused and in_flight <= limit // 2:
                puller.resume()

        def pull() -> None:
            nonlocal in_flight, peak, paused
            for message in puller:
                in_flight += 1
                peak = max(peak, in_flight)
                gevent.spawn(run, json.loads(message))
                if in_flight >= limit:
                    puller.pause()
                    paused += 1

        puller_greenlet = gevent.spawn(pull)
        stopping.wait()
        puller_greenlet.kill()
    print(
        f"{name}: at most {peak} in flight (limit {limit}), paused {paused} times",
        file=sys.stderr,
        flush=True,
    )
    return 0


def stop(procs: list[subprocess.Popen]) -> list[int]:
    """SIGTERM every worker, then wait; one that overruns 10 s is killed (-9)."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(10))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    return codes


def master(workers: int, jobs: int, limit: int) -> int:
    with tempfile.TemporaryDirectory(prefix="greenpipe-cluster-") as tmp:
        job_address, back_address = f"ipc://{tmp}/jobs", f"ipc://{tmp}/results"
        with (
            Pusher(job_address, bind=True) as pusher,
            Puller(back_address, bind=True) as back,
        ):
            procs = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "examples.cluster",
                        "worker",
                        f"worker{i + 1}",
                        job_address,
                        back_address,
                        str(limit),
                    ]
                )
                for i in range(workers)
            ]
            try:
                ready = set()
                with gevent.Timeout(30, TimeoutError("workers not ready in 30 s")):
                    while len(ready) < workers:
                        ready.add(back.recv_json()["ready"])
                pusher.wait_for_peers(workers, timeout=10)
                started = time.monotonic()
                sender = gevent.spawn(
                    lambda: [pusher.send_json({"id": i}) for i in range(1, jobs + 1)]
                )
                done: set[int] = set()
                per_worker: Counter[str] = Counter()
                first: list[str] = []
                with gevent.Timeout(60, TimeoutError("results missing after 60 s")):
                    while len(done) < jobs:
                        result = back.recv_json()
                        done.add(result["job"])
                        per_worker[result["worker"]] += 1
                        if result["job"] <= workers:
                            first.append(result["worker"])
                sender.get()
                elapsed = time.monotonic() - started
            finally:
                codes = stop(procs)
    spread = ", ".join(f"{w} {n}" for w, n in sorted(per_worker.items()))
    print(f"master: {len(ready)} workers ready before the first job", flush=True)
    print(
        f"master: the first {workers} jobs went to {len(set(first))} different workers",
        flush=True,
    )
    print(
        f"master: {len(done)} of {jobs} results in {elapsed:.2f} s; "
        f"per worker: {spread}",
        flush=True,
    )
    return 0 if len(done) == jobs and not any(codes) else 1


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if args and args[0] == "worker":
        return worker(args[1], args[2], args[3], int(args[4]))
    parser = argparse.ArgumentParser(
        prog="python -m examples.cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument(
        "--limit", type=int, default=10, help="jobs in flight per worker"
    )
    options = parser.parse_args(args)
    return master(options.workers, options.jobs, options.limit)


if __name__ == "__main__":
    raise SystemExit(main())
