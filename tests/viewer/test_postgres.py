"""The PostgreSQL history's own contracts: clear one-line errors at open, nothing lost while the server is away,
the input position committed with its rows, viewers opening and writing one database at once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from otelflow import attributes as A
from otelflow.viewer.history import HistoryError, PostgresHistory, RunQuery
from tests.pg_server import PgServer
from tests.test_live_exporter import free_port
from tests.viewer.conftest import record, span_id, trace_id, wait_for


def _open_error(url: str) -> str:
    started = time.monotonic()
    with pytest.raises(HistoryError) as caught:
        PostgresHistory(url, connect_timeout_s=2).open()
    assert time.monotonic() - started < 6
    message = str(caught.value)
    assert "\n" not in message
    assert "Traceback" not in message
    return message


def test_a_wrong_url_credentials_or_database_is_one_clear_line(pg_server: PgServer, pg_url: str) -> None:
    nowhere = f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/otelflow"
    message = _open_error(nowhere)
    assert message.startswith("cannot connect to the history database postgresql://postgres:***@127.0.0.1:")
    assert "s3cret" not in message
    assert "does not exist" in _open_error(pg_server.url_of("no_such_database"))
    assert "nobody" in _open_error(pg_url.replace("postgres@", "nobody@"))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    assert "holds tables that are not otelflow's" in _open_error(pg_url)


def test_a_database_of_a_newer_schema_is_refused(pg_url: str) -> None:
    store = PostgresHistory(pg_url)
    store.open()
    store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = 99 WHERE key = 'otelflow_schema'")
    assert "has otelflow schema 99" in _open_error(pg_url)


def test_the_position_commits_with_its_rows_and_only_rises(pg_url: str) -> None:
    async def check() -> None:
        store = PostgresHistory(pg_url)
        store.open()
        try:
            assert await store.position() == 0
            assert store.append(1, b"body") == 0
            assert list(store.unconsumed()) == []
            trace = trace_id()
            with store.batch(journal_end=41):
                store.put_span(record(trace, span_id(), "step", ended=True))
            assert await store.position() == 41
            with store.batch(journal_end=40):  # another viewer's older batch, committed later
                store.put_span(record(trace, span_id(), "step", ended=True))
            with store.batch(journal_end=42):  # a position alone (every item of its input was refused)
                pass
            store.mark_journal(99)  # no intake log: nothing to mark
            assert await store.position() == 42
            _, spans = await store.get_run(trace)
            assert len(spans) == 2
        finally:
            store.close()
        again = PostgresHistory(pg_url)
        again.open()
        try:
            assert await again.position() == 42
        finally:
            again.close()

    asyncio.run(check())


def test_viewers_opening_one_database_at_once_migrate_it_once_and_add_up_their_statistics(pg_url: str) -> None:
    stores = [PostgresHistory(pg_url) for _ in range(4)]
    start = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def open_one(store: PostgresHistory) -> None:
        start.wait()
        try:
            store.open()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert errors == []
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT key, value FROM meta").fetchall() == [("otelflow_schema", 1)]
        now = time.time_ns()
        for i, store in enumerate(stores):  # each viewer stores its own spans of one name
            with store.batch():
                for _ in range(5):
                    store.put_span(record(trace_id(), span_id(), "lookup", kind=A.KIND_TOOL, ended=True, start=now + i))
        for store in stores:
            asyncio.run(store.flush())
        stats = asyncio.run(stores[0].stats_by_name([A.KIND_TOOL]))
        assert [(s["name"], s["count"]) for s in stats] == [("lookup", 20)]
    finally:
        for store in stores:
            store.close()


@pytest.fixture
def own_server() -> Iterator[PgServer]:
    """A server of the test's own, to stop and start."""
    server = PgServer()
    server.start()
    yield server
    server.remove()


@pytest.mark.slow
def test_a_server_away_for_a_while_loses_nothing(own_server: PgServer) -> None:
    url = own_server.create_database()
    store = PostgresHistory(url, connect_timeout_s=1)
    store.open()
    traces: list[str] = []

    def write(n: int, journal_end: int) -> None:
        with store.batch(journal_end=journal_end):
            for _ in range(n):
                trace = trace_id()
                traces.append(trace)
                store.put_span(record(trace, span_id(), "wf", kind="workflow", ended=True))
                store.put_run({"trace_id": trace, "name": "wf", "status": "ok", "start_time_ns": time.time_ns()})

    try:
        write(10, 1)
        asyncio.run(store.flush())
        assert store.health() == ("ok", None)
        own_server.stop()
        for i in range(5):
            write(10, 2 + i)
        _status, why = wait_for(lambda: (h := store.health())[0] == "degraded" and h, what="degraded")
        assert why is not None
        assert "history writes failing since" in why
        assert "rows" in why
        assert "\n" not in why
        assert store.backlog_rows >= 100
        with pytest.raises(HistoryError, match="cannot be read"):
            asyncio.run(store.list_runs(RunQuery()))
        time.sleep(1.0)  # a while: the writer retries meanwhile
        write(10, 7)
        own_server.start()
        wait_for(lambda: store.health() == ("ok", None) and store.backlog_rows == 0, what="the backlog written")
        runs, total = asyncio.run(store.list_runs(RunQuery(limit=100)))
        assert total == len(traces) == 70
        assert {r["trace_id"] for r in runs} == set(traces)
        assert asyncio.run(store.position()) == 7
        assert store.stats["retries"] >= 1
    finally:
        store.close()
