"""Workers that run different job names, for routing by name (issue 32, part 2).

    python server.py --port 0 --handler tests.routing_handlers:welcome    # A
    python server.py --port 0 --handler tests.routing_handlers:both       # B
    python server.py --port 0 --handler tests.routing_handlers:shipping   # C

Each handler is `tests.handlers.record` (the JSON body steers it; it notes
"job-id attempt" in $GREENPIPE_RECORD_DIR/<port>.ids), registered by name.
"""

from __future__ import annotations

from greenpipe import Handlers
from tests.handlers import record

welcome = Handlers()  # A: only welcome_email
welcome.add("welcome_email", record)

both = Handlers()  # B: both names
both.add("welcome_email", record)
both.add("ship_order", record)

shipping = Handlers()  # C: only ship_order
shipping.add("ship_order", record)
