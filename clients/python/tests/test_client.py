from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

import fanout
from fanout import BatchStatus, Client, EventType, Task, TaskStatus


def test_library_and_server_info(client: Client) -> None:
    lib = fanout.load_library()
    assert "libfanout" in lib._name
    info = client.server_info()
    assert info.protocol_version == 1
    assert any(a.name == "echo" for a in info.agents)
    assert client.server_version == info.server_version
    assert client.limits.max_payload_bytes > 0


def test_default_socket_path_follows_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FANOUT_SOCKET", "/tmp/x/y.sock")
    assert fanout.default_socket_path() == "/tmp/x/y.sock"
    monkeypatch.delenv("FANOUT_SOCKET")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/7")
    assert fanout.default_socket_path() == "/run/user/7/fanout/fanoutd.sock"


def test_default_socket_is_used_when_none_given(daemon: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FANOUT_SOCKET", daemon)
    with Client() as c:
        assert c.server_info().protocol_version == 1


def test_submit_wait_results(client: Client, owner: str) -> None:
    tasks = [
        {"custom_id": "dict", "payload": {"q": 1}},
        Task(payload=b"\x00raw bytes", custom_id="bytes"),
        Task(payload="plain text", custom_id="str", priority=5),
        {"payload": [1, 2, 3]},  # custom_id defaults to its index: "3"
    ]
    batch = client.submit(tasks, agent="echo", owner=owner, metadata={"purpose": "test"}, priority=2,
                          completion_window=60)
    assert batch.id > 0 and batch.owner == owner and batch.agent == "echo"
    assert batch.metadata == {"purpose": "test"}
    assert batch.counts.total == 4
    assert batch.deadline_at_ms > 0
    done = client.wait(batch.id, timeout=30)
    assert done.status == BatchStatus.COMPLETED and done.done
    assert done.counts.completed == 4 and done.progress == 100
    results = {r.custom_id: r for r in client.results(batch.id)}
    assert set(results) == {"dict", "bytes", "str", "3"}
    assert results["dict"].json() == {"q": 1}
    assert results["bytes"].result == b"\x00raw bytes"
    assert results["str"].text() == "plain text"
    assert results["3"].json() == [1, 2, 3]
    assert all(r.ok and r.status == TaskStatus.COMPLETED and r.error is None for r in results.values())
    # One task, with and without its payload; results resume after a task id.
    first = min(r.task_id for r in results.values())
    info = client.task(first, include_payload=True)
    assert info.batch_id == batch.id and info.payload == b'{"q":1}' and info.json() == {"q": 1}
    assert client.task(first).payload == b""
    rest = list(client.results(batch.id, after_task_id=first, page_size=1))
    assert len(rest) == 3 and all(r.task_id > first for r in rest)
    # Pages cut by bytes: a one-byte budget still brings every result, in order.
    by_bytes = [r.task_id for r in client.results(batch.id, page_bytes=1)]
    assert by_bytes == sorted(r.task_id for r in results.values())
    assert client.batch(batch.id) == done


def test_batches_listing(client: Client, owner: str) -> None:
    ids = [client.submit([{"payload": {}}], agent="echo", owner=owner).id for _ in range(3)]
    listed = [b.id for b in client.batches(owner, page_size=2)]
    assert listed == sorted(ids, reverse=True)  # newest first, across pages
    assert [b.id for b in client.batches(owner, limit=1)] == [max(ids)]


def test_results_of_an_unfinished_batch_is_what_is_done(client: Client, owner: str) -> None:
    batch = client.submit([{"payload": {}}, {"payload": {"delay_ms": 10000}}], agent="echo", owner=owner)
    deadline = time.monotonic() + 10
    while client.batch(batch.id).counts.completed < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [r.custom_id for r in client.results(batch.id)] == ["0"]
    client.cancel(batch.id)


def test_events_follow(client: Client, owner: str) -> None:
    start = client.server_info().last_sequence
    batch = client.submit([{"payload": {"i": i}} for i in range(3)], agent="echo", owner=owner)
    seen: list[fanout.Event] = []
    with client.events(batch_id=batch.id, since=start, idle_timeout=20) as sub:
        for event in sub:
            seen.append(event)
            if event.type == EventType.BATCH_COMPLETED:
                break
        assert sub.last_sequence == seen[-1].sequence
    types = [e.type for e in seen]
    assert types.count(EventType.TASK_COMPLETED) == 3 and types[-1] == EventType.BATCH_COMPLETED
    assert all(e.batch_id == batch.id and e.owner == owner for e in seen)
    assert [e.sequence for e in seen] == sorted(e.sequence for e in seen)
    assert seen[-1].progress == 100 and seen[-1].counts.completed == 3
    # Replay without follow ends by itself, and a type filter applies.
    replay = list(client.events(owner=owner, since=start, follow=False, types=[EventType.TASK_COMPLETED]))
    assert len(replay) == 3 and {e.custom_id for e in replay} == {"0", "1", "2"}


def test_events_asyncio(client: Client, owner: str) -> None:
    async def main() -> tuple[list[fanout.Event], int]:
        start = client.server_info().last_sequence
        ticks = 0

        async def ticker() -> None:  # keeps running while events are awaited: the loop is not blocked
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick = asyncio.create_task(ticker())
        batch = client.submit([{"payload": {"delay_ms": 300}}, {"payload": {}}], agent="echo", owner=owner)
        seen = []
        async for event in client.aevents(owner=owner, since=start):
            seen.append(event)
            if event.type.ends_batch and event.batch_id == batch.id:
                break
        done = await client.await_batch(batch.id, timeout=10)
        assert done.status == BatchStatus.COMPLETED
        tick.cancel()
        return seen, ticks

    seen, ticks = asyncio.run(asyncio.wait_for(main(), 30))
    assert seen[-1].type == EventType.BATCH_COMPLETED
    assert sum(e.type == EventType.TASK_COMPLETED for e in seen) == 2
    assert ticks >= 10


def test_aevents_cancellation_closes_the_stream(client: Client, owner: str) -> None:
    async def main() -> None:
        async def consume() -> None:
            async for _ in client.aevents(owner=owner, since=client.server_info().last_sequence):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(main(), 10))
    assert client.server_info().protocol_version == 1  # the client still works


