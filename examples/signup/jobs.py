"""The signup example's worker side: two named jobs in one registry.

    port=4444 python server.py --handler examples.signup.jobs:handlers \
        --app examples.signup.app:app
"""

from __future__ import annotations

import logging

import gevent
from flask import current_app

from greenpipe import Handlers, Job

log = logging.getLogger("signup.jobs")
handlers = Handlers()


@handlers.job("welcome_email")
def welcome_email(job: Job) -> dict:
    """Pretend to send a mail; the sender comes from the app's config."""
    email = job.json()["email"]
    sender = current_app.config["MAIL_SENDER"]  # runs in the app's context (--app)
    gevent.sleep(0.01)  # a cooperative wait, as a real SMTP client would make
    log.info("%s: welcome mail from %s to %s", job.worker, sender, email)
    return {"sent_to": email, "from": sender}


@handlers.job("resize_image")
def resize_image(job: Job) -> dict:
    """Pretend to resize: the result says what would have been made."""
    spec = job.json()
    width, height = int(spec["width"]), int(spec["height"])
    if width <= 0 or height <= 0:
        raise ValueError(f"cannot resize to {width}x{height}")
    return {"thumbnail": f"{spec['name']}@{width // 4}x{height // 4}"}
