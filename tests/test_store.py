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
