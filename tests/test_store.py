import multiprocessing as mp
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from safebasin.errors import UserError
from safebasin.store import SCHEMA_VERSION, Store, config_hash, eval_metrics


def _writer(path, worker, n):
    store = Store(path)
    for i in range(n):
        run_id, _ = store.upsert_run({"worker": worker, "i": i})
        store.start(run_id)
        store.finish(run_id, [("model", "advbench", "", "harmful_rate", i / n), ("model", "utility", "", "heldout_loss", 1.0)])
    store.close()


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "runs.db"
    Store(path).close()
    procs = [mp.get_context("spawn").Process(target=_writer, args=(str(path), w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = Store(path)
    runs = store.runs()
    assert len(runs) == 60 and all(r["status"] == "done" for r in runs)
    assert sum(len(store.metrics(r["id"])) for r in runs) == 120
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_crash_in_the_middle_of_a_write_leaves_no_partial_result(tmp_path):
    path = tmp_path / "runs.db"
    store = Store(path)
    run_id, _ = store.upsert_run({"x": 1})
    store.start(run_id)
    store.close()
    child = textwrap.dedent(f"""
        import os, signal
        from safebasin.store import Store
        s = Store({str(path)!r})
        with s.tx() as c:
            c.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?)", [({run_id}, 'model', 'b', '', f'm{{i}}', i) for i in range(50)])
            c.execute("UPDATE runs SET status='done' WHERE id={run_id}")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    r = subprocess.run([sys.executable, "-c", child])
    assert r.returncode == -signal.SIGKILL
    store = Store(path)
    assert store.run(run_id)["status"] == "running" and store.metrics(run_id) == []
    # and the store still takes writes afterwards
    store.finish(run_id, [("model", "b", "", "harmful_rate", 0.5)])
    assert store.run(run_id)["status"] == "done" and len(store.metrics(run_id)) == 1


def test_schema_version_is_checked(tmp_path):
    path = tmp_path / "runs.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value='999' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(UserError, match=f"schema version 999, this safebasin reads {SCHEMA_VERSION}"):
        Store(path)


def test_not_a_database(tmp_path):
    bad = tmp_path / "runs.db"
    bad.write_text("hello, not sqlite" * 100)
    with pytest.raises(UserError, match="not a readable results store"):
        Store(bad)


def test_upsert_is_idempotent_by_config_hash(tmp_path):
    store = Store(tmp_path / "runs.db")
    a = store.upsert_run({"lr": 1e-5, "b": [1, 2]})
    b = store.upsert_run({"b": [1, 2], "lr": 1e-5})
    assert a == b and config_hash({"lr": 1e-5, "b": [1, 2]}) == store.run(a[0])["config_hash"]
    assert store.run(store.run(a[0])["config_hash"][:6])["id"] == a[0]


def test_run_lookup_prefers_the_id_and_rejects_an_ambiguous_prefix(tmp_path):
    """Hashes depend on paths, so some hash in a store will start with a digit: '2' must still mean run 2."""
    store = Store(tmp_path / "runs.db")
    hashes, i = {}, 0

    def letter_shared():
        firsts = [h[0] for h in hashes.values()]
        return [c for c in "abcdef" if firsts.count(c) > 1]

    while sum(h[0] == "2" for h in hashes.values()) < 2 or not letter_shared():
        rid, _ = store.upsert_run({"i": i})
        hashes[rid] = store.run(rid)["config_hash"]
        i += 1
    assert store.run("2")["id"] == 2 and store.run(2)["id"] == 2
    other = next(rid for rid, h in hashes.items() if h[0] == "2" and rid != 2)
    assert store.run(hashes[other])["id"] == other and store.run(hashes[other][:10])["id"] == other
    assert store.run("zz") is None
    with pytest.raises(UserError, match="matches"):
        store.run(letter_shared()[0])  # a letter prefix cannot be read as an id


def test_eval_metrics_flatten():
    results = {"models": {"model": {"benchmarks": {"hexphi": {"n": 2, "harmful": 1, "harmful_rate": 0.5, "ci_low": 0.1,
                                                              "ci_high": 0.9, "refusal_rate": 0.5,
                                                              "by_category": {"A": {"n": 2, "harmful": 1, "harmful_rate": 0.5, "ci_low": 0.1, "ci_high": 0.9}}}},
                                    "utility": {"heldout_loss": 2.0, "heldout_data": "dolly"}}}}
    rows = eval_metrics(results)
    assert ("model", "hexphi", "", "harmful_rate", 0.5) in rows and ("model", "hexphi", "A", "n", 2) in rows
    assert ("model", "utility", "", "heldout_loss", 2.0) in rows and not any(r[3] == "heldout_data" for r in rows)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_claims_take_each_run_once_and_free_a_dead_workers_run(tmp_path):
    """The claim is what stops two sweeps on one dir from training the same trial twice."""
    import os
    import socket
    import time

    store = Store(tmp_path / "runs.db")
    ids = [store.upsert_run({"i": i})[0] for i in range(5)]
    since = time.time()
    assert store.claim_next(ids, since) == ids[0]
    assert store.claim(ids[0], since) is False  # ours, running: not free again
    row = store.run(ids[0])
    assert row["status"] == "running" and row["worker_pid"] == os.getpid() and row["worker_host"] == socket.gethostname()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with store.tx() as c:
            c.execute("UPDATE runs SET status='running', worker_pid=?, worker_host=? WHERE id=?", (live.pid, socket.gethostname(), ids[1]))
            c.execute("UPDATE runs SET status='running', worker_pid=?, worker_host=? WHERE id=?", (_dead_pid(), socket.gethostname(), ids[2]))
            c.execute("UPDATE runs SET status='running', worker_pid=1, worker_host='another-host' WHERE id=?", (ids[3],))
            c.execute("UPDATE runs SET status='failed', finished_at=? WHERE id=?", (since + 1, ids[4]))  # a peer's, just now
        assert store.claim_next(ids, since) == ids[2]  # the live worker's, the other host's and the fresh failure stay put
        assert store.claim_next(ids, since) is None
        assert store.claim(ids[4], since + 2) is True  # a failure from before this worker started is retried
    finally:
        live.kill()
        live.wait()
    assert store.claim(ids[1], since) is True  # its worker died: a resumed sweep takes it back


def test_readonly_store_leaves_a_foreign_sqlite_file_alone(tmp_path):
    from conftest import run_cli

    foreign = tmp_path / "runs.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.execute("INSERT INTO notes VALUES ('mine')")
    conn.commit()
    conn.close()
    before = foreign.read_bytes()
    with pytest.raises(UserError, match="not a safebasin results store"):
        Store(foreign, readonly=True)
    with pytest.raises(UserError, match="not a safebasin results store"):
        Store(foreign)  # not even a sweep may turn it into one
    r = run_cli("runs", "ls", tmp_path)
    assert r.returncode == 2 and "not a safebasin results store" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert foreign.read_bytes() == before
    conn = sqlite3.connect(foreign)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master")} == {"notes"}
    conn.close()


def test_runs_ls_and_show_read_a_real_store_without_writing(tmp_path):
    from conftest import run_cli

    store = Store(tmp_path / "runs.db")
    run_id, _ = store.upsert_run({"train": {"method": "sft", "lr": 1e-5, "batch_size": 2, "grad_accum": 1, "steps": 1, "ema_beta": None}})
    store.claim(run_id)
    store.finish(run_id, [("model", "advbench", "", "harmful_rate", 0.25)])
    store.close()
    before = (tmp_path / "runs.db").read_bytes()
    ls = run_cli("runs", "ls", tmp_path)
    assert ls.returncode == 0 and "done" in ls.stdout and "25.0%" in ls.stdout, ls.stderr
    show = run_cli("runs", "show", tmp_path, str(run_id))
    assert show.returncode == 0 and '"harmful_rate"' in show.stdout
    assert (tmp_path / "runs.db").read_bytes() == before
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        Store(tmp_path / "runs.db", readonly=True).conn.execute("DELETE FROM runs")
