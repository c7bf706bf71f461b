"""``greenpipe jobs``: list the failed and dead jobs a web keeps, and re-send them.

It asks a running web over HTTP (`greenpipe.failedroutes`), on the port
where its operator's routes answer: web.py's own port, or OPS_PORT for an
app that keeps them off its public port. Any process of a web answers for
all (they share the dead-letter file). The standard library only: no gevent,
no sockets of greenpipe's.

    greenpipe jobs failed [--name N] [--status failed|dead] [--json]
    greenpipe jobs resend ID [ID ...] | --name N | --all [--again]
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
TIMEOUT = 60.0  # s: a re-send of thousands submits them all before answering


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="greenpipe jobs",
        description="List the failed and dead jobs a web keeps (DEAD_LETTER), "
        "and send them again, each at most once.",
    )
    p.add_argument(
        "--web",
        default=os.environ.get("GREENPIPE_WEB", DEFAULT_WEB),
        help="the web's URL where its operator's routes answer (web.py's port, "
        "or OPS_PORT); env GREENPIPE_WEB; default %(default)s",
    )
    sub = p.add_subparsers(dest="command", required=True)
    failed = sub.add_parser("failed", help="list the kept jobs, oldest first")
    failed.add_argument("--name", help="only jobs with this name")
    failed.add_argument("--status", choices=("failed", "dead"), help="only these")
    failed.add_argument("--limit", type=int, default=1000, help="the newest N")
    failed.add_argument("--json", action="store_true", help="print the JSON")
    resend = sub.add_parser("resend", help="send kept jobs again, each once")
    resend.add_argument("ids", nargs="*", metavar="ID", help="kept jobs' ids")
    resend.add_argument("--name", help="every kept job with this name")
    resend.add_argument("--all", action="store_true", help="every kept job")
    resend.add_argument(
        "--again",
        action="store_true",
        help="also re-send those marked re-sent whose job never ran (a web "
        "killed mid-way); needs the result store",
    )
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "failed":
            return _failed(args)
        return _resend(args)
    except _Failed as exc:
        sys.stderr.write(f"greenpipe jobs: {exc}\n")
        return 2


class _Failed(Exception):
    pass


def _failed(args: argparse.Namespace) -> int:
    query = {"limit": str(args.limit)}
    if args.name is not None:
        query["name"] = args.name
    if args.status:
        query["status"] = args.status
    _, answer = _call(args.web, "GET", "/failed?" + urllib.parse.urlencode(query))
    if args.json:
        sys.stdout.write(json.dumps(answer, indent=2) + "\n")
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
    status, answer = _call(args.web, "POST", "/failed/resend", body)
    for dead, job in answer["sent"].items():
        sys.stdout.write(f"re-sent {dead} as {job}\n")
    for dead, job in answer["already"].items():
        sys.stdout.write(f"already re-sent {dead} as {job} (nothing new)\n")
    for dead, why in answer["refused"].items():
        sys.stdout.write(f"NOT re-sent {dead}: {why}\n")
    for dead in answer["unknown"]:
        sys.stdout.write(f"unknown {dead}: not in the dead-letter file\n")
    sys.stdout.write(
        f"{len(answer['sent'])} re-sent, {len(answer['already'])} already, "
        f"{len(answer['refused'])} refused, {len(answer['unknown'])} unknown\n"
    )
    return 1 if answer["refused"] or answer["unknown"] or status >= 400 else 0


def _call(
    web: str, method: str, path: str, body: dict | None = None
) -> tuple[int, dict[str, Any]]:
    url = web.rstrip("/") + path
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers |= {"Content-Type": "application/json", "X-Greenpipe-Action": "resend"}
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
        if exc.code == 503 and "sent" in answer:
            return exc.code, answer  # nothing re-sent: the lines say why
        if exc.code == 404 and "detail" in answer:
            raise _Failed(
                f"{method} {url}: 404 {answer['detail']} (is --web the port where "
                "the operator's routes answer? web.py's own port, or OPS_PORT)"
            ) from None
        raise _Failed(
            f"{method} {url}: {exc.code} {answer.get('error')}: {answer.get('detail')}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Failed(
            f"cannot reach the web at {web} ({reason}); is it running? give its "
            "URL with --web or GREENPIPE_WEB"
        ) from None


def _cut(text: str, size: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= size else text[: size - 1] + "…"
