"""Locust load for greenpipe: GET / and POST /jobs, where anything but 202 fails.

Headless, as ab -n/-c would (5 minutes, 100 users started at once):

    .venv/bin/locust -f loadtest/locustfile.py --headless -u 100 -r 100 -t 5m \\
        --host http://127.0.0.1:4567

With the web UI (bound to loopback by pyproject.toml's [tool.locust]):

    .venv/bin/locust -f loadtest/locustfile.py --host http://127.0.0.1:4567

Knobs (flags, or the environment variables named):
  --get-weight N     (LOCUST_GET_WEIGHT, 1)   share of GET /
  --post-weight N    (LOCUST_POST_WEIGHT, 1)  share of POST /jobs {"n": i}
  --ab-requests N    (LOCUST_AB_REQUESTS, 0)  stop after exactly N requests in all,
                                              as ab -n does (0: run until stopped)
  --ab-summary FILE  write the totals as JSON when the run ends (python -m loadtest)
  --max-fail-ratio R (LOCUST_MAX_FAIL_RATIO, 0) exit 1 if more requests than R failed

Exactly N: each request takes a ticket first; a user finding none left stops.
With --processes K, worker process i gets its share of the N tickets, counts
its own requests exactly, and tells the master when its share is done; the
master quits when every share is done.
"""

from __future__ import annotations

import itertools
import json
import sys
import time

import gevent
from locust import FastHttpUser, events, task
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    group = parser.add_argument_group("greenpipe")
    group.add_argument(
        "--get-weight",
        type=int,
        env_var="LOCUST_GET_WEIGHT",
        default=1,
        help="share of GET / requests",
    )
    group.add_argument(
        "--post-weight",
        type=int,
        env_var="LOCUST_POST_WEIGHT",
        default=1,
        help="share of POST /jobs requests",
    )
    group.add_argument(
        "--ab-requests",
        type=int,
        env_var="LOCUST_AB_REQUESTS",
        default=0,
        help="stop after exactly this many requests (0: no limit)",
    )
    group.add_argument(
        "--ab-summary", default="", help="write totals as JSON here at the end"
    )
    group.add_argument(
        "--ab-progress",
        type=float,
        default=1.0,
        help="seconds between progress lines (0: none)",
    )
    group.add_argument(
        "--max-fail-ratio",
        type=float,
        env_var="LOCUST_MAX_FAIL_RATIO",
        default=0.0,
        help="exit 1 if a larger share of requests failed",
    )


class Tickets:
    """This process's share of the requests, and exact counts of what came back."""

    def __init__(self) -> None:
        self.limit = 0  # 0: unlimited
        self.taken = 0
        self.done = 0
        self.failures: dict[str, int] = {}
        self.finished = gevent.event.Event()

    def take(self) -> bool:
        if self.limit and self.taken >= self.limit:
            return False
        self.taken += 1
        return True

    def record(self, failure: str | None) -> None:
        self.done += 1
        if failure is not None:
            self.failures[failure] = self.failures.get(failure, 0) + 1
        if self.limit and self.done >= self.limit:
            self.finished.set()


TICKETS = Tickets()
_numbers = itertools.count(1)


class JobUser(FastHttpUser):
    """One client: GET / or POST /jobs, back to back (ab has no think time)."""

    def _expect_202(self, response) -> None:
        if response.status_code == 202:
            response.success()
            TICKETS.record(None)
        else:
            reason = f"expected 202, got {response.status_code or 'no response'}"
            response.failure(reason)
            TICKETS.record(reason)

    @task(1)
    def get_root(self) -> None:
        if not TICKETS.take():
            raise StopUser()
        with self.client.get("/", catch_response=True, name="GET /") as response:
            self._expect_202(response)

    @task(1)
    def post_job(self) -> None:
        if not TICKETS.take():
            raise StopUser()
        body = {"n": next(_numbers)}
        with self.client.post(
            "/jobs", json=body, catch_response=True, name="POST /jobs"
        ) as response:
            self._expect_202(response)


@events.init.add_listener
def _on_init(environment, **_kwargs) -> None:
    options = environment.parsed_options
    if options is None:  # used as a library (python -m loadtest.scenario)
        return
    weights = [
        (JobUser.get_root, options.get_weight),
        (JobUser.post_job, options.post_weight),
    ]
    JobUser.tasks = [fn for fn, weight in weights for _ in range(max(0, weight))]
    if not JobUser.tasks:
        sys.exit("loadtest: --get-weight and --post-weight cannot both be 0")
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        _master(environment, options)
    elif isinstance(runner, WorkerRunner):
        _worker(environment, options)
    else:
        _local(environment, options)


