"""``greenpipe jobs``: the failed and dead jobs a web keeps, and its backlog.

It asks a running web over HTTP (`greenpipe.jobroutes`), on the port where
its operator's routes answer: web.py's own port, or OPS_PORT for an app that
keeps them off its public port. For the kept jobs any process of a web
answers for all (they share the dead-letter file); the backlog is each
process's own (ask each OPS_PORT). The standard library only: no gevent, no
sockets of greenpipe's.

    greenpipe jobs failed [--name N] [--status failed|dead] [--json]
    greenpipe jobs resend ID [ID ...] | --name N | --all [--again]
    greenpipe jobs list [--status queued|scheduled|retrying|in_flight] [--name N]
    greenpipe jobs purge --name N | --all [--in-flight]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

DEFAULT_WEB = "http://127.0.0.1:4567"
TIMEOUT = 300.0  # s: a re-send of thousands submits them all before answering
WEB_HELP = (
    "the web's URL where its operator's routes answer (web.py's port, or "
    "OPS_PORT); env GREENPIPE_WEB; default " + DEFAULT_WEB
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="greenpipe jobs",
        description="List the failed and dead jobs a web keeps (DEAD_LETTER) "
        "and send them again, each at most once; list a web process's backlog "
        "and cancel it by name.",
    )
    p.add_argument(
        "--web", default=os.environ.get("GREENPIPE_WEB", DEFAULT_WEB), help=WEB_HELP
    )
    # --web after the command too (greenpipe jobs failed --web URL)
    web = argparse.ArgumentParser(add_help=False)
    web.add_argument("--web", default=argparse.SUPPRESS, help=WEB_HELP)
    sub = p.add_subparsers(dest="command", required=True)
    failed = sub.add_parser(
        "failed", parents=[web], help="list the kept jobs, oldest first"
    )
    failed.add_argument("--name", help="only jobs with this name")
    failed.add_argument("--status", choices=("failed", "dead"), help="only these")
    failed.add_argument("--limit", type=int, default=1000, help="the newest N")
    failed.add_argument("--json", action="store_true", help="print the JSON")
    resend = sub.add_parser(
        "resend", parents=[web], help="send kept jobs again, each once"
    )
    resend.add_argument("ids", nargs="*", metavar="ID", help="kept jobs' ids")
    resend.add_argument("--name", help="every kept job with this name")
    resend.add_argument("--all", action="store_true", help="every kept job")
    resend.add_argument(
        "--again",
        action="store_true",
        help="also re-send those marked re-sent whose job never ran (a web "
        "killed mid-way); needs the result store",
    )
    held = sub.add_parser(
        "list", parents=[web], help="the jobs a web process holds, not finished"
    )
    held.add_argument(
        "--status", choices=("queued", "scheduled", "retrying", "in_flight")
    )
    held.add_argument("--name", help="only jobs with this name")
    held.add_argument("--limit", type=int, default=1000, help="the first N")
    held.add_argument("--json", action="store_true", help="print the JSON")
    purge = sub.add_parser(
        "purge",
        parents=[web],
        help="cancel a web process's waiting jobs of a name (or all)",
    )
    purge.add_argument("--name", help="every waiting job with this name")
    purge.add_argument("--all", action="store_true", help="every waiting job")
    purge.add_argument(
        "--in-flight", action="store_true", help="running ones too (interrupted)"
    )
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    if "://" not in args.web:  # 127.0.0.1:4567, as a user types it
        args.web = "http://" + args.web
    try:
        if args.command == "failed":
            return _failed(args)
        if args.command == "list":
            return _list(args)
        if args.command == "purge":
            return _purge(args)
        return _resend(args)
    except _Failed as exc:
        sys.stderr.write(f"greenpipe jobs: {exc}\n")
        return 2
    except BrokenPipeError:  # | head: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


class _Failed(Exception):
    pass


def _fetch(args: argparse.Namespace, path: str) -> dict[str, Any] | None:
    """GET `path` with the listing's filters; None once ``--json`` printed it."""
    query = {"limit": str(args.limit)}
    if args.name is not None:
        query["name"] = args.name
    if args.status:
        query["status"] = args.status
    _, answer = _call(args.web, "GET", f"{path}?{urllib.parse.urlencode(query)}")
    if args.json:
        sys.stdout.write(json.dumps(answer, indent=2) + "\n")
        return None
    return answer


def _failed(args: argparse.Namespace) -> int:
    answer = _fetch(args, "/failed")
    if answer is None:
        return 0
    jobs = answer["jobs"]
    sys.stdout.write(
        f"{answer['total']} kept in {answer['file']}"
        + (f" (the newest {len(jobs)} shown)" if len(jobs) < answer["total"] else "")
        + "\n"
    )
    for job in jobs:
        error = (job.get("errors") or [job.get("reason", "")])[-1]
        resent = f"  re-sent as {job['resent_as']}" if "resent_as" in job else ""
        sys.stdout.write(
            f"{job.get('time', '')}  {job['status']:<6}  {job['id']}  "
            f"{job.get('name') or job.get('path', '')}  runs={job.get('runs', 1)}"
            f"{resent}\n    {_cut(str(error))}\n"
        )
    return 0


