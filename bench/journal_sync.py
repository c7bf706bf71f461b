"""What an fdatasync costs on the event loop vs in gevent's thread pool (prints JSON).

    python -m bench.journal_sync [--groups 400]

For each way (inline, pool) and each loop (idle; busy: a greenlet doing 100 µs
of Python work between yields, as a loaded web does), writes `groups` 4 KiB
groups to a file in a temporary directory with one fdatasync each, and reports
the median and p99 seconds per group, and how much of the busy greenlet's work
got done meanwhile (work units per second): the cost the web pays.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402


def _busy(done: list[int]) -> None:
    while True:
        end = time.perf_counter() + 0.0001
        while time.perf_counter() < end:
            pass
        done[0] += 1
        gevent.sleep(0)


def run(way: str, busy: bool, groups: int, folder: str) -> dict:
    path = os.path.join(folder, f"{way}-{busy}.log")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    pool = gevent.get_hub().threadpool
    done = [0]
    worker = gevent.spawn(_busy, done) if busy else None
    gevent.sleep(0.05)
    data = b"x" * 4096
    took = []
    started, before = time.perf_counter(), done[0]
    for _ in range(groups):
        t0 = time.perf_counter()
        os.write(fd, data)
        if way == "inline":
            os.fdatasync(fd)
        else:
            pool.apply(os.fdatasync, (fd,))
        took.append(time.perf_counter() - t0)
        gevent.sleep(0)
    elapsed = time.perf_counter() - started
    work = (done[0] - before) / elapsed
    if worker is not None:
        worker.kill()
    os.close(fd)
    took.sort()
    return {
        "way": way,
        "loop": "busy" if busy else "idle",
        "median_ms": round(took[len(took) // 2] * 1000, 3),
        "p99_ms": round(took[int(len(took) * 0.99)] * 1000, 3),
        "groups_per_s": round(groups / elapsed),
        "busy_work_per_s": round(work) if busy else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--groups", type=int, default=400)
    groups = parser.parse_args().groups
    with tempfile.TemporaryDirectory() as folder:
        for busy in (False, True):
            for way in ("inline", "pool", "inline", "pool"):
                print(json.dumps(run(way, busy, groups, folder)))


if __name__ == "__main__":
    main()
