"""Workers added and removed without restarting the web (WORKERS_FILE + SIGHUP)."""

from __future__ import annotations

import signal

import pytest

from greenpipe import ConfigError, config
from tests.support import Load, handled_ids, poll_until


def test_workers_file_is_read_and_checked(tmp_path):
    listed = tmp_path / "workers"
    listed.write_text("# the pool\n127.0.0.1:5001\n\n127.0.0.1:5002  # second\n")
    settings = config.load_web(["--workers-file", str(listed)], {})
    assert [e.address for e in settings.workers] == [
        "tcp://127.0.0.1:5001", "tcp://127.0.0.1:5002"]  # fmt: skip
    listed.write_text("127.0.0.1:5001\nnot a worker\n")
    with pytest.raises(ConfigError, match="WORKERS_FILE=.*one worker per line"):
        config.load_web(["--workers-file", str(listed)], {})
    with pytest.raises(ConfigError, match="cannot read it"):
        config.load_web(["--workers-file", str(tmp_path / "missing")], {})


def test_sighup_adds_and_removes_workers_under_load_losing_nothing(
    start_worker, start_web, record_dir, tmp_path
):
    a, b, c = (start_worker() for _ in range(3))
    listed = tmp_path / "workers"
    listed.write_text(f"127.0.0.1:{a.port}\n127.0.0.1:{b.port}\n")
    web = start_web([a], workers_file=listed, heartbeat=0.2, heartbeat_timeout=1)
    assert [w["endpoint"] for w in web.worker_stats()] == [
        f"tcp://127.0.0.1:{a.port}", f"tcp://127.0.0.1:{b.port}"]  # fmt: skip
    load = Load(web.port, total=None, concurrency=10, payload={"sleep": 0.01})
    poll_until(web.stats, lambda s: s["acked"] >= 200, 30, "200 acknowledged")

    listed.write_text(f"127.0.0.1:{a.port}\n127.0.0.1:{b.port}\n127.0.0.1:{c.port}\n")
    web.proc.signal(signal.SIGHUP)
    web.proc.expect(rf"SIGHUP: .*added tcp://127\.0\.0\.1:{c.port}, removing none")
    poll_until(lambda: web.worker_stats()[2]["acked"], lambda n: n >= 50, 20,
               "the added worker taking jobs")  # fmt: skip

    listed.write_text(f"127.0.0.1:{b.port}\n127.0.0.1:{c.port}\n")
    web.proc.signal(signal.SIGHUP)
    web.proc.expect(rf"worker tcp://127\.0\.0\.1:{a.port} removed", timeout=20)
    before = web.stats()["acked"]
    poll_until(web.stats, lambda s: s["acked"] >= before + 200, 30,
               "200 more acknowledged after the removal")  # fmt: skip
    load.stop()
    load.join(30)
    stats = web.wait_settled()
    assert [w["endpoint"] for w in stats["workers"]] == [
        f"tcp://127.0.0.1:{b.port}", f"tcp://127.0.0.1:{c.port}"]  # fmt: skip
    assert (stats["workers_added"], stats["workers_removed"]) == (1, 1), stats
    assert stats["dead_lettered"] == 0, stats
    assert set(load.statuses()) == {202}, load.statuses()
    missing = load.accepted_ids() - handled_ids(record_dir).keys()
    assert not missing, f"{len(missing)} accepted jobs never handled"


def test_sighup_with_a_bad_file_keeps_the_workers(start_worker, start_web, tmp_path):
    a = start_worker()
    listed = tmp_path / "workers"
    listed.write_text(f"127.0.0.1:{a.port}\n")
    web = start_web([a], workers_file=listed)
    listed.write_text("nonsense\n")
    web.proc.signal(signal.SIGHUP)
    web.proc.expect("SIGHUP: WORKERS_FILE=.*keeping the workers as they are")
    assert web.post("/jobs", {})[0] == 202