def _users_gone(runner, timeout: float = 5.0) -> None:
    """Wait for the users that found no ticket to end (StopUser), up to `timeout`.

    Stopped at once, Locust finds the users that just ended still in its
    group, their arguments already cleared, and logs an ERROR for each
    ("a user that didn't have proper args") at the end of a passing run.
    """
    runner.user_greenlets.join(timeout=timeout)


def _share(total: int, processes: int, index: int) -> int:
    return total // processes + (1 if index < total % processes else 0)


def _local(environment, options) -> None:
    TICKETS.limit = options.ab_requests
    if TICKETS.limit:

        def stop_when_done() -> None:
            TICKETS.finished.wait()
            _users_gone(environment.runner)
            environment.runner.quit()

        gevent.spawn(stop_when_done)
    _progress(environment, options, lambda: TICKETS.done)
    _summary_on_quit(
        environment, options, lambda: (TICKETS.done, dict(TICKETS.failures))
    )


def _worker(environment, options) -> None:
    runner = environment.runner

    def on_spawn(**_kw) -> None:  # the index is known once the master acked us
        if options.ab_requests and not TICKETS.limit:
            processes = max(1, options.processes or 1)
            TICKETS.limit = _share(options.ab_requests, processes, runner.worker_index)
            if TICKETS.limit == 0:
                TICKETS.finished.set()

    def report_when_done() -> None:
        TICKETS.finished.wait()
        _users_gone(runner)  # before the master stops us
        runner._send_stats()  # make the master's view complete before "done"
        runner.send_message(
            "ab_done", {"done": TICKETS.done, "failures": TICKETS.failures}
        )

    environment.events.spawning_complete.add_listener(on_spawn)
    environment.events.test_start.add_listener(on_spawn)
    if options.ab_requests:
        gevent.spawn(report_when_done)


def _master(environment, options) -> None:
    processes = max(1, options.processes or 1)
    reports: dict[str, dict] = {}

    def on_done(msg, **_kw) -> None:
        reports[msg.node_id] = msg.data
        if len(reports) >= processes:
            environment.runner.quit()

    environment.runner.register_message("ab_done", on_done)

    def totals() -> tuple[int, dict[str, int]]:
        failures: dict[str, int] = {}
        for report in reports.values():
            for reason, count in report["failures"].items():
                failures[reason] = failures.get(reason, 0) + count
        done = sum(report["done"] for report in reports.values())
        return done, failures

    def progress_count() -> int:
        return max(totals()[0], environment.stats.total.num_requests)

    _progress(environment, options, progress_count)
    _summary_on_quit(environment, options, totals)


def _progress(environment, options, count) -> None:
    """A progress line every --ab-progress seconds, and a last one at the end."""
    if not options.ab_progress:
        return
    total = options.ab_requests
    started = time.monotonic()

    def line() -> None:
        done = count()
        rate = done / max(1e-9, time.monotonic() - started)
        failed = environment.stats.total.num_failures
        of = f"/{total}" if total else ""
        print(
            f"progress: {done}{of} requests, {rate:,.0f}/s, {failed} failed",
            file=sys.stderr,
            flush=True,
        )

    def loop() -> None:
        while True:
            gevent.sleep(options.ab_progress)
            line()

    gevent.spawn(loop)
    environment.events.quitting.add_listener(lambda **_kw: line())


def _summary_on_quit(environment, options, totals) -> None:
    @environment.events.quitting.add_listener
    def _write(environment, **_kw) -> None:
        stats = environment.stats.total
        done, failures = totals()
        if not options.ab_requests:
            done = stats.num_requests
            failures = {
                str(e.error): e.occurrences for e in environment.stats.errors.values()
            }
        failed = sum(failures.values())
        elapsed = max(
            1e-9, (stats.last_request_timestamp or time.time()) - stats.start_time
        )
        summary = {
            "requests": done,
            "failures": failed,
            "failures_by_kind": failures,
            "elapsed_s": elapsed,
            "rps": done / elapsed,
            "latency_ms": {
                f"p{int(q * 100)}": stats.get_response_time_percentile(q)
                for q in (0.5, 0.9, 0.99)
            }
            | {"max": stats.max_response_time, "mean": stats.avg_response_time},
            "exact": bool(options.ab_requests),
        }
        if options.ab_summary:
            with open(options.ab_summary, "w") as file:
                json.dump(summary, file)
        if done and failed / done > options.max_fail_ratio:
            environment.process_exit_code = 1
