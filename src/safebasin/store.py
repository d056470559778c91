"""The results store: SQLite (WAL), one transaction per write, so a killed sweep loses nothing finished.

Tables: runs (config hash, config JSON, status, timestamps, run dir, error), metrics (per model
variant, benchmark, category and name) and artifacts (paths). `meta.schema_version` guards
against opening a store written by an incompatible safebasin. Workers claim runs here (one IMMEDIATE
transaction, under a flock), so two sweeps on one dir split the runs instead of both training each.
"""

import fcntl
import hashlib
import json
import os
import socket
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from .errors import UserError

STORE_FILE = "runs.db"  # in the sweep dir
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    config_hash TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL DEFAULT 'trial',          -- 'trial' or 'baseline' (the starting model)
    config_json TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    run_dir TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    worker_pid INTEGER,                          -- who runs it ('running'): a dead pid on this host frees the run
    worker_host TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    model TEXT NOT NULL,                         -- 'model' (kept) or 'raw'
    benchmark TEXT NOT NULL,                     -- e.g. 'advbench', or 'utility'
    category TEXT NOT NULL DEFAULT '',           -- '' = overall
    name TEXT NOT NULL,                          -- e.g. 'harmful_rate', 'heldout_loss'
    value REAL,
    PRIMARY KEY (run_id, model, benchmark, category, name)
);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
);
"""


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Store:
    def __init__(self, path: str | Path, timeout: float = 30.0, readonly: bool = False):
        """readonly: for listing and reports; never creates tables or changes the file (it may not be ours)."""
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            self._open_readonly(timeout)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock():  # workers starting together create the schema and switch to WAL one at a time
            self._open_readwrite(timeout)

    def _open_readwrite(self, timeout: float) -> None:
        try:
            self.conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)  # explicit transactions
            self.conn.row_factory = sqlite3.Row
            tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and "meta" not in tables:  # someone else's database: leave it as it is
                self.conn.close()
                raise UserError(f"{self.path}: an SQLite file, but not a safebasin results store (no meta table)")
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            with self.tx():
                for stmt in SCHEMA.split(";"):
                    if stmt.strip():
                        self.conn.execute(stmt)
                row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                if row is None:
                    self.conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                else:
                    self._check_version(row[0])
                have = {r["name"] for r in self.conn.execute("PRAGMA table_info(runs)")}
                for col, kind in (("worker_pid", "INTEGER"), ("worker_host", "TEXT")):  # stores written before claims
                    if col not in have:
                        self.conn.execute(f"ALTER TABLE runs ADD COLUMN {col} {kind}")
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path}: not a readable results store: {e}") from None

    def _open_readonly(self, timeout: float) -> None:
        if not self.path.is_file():
            raise UserError(f"{self.path}: no results store there")
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        try:
            self.conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not {"meta", "runs", "metrics", "artifacts"} <= tables:
                self.conn.close()
                raise UserError(f"{self.path}: an SQLite file, but not a safebasin results store (no runs/metrics tables)")
            row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path}: not a readable results store: {e}") from None
        try:
            self._check_version(row[0] if row else None)
        except UserError:
            self.conn.close()
            raise

    def _check_version(self, value) -> None:
        """`meta.schema_version` as written, compared as text: a hand-edited value is named, not parsed."""
        if str(value) != str(SCHEMA_VERSION):
            raise UserError(f"{self.path}: meta row schema_version: results store has schema version "
                            f"{'none' if value is None else value}, this safebasin reads {SCHEMA_VERSION}")

    def tx(self):
        """`with store.tx():` one IMMEDIATE transaction: all of it lands, or none of it."""
        return _Tx(self.conn)

    def close(self) -> None:
        self.conn.close()

    def pin(self, key: str, value: str) -> str:
        """The value recorded for `key` in the store's meta table, recording `value` when there is none yet."""
        with self.tx():
            row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            if row:
                return row["value"]
            self.conn.execute("INSERT INTO meta VALUES (?, ?)", (key, value))
            return value

    # --- runs
    def upsert_run(self, config: dict, kind: str = "trial", run_dir: str | None = None) -> tuple[int, str]:
        """(id, status) for this config, created as 'pending' when new."""
        h = config_hash(config)
        with self.tx():
            row = self.conn.execute("SELECT id, status FROM runs WHERE config_hash=?", (h,)).fetchone()
            if row:
                return row["id"], row["status"]
            cur = self.conn.execute(
                "INSERT INTO runs (config_hash, kind, config_json, status, run_dir, created_at) VALUES (?, ?, ?, 'pending', ?, ?)",
                (h, kind, json.dumps(config, sort_keys=True, default=str), run_dir, time.time()))
            return cur.lastrowid, "pending"

    def start(self, run_id: int) -> None:
        with self.tx():
            self.conn.execute("UPDATE runs SET status='running', started_at=?, error=NULL WHERE id=?", (time.time(), run_id))
            self.conn.execute("DELETE FROM metrics WHERE run_id=?", (run_id,))

    @contextmanager
    def lock(self):
        """An OS lock on `<store>.lock` so concurrent workers claim in turn; the OS drops it when a worker dies."""
        with open(self.path.with_suffix(".lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def claim(self, run_id: int, retry_failed_before: float = float("inf")) -> bool:
        """Take one run for this process, if it is free; see claim_next."""
        return self.claim_next([run_id], retry_failed_before) == run_id

    def claim_next(self, run_ids: list[int], retry_failed_before: float = float("inf")) -> int | None:
        """The first of `run_ids` that is free, moved to 'running' under this pid/host in one transaction.

        Free: pending; failed before `retry_failed_before` (a worker retries old failures once, not ones a peer
        just had); or running under a worker that is dead (same host). None when nothing is left to claim.
        """
        with self.lock(), self.tx():
            for run_id in run_ids:
                row = self.conn.execute("SELECT status, finished_at, worker_pid, worker_host FROM runs WHERE id=?",
                                        (run_id,)).fetchone()
                if row is None:
                    continue
                free = (row["status"] == "pending"
                        or (row["status"] == "failed" and (row["finished_at"] or 0) < retry_failed_before)
                        or (row["status"] == "running" and not _worker_alive(row["worker_pid"], row["worker_host"])))
                if free:
                    self.conn.execute("UPDATE runs SET status='running', started_at=?, finished_at=NULL, error=NULL, "
                                      "worker_pid=?, worker_host=? WHERE id=?",
                                      (time.time(), os.getpid(), socket.gethostname(), run_id))
                    self.conn.execute("DELETE FROM metrics WHERE run_id=?", (run_id,))
                    return run_id
        return None

    def finish(self, run_id: int, metrics: list[tuple], artifacts: dict[str, str] | None = None) -> None:
        """Metrics rows (model, benchmark, category, name, value) and the 'done' status in one transaction."""
        with self.tx():
            self.conn.execute("DELETE FROM metrics WHERE run_id=?", (run_id,))
            self.conn.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?)", [(run_id, *m) for m in metrics])
            for name, path in (artifacts or {}).items():
                self.conn.execute("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?)", (run_id, name, path))
            self.conn.execute("UPDATE runs SET status='done', finished_at=? WHERE id=?", (time.time(), run_id))

    def fail(self, run_id: int, error: str) -> None:
        with self.tx():
            self.conn.execute("UPDATE runs SET status='failed', finished_at=?, error=? WHERE id=?", (time.time(), error[:2000], run_id))

    def runs(self, status: str | None = None) -> list[dict]:
        q = "SELECT * FROM runs" + (" WHERE status=?" if status else "") + " ORDER BY id"
        return [self._with_config(r) for r in self.conn.execute(q, (status,) if status else ())]

    def run(self, key: str | int) -> dict | None:
        """By id, else by config hash or a unique prefix of one. An id wins: '2' is run 2 even if a hash starts with 2."""
        key = str(key)
        rows = []
        if key.isdigit():
            rows = self.conn.execute("SELECT * FROM runs WHERE id=?", (int(key),)).fetchall()
        if not rows:
            rows = self.conn.execute("SELECT * FROM runs WHERE config_hash=?", (key,)).fetchall()
        if not rows and key:
            rows = self.conn.execute("SELECT * FROM runs WHERE substr(config_hash, 1, ?)=?", (len(key), key)).fetchall()
        if len(rows) > 1:
            raise UserError(f"{self.path}: {key!r} matches {len(rows)} runs by hash prefix; give more of the hash")
        return self._with_config(rows[0]) if rows else None

    def _with_config(self, row) -> dict:
        """A runs row with its config parsed; a hand-edited config_json is named by file and row, not a traceback."""
        try:
            config = json.loads(row["config_json"])
        except (TypeError, ValueError) as e:
            raise UserError(f"{self.path}: runs row id {row['id']}: config_json is not JSON ({e})") from None
        if not isinstance(config, dict):
            raise UserError(f"{self.path}: runs row id {row['id']}: config_json is not a JSON object")
        return dict(row) | {"config": config}

    def metrics(self, run_id: int) -> list[dict]:
        rows = [dict(r) for r in self.conn.execute("SELECT * FROM metrics WHERE run_id=? ORDER BY model, benchmark, category, name", (run_id,))]
        for r in rows:  # SQLite keeps whatever a hand edit put in a REAL column
            if not _number(r["value"]):
                raise UserError(f"{self.path}: metrics row run_id {run_id}, {r['model']}/{r['benchmark']}/{r['name']}: "
                                f"value {r['value']!r} is not a number")
        return rows

    def benchmarks(self, metric: str) -> list[str]:
        """Every benchmark some run has `metric` on, sorted."""
        return [r[0] for r in self.conn.execute("SELECT DISTINCT benchmark FROM metrics WHERE name=? ORDER BY benchmark", (metric,))]

    def artifacts(self, run_id: int) -> dict[str, str]:
        return {r["name"]: r["path"] for r in self.conn.execute("SELECT name, path FROM artifacts WHERE run_id=?", (run_id,))}


def _worker_alive(pid: int | None, host: str | None) -> bool:
    """Another host's worker is taken as alive (no way to tell); a row without a pid predates claims: stale."""
    if pid is None:
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, someone else's
        return True
    return True


class _Tx:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        return False


def eval_metrics(results: dict) -> list[tuple]:
    """Flatten an eval.json-shaped dict into store rows; a system bench's [low, high] CI (tp_ci) as tp_ci_low/_high;
    a bench suite's own numbers as its `store_rows` give them."""
    from .evaluate import SUITES

    suites, rows = list(SUITES.values()), []
    for variant, entry in results["models"].items():
        for bench, b in entry.get("benchmarks", {}).items():  # every number a bench reports, whatever its kind
            rows += [(variant, bench, "", name, v) for name, v in b.items() if _number(v)]
            rows += [(variant, bench, "", f"{name}_{end}", v) for name, ci in b.items() if name.endswith("_ci")
                     and isinstance(ci, list) and len(ci) == 2 and all(map(_number, ci)) for end, v in zip(("low", "high"), ci)]
            for cat, c in b.get("by_category", {}).items():
                rows += [(variant, bench, cat, name, v) for name, v in c.items() if _number(v)]
        for name, value in entry.get("utility", {}).items():
            if isinstance(value, (int, float)):
                rows.append((variant, "utility", "", name, value))
        rows += [row for suite in suites for row in suite.store_rows(variant, entry)]  # e.g. system 1's panel halves
    return rows


def _number(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
