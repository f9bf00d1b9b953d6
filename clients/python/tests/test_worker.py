from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

import fanout
from fanout import BatchStatus, Client, TaskContext, TaskFailed, TaskStatus, Worker


@pytest.fixture
def agent_prefix() -> str:
    return f"py-{uuid.uuid4().hex[:8]}"


def start(worker: Worker) -> threading.Thread:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as e:  # surfaced by stop()
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread._errors = errors  # type: ignore[attr-defined]
    thread.start()
    worker.wait_ready(15)
    return thread


def stop(worker: Worker, thread: threading.Thread) -> None:
    worker.stop()
    thread.join(20)
    assert not thread.is_alive(), "worker.run() did not return after stop()"
    assert not thread._errors, thread._errors  # type: ignore[attr-defined]


@pytest.fixture
def serving(daemon: str) -> Iterator[tuple[Worker, callable]]:
    workers: list[tuple[Worker, threading.Thread]] = []

    def serve(worker: Worker) -> Worker:
        workers.append((worker, start(worker)))
        return worker

    yield serve  # type: ignore[misc]
    for worker, thread in workers:
        stop(worker, thread)


def test_worker_spawns_children_and_combines_results(
    daemon: str, client: Client, owner: str, agent_prefix: str, serving
) -> None:
    worker = Worker(name="py-test-worker", socket=daemon, timeout=20)
    seen_attempts: list[int] = []

    @worker.agent(f"{agent_prefix}-parent", concurrency=2, max_turns=2)
    def parent(task: TaskContext) -> dict:
        seen_attempts.append(task.attempt)
        words = task.json()["words"]
        task.report_turn()
        children = task.spawn([{"custom_id": w, "payload": {"word": w}} for w in words], agent="echo")
        assert [c.custom_id for c in children] == words
        assert all(c.status == TaskStatus.COMPLETED for c in children)
        more = task.spawn([fanout.Task(payload="second round")], agent="echo")
        task.report_turn()
        return {"words": [c.json()["word"] for c in children], "more": more[0].text(), "id": task.id}

    serving(worker)
    names = {w.name for w in client.server_info().worker_list}
    assert "py-test-worker" in names

    batch = client.submit(
        [{"custom_id": "p1", "payload": {"words": ["a", "b", "c"]}}, {"custom_id": "p2", "payload": {"words": ["d"]}}],
        agent=f"{agent_prefix}-parent",
        owner=owner,
    )
    done = client.wait(batch.id, timeout=30)
    assert done.status == BatchStatus.COMPLETED and done.counts.completed == 2, done
    results = {r.custom_id: r.json() for r in client.results(batch.id)}
    assert results["p1"]["words"] == ["a", "b", "c"] and results["p1"]["more"] == "second round"
    assert results["p2"]["words"] == ["d"]
    assert seen_attempts == [1, 1]
    # The children are batches of their parent task.
    children = list(client.batches(owner, parent_batch_id=batch.id))
    assert len(children) == 4 and all(b.parent_task_id in {results["p1"]["id"], results["p2"]["id"]} for b in children)


def test_worker_failures(daemon: str, client: Client, owner: str, agent_prefix: str, serving) -> None:
    worker = Worker(name="py-failing-worker", socket=daemon)

    @worker.agent(f"{agent_prefix}-fails", concurrency=3)
    def fails(task: TaskContext) -> bytes:
        kind = task.json()["kind"]
        if kind == "chosen":
            raise TaskFailed("bad input", code="bad_input", retryable=False)
        if kind == "crash":
            raise ValueError("handler bug")
        return b"fine"

    serving(worker)
    batch = client.submit(
        [{"custom_id": k, "payload": {"kind": k}} for k in ("chosen", "crash", "ok")],
        agent=f"{agent_prefix}-fails",
        owner=owner,
    )
    done = client.wait(batch.id, timeout=30)
    assert done.counts.failed == 2 and done.counts.completed == 1
    results = {r.custom_id: r for r in client.results(batch.id)}
    assert results["chosen"].error == fanout.TaskError("bad input", "bad_input", False)
    crash = results["crash"].error
    assert crash is not None and crash.code == "exception" and "handler bug" in crash.message
    assert results["ok"].result == b"fine"


