"""CURVE on worker links: the key tool, settings, the bridge with CURVE on,
what a web says when its handshake fails, and a key rotation without downtime.
(The attacks are in tests/security/.)"""

from __future__ import annotations

import os
import signal
import stat
import subprocess

import pytest
import zmq.auth

from greenpipe import ConfigError, config
from greenpipe.curve import fingerprint, write_keypair
from tests.support import (
    PYTHON,
    ROOT,
    Load,
    assert_round_robin_order,
    handled_ids,
    poll_until,
)

FAST = {"heartbeat": 0.25, "heartbeat_timeout": 1.5}


@pytest.fixture
def keys(tmp_path):
    folder = tmp_path / "keys"
    for name in ("worker", "web", "web-new", "intruder"):
        write_keypair(str(folder), name)
    allow = tmp_path / "allow"
    allow.mkdir()
    (allow / "web.key").write_bytes((folder / "web.key").read_bytes())
    return folder, allow


def curve_worker(keys) -> dict:
    folder, allow = keys
    return {"curve_secret": folder / "worker.key_secret", "curve_allow": allow}


def curve_web(keys, name: str = "web") -> dict:
    folder, _ = keys
    return {"curve_secret": folder / f"{name}.key_secret",
            "curve_server": folder / "worker.key"}  # fmt: skip


# -- the key tool and the settings ------------------------------------------------


