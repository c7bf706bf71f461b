"""Micro-benchmarks of the hot path, each on its own (prints JSON).

    python -m bench.micro            # all
    python -m bench.micro --quick    # small counts (the test suite)

- ids: make one job id (`Admission.new_id`, once per push), µs;
- frames: encode one job record, decode one from a 100-job frame, build and
  read an ACKS message (µs per job, timeit, one core);
- dispatcher: a real Dispatcher in this process feeding three no-op workers
  over loopback; CPU of this process (all threads) per job, from submit to
  acknowledgement, no HTTP; then with RESULT_STORE=off, then on again (the
  result store's cost, with the drift between the two runs with it on);
- books: `Books.settled` per acknowledged job (µs), with the figures by job
  name that /metrics labels (issue 33), back to back with the same loop
  without them (best of 5 rounds each, alternated);
- routing: choosing a worker for each queued job (`Routes.plan`), µs per
  job, back to back with the choice as it was before routing by name: a
  uniform fleet of plain handlers (the fast path), of one `Handlers`
  registry (a name lookup per job) and a mixed fleet (a cursor per name);
  with queues (issue 32, part 3), half the jobs in `reports`: every worker
  on both queues (the fast path, a queue lookup per job) and one worker per
  queue and one on both (a cursor per name and queue);
- worker: one server.py process driven by a plain DEALER at full speed,
  batches of 32 and of 1: jobs per second it receives, handles and
  acknowledges (target: 25,000 no-op jobs/s);
- worker_progress: the same, batches of 32, with a handler reporting
  progress ten times per job (`Job.progress`), against the no-op handler.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import timeit  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

from greenpipe import protocol  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def frames(count: int) -> dict[str, float]:
    record = protocol.encode_job(
        b"3f9a1c2b-1a2b", 1, b"GET", b"/", b"", b"", b"", 0, 30000
    )
    batch = record * 100

    def encode() -> bytes:
        return protocol.encode_job(
            b"3f9a1c2b-1a2b", 1, b"GET", b"/", b"", b"", b"", 0, 30000
        )

    ids = [b"3f9a1c2b-%x" % i for i in range(100)]
    table = dict.fromkeys(ids, 1)

    def acks() -> None:
        frame = protocol.encode_acks(ids)[1]
        held = dict(table)
        for key in frame.split():
            held.pop(key, None)

    per = 1e6 / count
    return {
        "encode_us": timeit.timeit(encode, number=count) * per,
        "decode_us": timeit.timeit(
            lambda: list(protocol.decode_jobs(batch)), number=count // 100
        )
        * per,
        "acks_us": timeit.timeit(acks, number=count // 100) * per,
    }


def _worker(
    *flags: str, handler: str = "greenpipe.handlers:noop"
) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "server.py"), "--port", "0", "--handler",
         handler, *flags],
        stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    for line in proc.stderr:
        if match := re.search(r"listening on (tcp://\S+)", line):
            return proc, match[1]
    raise SystemExit("bench.micro: a worker did not start")


def ids(count: int) -> dict[str, float]:
    """µs per job id: each accepted job gets one (issue 31: 128 random bits)."""
    from greenpipe.admission import Admission
    from greenpipe.config import load_web

    admission = Admission(load_web([], {}), *([None] * 6))  # type: ignore[arg-type]
    best = min(timeit.repeat(admission.new_id, number=count, repeat=5))
    return {"new_id_us": best / count * 1e6, "length": len(admission.new_id())}


def dispatcher(count: int, store: str = "journal") -> dict[str, float]:
    from greenpipe.config import load_web
    from greenpipe.dispatcher import Dispatcher
    from greenpipe.jobs import Envelope

    workers = [_worker() for _ in range(3)]
    try:
        addresses = ",".join(endpoint for _, endpoint in workers)
        journal = tempfile.mkdtemp(prefix="greenpipe-micro-journal-")
        settings = load_web(["--workers", addresses, "--max-pending", str(count),
                             "--journal-dir", journal, "--result-store", store],
                            {})  # fmt: skip
        disp = Dispatcher(settings)
        disp.start()
        assert disp.wait_barrier(10), "workers not ready"
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(count // 100):
            for _ in range(100):  # as a loop iteration of 100 HTTP requests would
                disp.submit(Envelope.new(b"GET", b"/", b"", b"", b""))
            gevent.sleep(0)
            while disp.outstanding() > 300:
                gevent.sleep(0.0005)
        while disp.outstanding():
            gevent.sleep(0.0005)
        cpu = time.process_time() - cpu
        wall = time.perf_counter() - started
        disp.close()
    finally:
        for proc, _ in workers:
            proc.terminate()
            proc.wait(10)
    return {"cpu_us_per_job": cpu / count * 1e6, "jobs_per_s": count / wall}


def books(count: int, rounds: int = 5) -> dict[str, float]:
    from bisect import bisect_left

    from greenpipe.books import LATENCY_BUCKETS, Books
    from greenpipe.jobs import Envelope

    jobs = [Envelope.new(b"", b"", b"", b"", b"", name=b"resize") for _ in range(32)]
    for job in jobs:
        job.accepted_at = 0.0

    def without(into: Books, done: list, now: float) -> None:  # before the names
        counts, bounds, waited = into.latency_counts, LATENCY_BUCKETS, 0.0
        for job in done:
            took = now - job.accepted_at
            waited += took
            counts[bisect_left(bounds, took)] += 1
        into.latency_sum += waited
        into.acked += len(done)

    batches = max(1, count // len(jobs))
    best = {"with_names": float("inf"), "without": float("inf")}
    for _ in range(rounds):
        for label in best:
            into = Books()
            start = time.perf_counter()
            if label == "with_names":
                for _ in range(batches):
                    into.settled(jobs, (), 0, "w", 0.003)
            else:
                for _ in range(batches):
                    without(into, jobs, 0.003)
            took = (time.perf_counter() - start) / (batches * len(jobs)) * 1e6
            best[label] = min(best[label], took)
    return {
        "with_names_us": round(best["with_names"], 3),
        "without_us": round(best["without"], 3),
        "ratio": round(best["with_names"] / best["without"], 2),
    }


def routing(count: int, rounds: int = 7) -> dict[str, float]:
    """µs per job to plan a flush of `count` queued jobs over 3 links with credit."""
    import statistics

    from greenpipe.config import parse_endpoint
    from greenpipe.jobs import Envelope
    from greenpipe.link import READY, Link
    from greenpipe.queues import Queues
    from greenpipe.routing import Routes

    both = protocol.Serves(frozenset({b"welcome_email", b"ship_order"}), False)
    fleets = {
        "uniform_plain": [protocol.EVERYTHING] * 3,
        "uniform_registry": [both] * 3,
        "mixed": [protocol.Serves(frozenset({b"welcome_email"}), False), both,
                  protocol.Serves(frozenset({b"ship_order"}), False)],
    }  # fmt: skip
    jobs = [Envelope.new(b"", b"", b"", b"", b"", name=name).named(f"j-{i}")
            for i, name in enumerate([b"welcome_email", b"ship_order"] * (count // 2))]  # fmt: skip
    reports = frozenset({b"reports"})
    queued = {
        "uniform_queues": [protocol.Serves(frozenset(), True, reports | {b"default"})] * 3,
        "split_queues": [protocol.EVERYTHING, protocol.Serves(frozenset(), True, reports),
                         protocol.Serves(frozenset(), True, reports | {b"default"})],
    }  # fmt: skip
    in_queues = [Envelope.new(b"", b"", b"", b"", b"", name=b"report").named(f"q-{i}")
                 for i in range(count)]  # fmt: skip
    for job in in_queues[::2]:
        job.queue = b"reports"

    def setup(
        serves: list[protocol.Serves], queued_jobs: list[Envelope] = jobs
    ) -> tuple[list[Link], Routes, Queues]:
        links = [Link(i, parse_endpoint(f"127.0.0.1:{i + 1}"), None, None)
                 for i in range(3)]  # fmt: skip
        for link, announced in zip(links, serves, strict=True):
            link.state, link.credit, link.ever_ready = READY, count, True
            link.serves = announced
        routes = Routes(links)
        routes.update()
        queues = Queues(time.monotonic)
        queues.fresh.extend(queued_jobs)
        return links, routes, queues

    def before(serves: list[protocol.Serves]) -> float:  # the loop before routing
        links, routes, queues = setup(serves)
        choose, queue = routes.rotation.choose, queues.fresh
        started = time.perf_counter()
        while queue:
            link = choose(False)
            if link is None:
                break
            link.assign(queue.popleft())
        return time.perf_counter() - started

    def planned(
        serves: list[protocol.Serves], queued_jobs: list[Envelope] = jobs
    ) -> float:
        links, routes, queues = setup(serves, queued_jobs)
        started = time.perf_counter()
        for link, job in routes.plan(queues):
            link.assign(job)
        return time.perf_counter() - started

    runs: dict[str, list[float]] = {"before": []}
    for name in [*fleets, *queued]:
        runs[name] = []
    for index in range(rounds):  # back to back, the order alternating
        order = [("before", lambda: before(fleets["uniform_plain"]))]
        order += [
            (name, lambda s=serves: planned(s)) for name, serves in fleets.items()
        ]
        order += [(name, lambda s=serves: planned(s, in_queues))
                  for name, serves in queued.items()]  # fmt: skip
        if index % 2:
            order.reverse()
        for name, run in order:
            runs[name].append(run() / count * 1e6)
    return {f"{name}_us": statistics.median(values) for name, values in runs.items()}


def worker(count: int, batch: int, handler: str = "greenpipe.handlers:noop") -> float:
    import zmq  # a plain client: the worker, not the driver, must be the bottleneck

    proc, endpoint = _worker("--concurrency", "200", handler=handler)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)
    sock.send_multipart(protocol.encode_hello(0.5, "bench.micro"))
    while sock.recv_multipart()[0] != protocol.READY:
        pass
    credit, sent, acked = 200, 0, 0
    records = [
        protocol.encode_job(b"m-%x" % i, 1, b"GET", b"/", b"", b"", b"")
        for i in range(batch)
    ]
    frame = b"".join(records)  # the same ids each batch: the worker does not care
    started = time.perf_counter()
    while acked < count:
        while sent - acked + batch <= credit and sent < count:
            sock.send_multipart([protocol.JOBS, frame])
            sent += batch
        reply = sock.recv_multipart()
        if reply[0] == protocol.ACKS:
            acked += len(reply[1].split())
    rate = acked / (time.perf_counter() - started)
    sock.close(0)
    ctx.term()
    proc.terminate()
    proc.wait(10)
    return rate


def progress(count: int, rounds: int = 3) -> dict[str, float]:
    """Jobs/s of one worker whose handler reports progress ten times per job
    (`Job.progress`), alternated with the no-op handler, best of `rounds`."""
    reporting, plain, reports = "bench.progress_handlers:reporting", 0.0, 0.0
    for _ in range(rounds):
        plain = max(plain, worker(count, 32))
        reports = max(reports, worker(count, 32, reporting))
    return {"noop": plain, "ten_reports": reports, "ratio": reports / plain}


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.micro", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    scale = 50 if args.quick else 1  # quick: the suite checks it runs, not its figures
    results = {
        "ids": ids(200_000 // scale),
        "frames": frames(200_000 // scale),
        "dispatcher": dispatcher(100_000 // scale),
        # The result store's cost (RESULT_STORE, on by default): off, then on
        # again, so a drift of the machine shows as the two "on" apart.
        "dispatcher_result_store_off": dispatcher(100_000 // scale, "off"),
        "dispatcher_again": dispatcher(100_000 // scale),
        "books": books(320_000 // scale),
        "routing": routing(100_000 // scale),
        "worker_jobs_per_s": {
            "batch_32": worker(200_000 // scale, 32),
            "batch_1": worker(50_000 // scale, 1),
        },
        "worker_progress": progress(100_000 // scale),
    }
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