def _list(args: argparse.Namespace) -> int:
    answer = _fetch(args, "/backlog")
    if answer is None:
        return 0
    jobs = answer["jobs"]
    sys.stdout.write(
        f"{answer['total']} held by web process {answer['pid']}"
        + (f" (the first {len(jobs)} shown)" if len(jobs) < answer["total"] else "")
        + "\n"
    )
    for job in jobs:
        when = job.get("due_at") or job.get("next_at")
        extra = f"  at {when}" if when else ""
        if job.get("worker"):
            extra += f"  on {job['worker']}"
        if job.get("progress"):  # the handler's last report (job.progress)
            done, total = job["progress"]["done"], job["progress"]["total"]
            extra += f"  {done} of {total}" if total else f"  {done} done"
            if job["progress"]["note"]:
                extra += f"  {json.dumps(job['progress']['note'], ensure_ascii=False)}"
        sys.stdout.write(f"{job['status']:<9}  {job['id']}  {job['name']}{extra}\n")
    return 0


def _purge(args: argparse.Namespace) -> int:
    if (args.name is not None) == args.all:
        raise _Failed(
            "purge: give --name NAME or --all (one of them); `greenpipe jobs "
            "list` shows what a web holds"
        )
    body: dict[str, Any] = {"in_flight": args.in_flight}
    if args.all:
        body["every"] = True
    else:
        body["name"] = args.name
    status, answer = _call(args.web, "POST", "/backlog/purge", body, "purge")
    for job_id, why in answer["refused"].items():
        sys.stdout.write(f"NOT cancelled {job_id}: {why}\n")
    sys.stdout.write(
        f"{len(answer['cancelled'])} cancelled, {len(answer['cancelling'])} "
        f"cancelling, {len(answer['finished'])} finished before, "
        f"{len(answer['refused'])} refused"
        + (f", {len(answer['started'])} started meanwhile" if answer["started"] else "")
        + "\n"
    )
    return 1 if answer["refused"] or status >= 400 else 0


def _resend(args: argparse.Namespace) -> int:
    chosen = (bool(args.ids), args.name is not None, args.all).count(True)
    if chosen != 1:
        raise _Failed(
            "resend: give job ids, --name NAME or --all (one of them); "
            "`greenpipe jobs failed` lists the kept jobs"
        )
    body: dict[str, Any] = {"again": args.again}
    if args.ids:
        body["ids"] = args.ids
    elif args.name is not None:
        body["name"] = args.name
    else:
        body["every"] = True
    status, answer = _call(args.web, "POST", "/failed/resend", body, "resend")
    for dead, job in answer["sent"].items():
        sys.stdout.write(f"re-sent {dead} as {job}\n")
    for dead, job in answer["already"].items():
        sys.stdout.write(f"already re-sent {dead} as {job} (nothing new)\n")
    for dead, why in answer["refused"].items():
        sys.stdout.write(f"NOT re-sent {dead}: {why}\n")
    for dead, why in answer.get("in_doubt", {}).items():
        sys.stdout.write(f"IN DOUBT {dead}: {why}\n")
    for dead in answer["unknown"]:
        sys.stdout.write(f"unknown {dead}: not in the dead-letter file\n")
    sys.stdout.write(
        f"{len(answer['sent'])} re-sent, {len(answer['already'])} already, "
        f"{len(answer['refused'])} refused, {len(answer['unknown'])} unknown"
        + (f", {len(answer['in_doubt'])} in doubt" if answer.get("in_doubt") else "")
        + "\n"
    )
    unsettled = answer["refused"] or answer["unknown"] or answer.get("in_doubt")
    return 1 if unsettled or status >= 400 else 0


def _call(
    web: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    action: str = "",
) -> tuple[int, dict[str, Any]]:
    url = web.rstrip("/") + path
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers |= {"Content-Type": "application/json", "X-Greenpipe-Action": action}
    request = urllib.request.Request(url, data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            answer = json.loads(raw)
        except ValueError:
            raise _Failed(f"{method} {url}: {exc.code} {raw[:200]!r}") from None
        if exc.code == 503 and "refused" in answer:
            return exc.code, answer  # nothing done: the lines say why
        if exc.code == 421:
            raise _Failed(
                f"{method} {url}: 421 {answer.get('detail')}; give one process's "
                "OPS_PORT as --web"
            ) from None
        if exc.code == 404 and "detail" in answer:
            raise _Failed(
                f"{method} {url}: 404 {answer['detail']} (is --web the port where "
                "the operator's routes answer? web.py's own port, or OPS_PORT)"
            ) from None
        raise _Failed(
            f"{method} {url}: {exc.code} {answer.get('error')}: {answer.get('detail')}"
        ) from None
    except TimeoutError:
        raise _Failed(
            f"{method} {url}: no answer within {TIMEOUT:g} s; the web may still be "
            "working on it: list again to see what was done"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            raise _Failed(f"{method} {url}: no answer within {TIMEOUT:g} s; the "
                          "web may still be working on it: list again to see what "
                          "was done") from None  # fmt: skip
        raise _Failed(
            f"cannot reach the web at {web} ({reason}); is it running? give its "
            "URL with --web or GREENPIPE_WEB"
        ) from None


def _cut(text: str, size: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= size else text[: size - 1] + "…"