def started_task_id(client: Client, batch_id: int, custom_id: str) -> int:
    """The id of a task of the batch, from its task_started event."""
    with client.events(batch_id=batch_id, types=[EventType.TASK_STARTED], idle_timeout=15) as sub:
        for event in sub:
            if event.custom_id == custom_id:
                return event.task_id
    raise AssertionError(f"task {custom_id!r} of batch {batch_id} never started")


def test_cancel_batch_and_task(client: Client, owner: str) -> None:
    batch = client.submit([{"payload": {"delay_ms": 30000}} for _ in range(3)], agent="echo", owner=owner)
    assert list(client.results(batch.id)) == []
    cancelled = client.cancel(batch.id)
    assert cancelled.status == BatchStatus.CANCELLED
    assert cancelled.counts.cancelled == 3
    assert client.cancel(batch.id).status == BatchStatus.CANCELLED  # idempotent
    results = list(client.results(batch.id))
    assert len(results) == 3 and all(r.status == TaskStatus.CANCELLED for r in results)

    other = client.submit(
        [{"custom_id": "slow", "payload": {"delay_ms": 30000}}, {"custom_id": "fast", "payload": {}}],
        agent="echo",
        owner=owner,
    )
    slow_id = started_task_id(client, other.id, "slow")
    info = client.cancel_task(slow_id)
    assert info.batch_id == other.id and info.custom_id == "slow" and info.status == TaskStatus.CANCELLED
    done = client.wait(other.id, timeout=20)
    assert done.counts.cancelled == 1 and done.counts.completed == 1


