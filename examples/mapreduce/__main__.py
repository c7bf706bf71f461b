"""Map-reduce collection: ventilator -> K workers -> sink, as real processes.

    python -m examples.mapreduce                 # 4 workers, the squares of 1..1000
    python -m examples.mapreduce --workers 8 --tasks 5000

The ventilator (this process) binds a PUSH for tasks, starts the sink and K
workers, and waits until all K are connected (the barrier: no `sleep 1`, and
the tasks are spread evenly from the first one). It then tells the sink how
many tasks to expect and pushes them. Workers square each number, taking a
few milliseconds, and push the result to the sink. The sink sums the results,
counts each task once (by its id), and prints one combined result, the
elapsed time and how the tasks were spread. It only decides it is finished
once it knows the total, so the "expect N" message cannot race the results.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

from greenpipe.pushpull import Puller, Pusher  # noqa: E402


def sink(address: str) -> int:
    """Bind PULL; sum results until the expected count is reached; print once."""
    with Puller(address, bind=True) as puller:
        print(f"sink: listening on {puller.endpoint}", flush=True)
        expected, started = None, None
        seen: set[int] = set()
        per_worker: Counter[str] = Counter()
        total = duplicates = 0
        for message in puller:
            item = puller.json(message)
            if "expect" in item:
                expected, started = item["expect"], item["started"]
            elif item["task"] in seen:
                duplicates += 1
            else:
                seen.add(item["task"])
                total += item["result"]
                per_worker[item["worker"]] += 1
            if expected is not None and len(seen) == expected:
                break
        elapsed = time.time() - started
        spread = ", ".join(f"{w} {n}" for w, n in sorted(per_worker.items()))
        print(
            f"sink: {len(seen)} tasks, result {total}, in {elapsed:.3f} s", flush=True
        )
        print(f"sink: tasks per worker: {spread}; duplicates {duplicates}", flush=True)
    return 0


def worker(name: str, tasks: str, sink_address: str) -> int:
    """PULL tasks, square them (a few ms each), PUSH results to the sink."""
    stopping = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stopping.set)
    with Puller(tasks) as puller, Pusher(sink_address) as results:
        results.wait_for_peers(1, timeout=10)

        def loop() -> None:
            for message in puller:
                task = puller.json(message)
                gevent.sleep(random.uniform(0.001, 0.004))  # the "work"
                results.send_json(
                    {"task": task["id"], "result": task["n"] ** 2, "worker": name}
                )

        runner = gevent.spawn(loop)
        print(f"{name}: ready", flush=True)
        stopping.wait()
        runner.kill()
    return 0


def _start(*args: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "examples.mapreduce", *args]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


def ventilator(workers: int, tasks: int) -> int:
    sink_proc = _start("sink", "tcp://127.0.0.1:0")
    sink_address = sink_proc.stdout.readline().rsplit(" ", 1)[1].strip()
    with Pusher("tcp://127.0.0.1:*", bind=True) as pusher:
        procs = [
            _start("worker", f"w{i + 1}", pusher.endpoint, sink_address)
            for i in range(workers)
        ]
        try:
            pusher.wait_for_peers(workers, timeout=20)
            started = time.time()
            with Pusher(sink_address) as to_sink:
                to_sink.wait_for_peers(1, timeout=10)
                to_sink.send_json({"expect": tasks, "started": started})
            for task in range(1, tasks + 1):
                pusher.send_json({"id": task, "n": task})
            print(f"ventilator: {tasks} tasks pushed to {workers} workers", flush=True)
            for line in sink_proc.stdout:
                print(line, end="", flush=True)
            code = sink_proc.wait(30)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(10)
    expected = tasks * (tasks + 1) * (2 * tasks + 1) // 6
    print(f"ventilator: expected {expected}", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if args and args[0] == "sink":
        return sink(args[1])
    if args and args[0] == "worker":
        return worker(*args[1:4])
    parser = argparse.ArgumentParser(
        prog="python -m examples.mapreduce",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=1000)
    options = parser.parse_args(args)
    return ventilator(options.workers, options.tasks)


if __name__ == "__main__":
    raise SystemExit(main())
