"""The worker side of the bridge: receive jobs, run the handler, acknowledge.

One ROUTER bound on the worker's port serves every web that connects; each
answer (READY, ACKS, HEARTBEAT, BYE) goes back on the connection the web used,
so a worker needs no configuration but its port. The receive greenlet is the
only one waiting on the socket; handlers run in a pool of CONCURRENCY
greenlets; a sender greenlet batches acknowledgements and sends heartbeats
from this process's own event loop, so a loop that stops turning stops them.
The parts, each in its module:

- `process`: `Worker`, the receive and send loops, the messages by kind,
  drain; `run` (server.py's body, signals);
- `router`: the ROUTER socket, CURVE, sends that never wait;
- `peers`: the webs as the worker sees them (HELLO, READY, credit, silence);
- `pool`: the running handlers (start, deadlines, cancels, figures);
- `loading`: the handler and the app named by ``package.module:NAME``.

See docs/design-notes.md ("Issue 32 (part 1): the worker in rooms").
"""

from greenpipe.worker.loading import in_app_context, load_handler
from greenpipe.worker.peers import MAX_PEERS, Peer, Peers
from greenpipe.worker.pool import NO_DEADLINE, Pool
from greenpipe.worker.process import Worker, run
from greenpipe.worker.router import Router

__all__ = [
    "MAX_PEERS",
    "NO_DEADLINE",
    "Peer",
    "Peers",
    "Pool",
    "Router",
    "Worker",
    "in_app_context",
    "load_handler",
    "run",
]