def test_retry_failed(client: Client, owner: str) -> None:
    batch = client.submit([{"payload": {"fail": "on purpose"}}, {"payload": {"ok": 1}}], agent="echo", owner=owner)
    done = client.wait(batch.id, timeout=20)
    assert done.status == BatchStatus.COMPLETED  # failed tasks do not fail the batch
    assert done.counts.failed == 1 and done.counts.completed == 1
    failed = [r for r in client.results(batch.id) if not r.ok]
    assert failed[0].error is not None and failed[0].error.message == "on purpose"
    retried = client.retry_failed(batch.id)
    assert retried.count == 1 and retried.batch.id == batch.id
    again = client.wait(batch.id, timeout=20)
    assert again.counts.failed == 1 and again.counts.completed == 1
    assert client.retry_failed(batch.id, include_expired=True, include_cancelled=True).count == 1
    client.wait(batch.id, timeout=20)

    running = client.submit([{"payload": {"delay_ms": 30000}}], agent="echo", owner=owner)
    with pytest.raises(fanout.FailedPrecondition) as err:
        client.retry_failed(running.id)
    assert err.value.status == fanout.Status.FAILED_PRECONDITION
    client.cancel(running.id)


def test_errors(client: Client, owner: str, tmp_path: object) -> None:
    with pytest.raises(fanout.InvalidArgument) as err:
        client.submit([{"payload": {}}], agent="echo", owner="")
    assert err.value.status == fanout.Status.INVALID_ARGUMENT and "owner" in err.value.message
    assert isinstance(err.value, fanout.FanoutError)

    with pytest.raises(fanout.InvalidArgument) as err:
        client.submit([{"payload": {}}], agent="no-such-agent-anywhere", owner=owner)
    assert "no-such-agent-anywhere" in err.value.message

    with pytest.raises(fanout.InvalidArgument):
        client.submit([{"custom_id": "a"}, {"custom_id": "a"}], agent="echo", owner=owner)

    with pytest.raises(fanout.NotFound) as nf:
        client.batch(10**12)
    assert nf.value.status == fanout.Status.NOT_FOUND and str(nf.value).startswith("NOT_FOUND: ")
    with pytest.raises(fanout.NotFound):
        client.task(10**12)
    with pytest.raises(fanout.NotFound):
        list(client.results(10**12))
    with pytest.raises(fanout.NotFound):
        list(client.events(batch_id=10**12, follow=False))

    with pytest.raises(TypeError):
        client.submit(["not a task"], agent="echo", owner=owner)  # type: ignore[list-item]
    with pytest.raises(fanout.BadArgument):
        client.submit([{"custom_id": "bad\udcff"}], agent="echo", owner=owner)

    with pytest.raises(fanout.ConnectFailed) as cf:
        Client(f"/tmp/fanout-py-missing-{os.getpid()}.sock", timeout=2)
    assert isinstance(cf.value, ConnectionError) and cf.value.status == fanout.Status.CONNECT_FAILED

    # After all that, the client still answers.
    assert client.server_info().protocol_version == 1


def test_closed_client_raises(daemon: str) -> None:
    c = Client(daemon)
    c.close()
    c.close()
    with pytest.raises(fanout.FanoutError):
        c.server_info()


def test_missing_library_is_a_clear_import_error() -> None:
    code = (
        "import fanout\n"
        "try:\n"
        "    fanout.Client('/nonexistent.sock')\n"
        "except ImportError as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    env = dict(os.environ, FANOUT_LIBRARY="/nonexistent/libfanout.so.1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("LibraryNotFoundError") and "FANOUT_LIBRARY" in out.stdout


def test_library_lookup_without_fanout_library() -> None:
    code = "import fanout; print(fanout.load_library()._name)"
    env = {k: v for k, v in os.environ.items() if k != "FANOUT_LIBRARY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "libfanout.so" in out.stdout


def test_one_client_shared_by_threads(client: Client, owner: str) -> None:
    import threading

    errors: list[BaseException] = []
    ids: list[int] = []
    start = client.server_info().last_sequence
    sub = client.events(owner=owner, since=start, types=[EventType.BATCH_COMPLETED], idle_timeout=20)

    def submit() -> None:
        try:
            for _ in range(5):
                b = client.submit([{"payload": {"n": i}} for i in range(10)], agent="echo", owner=owner)
                ids.append(b.id)
                assert len(list(client.results(b.id))) <= 10
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    completed = set()
    with sub:
        for event in sub:  # read while the other threads submit on the same connection
            completed.add(event.batch_id)
            if len(completed) == 20:
                break
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert completed == set(ids)
