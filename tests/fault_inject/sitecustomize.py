"""A fault at the K-th database write of one `hpo search` process, for tests/test_coordinator_crash.py.

Python imports ``sitecustomize`` at start-up from the first folder on ``sys.path`` that has
one; the test puts this folder first on PYTHONPATH of the coordinator it starts, so the
product code carries no test seam. Nothing happens unless HPO_FAULT_AT_WRITE is set.

A write is a statement that changes data (INSERT, UPDATE, DELETE, REPLACE); reads, locks
(``pg_advisory_lock``) and pragmas are not counted. Writes to ``trial_heartbeats`` are not
counted either: the coordinator records one only when it sees a worker's trial before that
worker's first beat, a matter of timing, and counting them would make the K-th write a
different statement from one run to the next.

Environment:

* HPO_FAULT_AT_WRITE=K: the write to fail at (1-based); 0 only records every write.
* HPO_FAULT_MODE:
  ``kill``: SIGKILL this process just before the K-th write is sent;
  ``kill-after``: SIGKILL it just after the K-th write is committed (after its transaction's
  COMMIT returned, or after the statement itself on an autocommit connection);
  ``cut``: just before the K-th write, ask the test to stop the database server, wait until it
  says the server is down, then send the write (it fails: the coordinator must retry it).
* HPO_FAULT_RECORD: a file of JSON lines: {"k", "statement", "params"} for each write counted,
  {"committed": [k, ...]} or {"rolled_back": [k, ...]} as its transaction ends, {"error",
  "statement"} for each statement that failed, and
  {"fault": K, ...} when the fault is injected, so the test names the write.
* HPO_FAULT_CUT_REQUEST / HPO_FAULT_CUT_DONE: files of the ``cut`` handshake (this process
  creates the first; the test creates the second once the server is down).
* Only a process whose command line has ``search`` counts (checked at each write, since
  workers started by the coordinator inherit the environment).
"""

from __future__ import annotations

import os

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
_CUT_WAIT_SECONDS = 120.0


def _install() -> None:
    import json
    import signal
    import sys
    import threading
    import time

    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.engine.default import DefaultDialect

    target = int(os.environ["HPO_FAULT_AT_WRITE"])
    mode = os.environ.get("HPO_FAULT_MODE", "kill")
    record_path = os.environ.get("HPO_FAULT_RECORD")
    lock = threading.Lock()
    state = {"count": 0}
    in_transaction: dict[int, list[int]] = {}  # DBAPI connection -> the writes it has not committed yet

    def is_coordinator() -> bool:
        return "search" in sys.argv[1:]

    def record(line: dict) -> None:
        if record_path:
            with lock, open(record_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line, default=repr) + "\n")

    def is_write(statement: str) -> bool:
        words = statement.lstrip().split(None, 1)
        return bool(words) and words[0].upper() in _WRITES and "trial_heartbeats" not in statement

    def short(parameters) -> str:
        text = repr(parameters)
        return text if len(text) <= 300 else text[:300] + "..."

    def cut() -> None:
        request, done = os.environ["HPO_FAULT_CUT_REQUEST"], os.environ["HPO_FAULT_CUT_DONE"]
        with open(request, "w", encoding="utf-8") as f:
            f.write(str(os.getpid()))
        deadline = time.monotonic() + _CUT_WAIT_SECONDS
        while not os.path.exists(done):
            if time.monotonic() > deadline:  # the test is gone: go on rather than hang
                record({"fault": target, "error": "no answer to the cut request"})
                return
            time.sleep(0.05)

    def key(connection) -> int:
        """The same key for a pooled connection and the DBAPI connection inside it."""
        return id(getattr(connection, "dbapi_connection", connection))

    def committed(dbapi_id: int) -> None:
        """The writes of this connection's transaction are in the database now."""
        writes = in_transaction.pop(dbapi_id, [])
        if writes:
            record({"committed": writes})
        if mode == "kill-after" and target in writes:
            os.kill(os.getpid(), signal.SIGKILL)

    @event.listens_for(Engine, "before_cursor_execute")
    def before(conn, cursor, statement, parameters, context, executemany):
        if not is_write(statement) or not is_coordinator():
            return
        with lock:
            state["count"] += 1
            k = state["count"]
        record({"k": k, "statement": " ".join(statement.split()), "params": short(parameters)})
        in_transaction.setdefault(key(conn.connection), []).append(k)
        if k != target:
            return
        record({"fault": k, "mode": mode})
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif mode == "cut":
            cut()

    @event.listens_for(Engine, "after_cursor_execute")
    def after(conn, cursor, statement, parameters, context, executemany):
        if conn._is_autocommit_isolation():  # no COMMIT follows: the statement itself was one
            committed(key(conn.connection))

    @event.listens_for(Engine, "handle_error")
    def failed(context):
        pooled = getattr(context.connection, "_dbapi_connection", None)
        if pooled is not None:  # a broken connection is dropped without a rollback
            in_transaction.pop(key(pooled), None)
        if is_coordinator():
            lines = str(context.original_exception).strip().splitlines() or [type(context.original_exception).__name__]
            record({"error": lines[0][:200], "statement": " ".join((context.statement or "").split())[:120]})

    plain_commit, plain_rollback = DefaultDialect.do_commit, DefaultDialect.do_rollback

    def do_commit(self, dbapi_connection):
        plain_commit(self, dbapi_connection)
        committed(key(dbapi_connection))

    def do_rollback(self, dbapi_connection):
        writes = in_transaction.pop(key(dbapi_connection), [])
        if writes:
            record({"rolled_back": writes})
        plain_rollback(self, dbapi_connection)

    DefaultDialect.do_commit, DefaultDialect.do_rollback = do_commit, do_rollback


if os.environ.get("HPO_FAULT_AT_WRITE"):
    _install()