def test_worker_retryable_failure_runs_again(
    daemon: str, client: Client, owner: str, agent_prefix: str, serving
) -> None:
    worker = Worker(name="py-retry-worker", socket=daemon)

    @worker.agent(f"{agent_prefix}-flaky")
    def flaky(task: TaskContext) -> str:
        if task.attempt == 1:
            raise TaskFailed("try again", code="transient", retryable=True)
        return f"attempt {task.attempt}"

    serving(worker)
    batch = client.submit([{"payload": {}}], agent=f"{agent_prefix}-flaky", owner=owner)
    client.wait(batch.id, timeout=30)
    [result] = client.results(batch.id)
    assert result.ok and result.text() == "attempt 2" and result.attempt == 2


def test_worker_task_cancelled_while_running(
    daemon: str, client: Client, owner: str, agent_prefix: str, serving
) -> None:
    worker = Worker(name="py-cancel-worker", socket=daemon)
    started = threading.Event()
    observed = threading.Event()

    @worker.agent(f"{agent_prefix}-slow")
    def slow(task: TaskContext) -> str:
        started.set()
        deadline = time.monotonic() + 20
        while not task.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        if task.cancelled:
            observed.set()
        return "too late"

    serving(worker)
    batch = client.submit([{"payload": {}}], agent=f"{agent_prefix}-slow", owner=owner)
    assert started.wait(15)
    info = client.cancel_task(_first_task(client, batch.id))
    assert info.status == TaskStatus.CANCELLED
    assert observed.wait(10)
    assert client.wait(batch.id, timeout=20).counts.cancelled == 1


def _first_task(client: Client, batch_id: int) -> int:
    with client.events(batch_id=batch_id, follow=False) as sub:
        for event in sub:
            if event.task_id:
                return event.task_id
    raise AssertionError("no task event")


def test_worker_registration_errors(daemon: str) -> None:
    builtin = Worker(name="py-bad", socket=daemon)
    builtin.agent("echo")(lambda task: None)
    with pytest.raises(fanout.FailedPrecondition):
        builtin.run()
    with pytest.raises(ValueError):
        Worker(socket=daemon).run()


def test_heartbeats_keep_a_long_task(daemon: str, client: Client, owner: str, agent_prefix: str, serving) -> None:
    from conftest import LEASE_MS

    worker = Worker(name="py-long-worker", socket=daemon)

    @worker.agent(f"{agent_prefix}-long", concurrency=2)
    def long(task: TaskContext) -> dict:
        time.sleep(3 * LEASE_MS / 1000)  # well past the lease: only heartbeats keep the task
        return {"attempt": task.attempt}

    serving(worker)
    batch = client.submit([{"payload": {}}, {"payload": {}}], agent=f"{agent_prefix}-long", owner=owner)
    done = client.wait(batch.id, timeout=30)
    assert done.counts.completed == 2
    assert [r.json() for r in client.results(batch.id)] == [{"attempt": 1}, {"attempt": 1}]


WORKER_SCRIPT = """
import sys, time
from fanout import Worker
worker = Worker(name="py-sigint-worker", socket=sys.argv[1])

@worker.agent(sys.argv[2])
def slow(task):
    print("started", flush=True)
    time.sleep(1.0)
    return "finished while draining"

worker.run()
print("drained", flush=True)
"""


def test_sigint_drains(daemon: str, client: Client, owner: str, agent_prefix: str) -> None:
    import signal
    import subprocess
    import sys

    agent = f"{agent_prefix}-sigint"
    proc = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, daemon, agent], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        batch = None
        while batch is None:  # the agent exists once the worker registered it
            try:
                batch = client.submit([{"payload": {}}], agent=agent, owner=owner)
            except fanout.InvalidArgument:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0 and out.strip() == "drained"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done = client.wait(batch.id, timeout=10)
    [result] = client.results(done.id)
    assert result.ok and result.text() == "finished while draining"


def test_worker_reconnects_after_a_daemon_restart(agent_prefix: str) -> None:
    from conftest import running_daemon

    with running_daemon() as d:
        worker = Worker(name="py-reconnecting", socket=d.socket)

        @worker.agent(f"{agent_prefix}-re")
        def handle(task: TaskContext) -> list:
            return [r.json() for r in task.spawn([{"payload": {"child": 1}}], agent="echo")]

        thread = start(worker)
        d.stop()
        deadline = time.monotonic() + 10
        while worker.ready.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not worker.ready.is_set()
        d.start()
        worker.wait_ready(15)
        with Client(d.socket, timeout=20) as c:
            batch = c.submit([{"payload": {}}], agent=f"{agent_prefix}-re", owner="py-re")
            assert c.wait(batch.id, timeout=20).counts.completed == 1
            assert [r.json() for r in c.results(batch.id)] == [[{"child": 1}]]
        stop(worker, thread)