def test_key_tool_writes_a_pyzmq_pair_secret_0600_and_never_overwrites(tmp_path):
    argv = [PYTHON, "-m", "greenpipe", "keys", str(tmp_path / "k"), "web1"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    public, secret = tmp_path / "k" / "web1.key", tmp_path / "k" / "web1.key_secret"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    pub, sec = zmq.auth.load_certificate(str(secret))
    assert zmq.auth.load_certificate(str(public)) == (pub, None)
    assert len(pub) == len(sec) == 40
    assert f"fingerprint {fingerprint(pub)}" in done.stdout
    assert "CURVE_ALLOW" in done.stdout and "CURVE_SERVER" in done.stdout
    again = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "refusing to overwrite" in again.stdout
    assert zmq.auth.load_certificate(str(secret)) == (pub, sec), "left as it was"


def test_curve_settings_come_in_pairs_and_name_what_is_missing(keys):
    folder, allow = keys
    with pytest.raises(ConfigError, match="CURVE_SECRET is set but CURVE_SERVER"):
        config.load_web(["--curve-secret", str(folder / "web.key_secret")], {})
    with pytest.raises(ConfigError, match="CURVE_ALLOW is set but CURVE_SECRET"):
        config.load_worker(["--curve-allow", str(allow)], {})


def test_a_public_key_given_as_the_secret_is_refused_at_start(keys):
    folder, allow = keys
    argv = [PYTHON, "server.py", "--port", "0", "--curve-secret",
            str(folder / "worker.key"), "--curve-allow", str(allow)]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert "holds only a public key" in done.stderr, done.stderr


# -- the bridge with CURVE on ------------------------------------------------------


def test_barrier_round_robin_and_a_kill_9_with_curve_on(
    keys, start_worker, start_web, record_dir
):
    workers = [start_worker(**curve_worker(keys)) for _ in range(3)]
    web = start_web(workers, **FAST, **curve_web(keys))
    web.proc.expect(r"CURVE on: this web's key [0-9a-f]{16}")
    ids = [web.post("/jobs", {"n": i})[2]["id"] for i in range(30)]  # in order
    web.wait_settled()
    assert_round_robin_order(record_dir, [w.port for w in workers], ids)

    load = Load(web.port, total=900, concurrency=20, payload={"sleep": 0.02})
    poll_until(web.stats, lambda s: s["acked"] >= 200, 30, "200 acknowledged")
    workers[1].proc.signal(signal.SIGKILL)
    load.join(120)
    assert load.statuses() == {202: 900}, (load.statuses(), load.errors[:5])
    stats = web.wait_settled()
    assert stats["resent"] >= 1 and stats["dead_lettered"] == 0, stats
    missing = load.accepted_ids() - handled_ids(record_dir).keys()
    assert not missing, f"{len(missing)} accepted jobs never handled"


def test_a_web_says_why_a_curve_worker_will_not_take_it(
    keys, start_worker, start_web, tmp_path
):
    folder, _ = keys
    worker = start_worker(**curve_worker(keys))
    # Four webs at once, each its own journal: one with CURVE off may not take
    # over the journal of one with CURVE on (its jobs would leave in the clear).
    wrong = start_web([worker], wait_barrier=False, ready_timeout=1,
                      curve_secret=folder / "web.key_secret",
                      curve_server=folder / "web.key",
                      journal_dir=tmp_path / "wrong")  # fmt: skip
    unlisted = start_web([worker], wait_barrier=False, ready_timeout=1,
                         journal_dir=tmp_path / "unlisted",
                         **curve_web(keys, "intruder"))  # fmt: skip
    plain = start_web([worker], wait_barrier=False, ready_timeout=1,
                      journal_dir=tmp_path / "plain")  # fmt: skip

    def why(web) -> str:
        code, _, body = web.get("/healthz")
        return "" if code == 200 else str(body["not_ready"])

    for web, text in ((wrong, "is CURVE_SERVER the worker's public key"),
                      (unlisted, "the worker refused this web's key"),
                      (plain, "the worker has CURVE on and this web has it off")):  # fmt: skip
        poll_until(lambda web=web: why(web), lambda s, text=text: text in s, 10,
                   f"/healthz of {web.proc.name} saying {text!r}")  # fmt: skip
        web.proc.expect(text)
    worker.proc.expect(r"refused a handshake from 127\.0\.0\.1: client key "
                       r"[0-9a-f]{16} not in the allowlist")  # fmt: skip
    good = start_web([worker], **FAST, **curve_web(keys))
    poll_until(lambda: good.worker_stats()[0]["refused"], lambda n: n >= 1, 10,
               "the worker's refusal count reaching a web with its heartbeats")  # fmt: skip


def test_key_rotation_without_downtime(keys, start_worker, start_web, record_dir):
    folder, allow = keys
    worker = start_worker(**curve_worker(keys))
    old = start_web([worker], **FAST, **curve_web(keys))
    assert old.post("/jobs", {})[0] == 202
    # 1. the new key joins the allowlist (read again when the directory changes)
    (allow / "web-new.key").write_bytes((folder / "web-new.key").read_bytes())
    new = start_web([worker], **FAST, **curve_web(keys, "web-new"))
    worker.proc.expect(r"CURVE_ALLOW .* changed: 2 web keys allowed")
    # 2. the old web stops; the new one serves
    assert old.proc.stop() == 0
    assert new.post("/jobs", {})[0] == 202
    # 3. the old key leaves the allowlist: the old key is refused from then on
    (allow / "web.key").unlink()
    again = start_web([worker], wait_barrier=False, ready_timeout=1,
                      **FAST, **curve_web(keys))  # fmt: skip
    again.proc.expect("the worker refused this web's key")
    assert new.post("/jobs", {})[0] == 202, "the new key is still let in"
    new.wait_settled()
    assert sum(handled_ids(record_dir).values()) == 3
    # 4. a refused web says why in its 503, and once its key is allowed again
    # it gets in by itself (libzmq does not reconnect after a refusal)
    status, _, body = again.post("/jobs", {})
    assert status == 503 and "the worker refused this web's key" in body["detail"], body
    (allow / "web.key").write_bytes((folder / "web.key").read_bytes())
    again.proc.expect("trying the handshake again")
    again.proc.expect("barrier met")
    assert again.post("/jobs", {})[0] == 202
    again.wait_settled()
    assert sum(handled_ids(record_dir).values()) == 4


def test_beyond_loopback_without_curve_warns_once_naming_the_setting(start_worker):
    worker = start_worker(host="0.0.0.0")
    worker.proc.expect(
        r"beyond loopback without CURVE.*set CURVE_SECRET and CURVE_ALLOW"
    )
    quiet = start_worker()
    assert not quiet.proc.matches("beyond loopback")
