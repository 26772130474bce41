"""The batch route on the embedded broker: in a real worker (fake scorer), a worker switched from the agent route to
the batch route starts reading where the agent stopped, neither reading lines again nor skipping any, and the raw
topic's lag is the batch route's own; on its own, the route says it has caught up only once it has handed on every
line that waited for it at start."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from stream.config import StreamConfig
from stream.metrics import Metrics
from stream.records import SessionKeyer
from stream.route import RouteHandle
from test_worker import produce, sessions_text

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.mark.timeout(300)
def test_switching_from_the_agent_route_to_the_batch_route_reads_on_where_the_agent_stopped(
        kafka, start_worker, names) -> None:
    ids = [f"r{i}" for i in range(10)]
    lines = sessions_text(ids, anomalous=set(), length=8)
    half = len(lines) // 2
    first = start_worker(route="agent", session_idle=30.0, **names)
    first.wait_ready()
    produce(kafka.bootstrap, names["topic_logs"], lines[:half])
    first.wait_for(lambda m: m.get("lines_applied", 0) >= half, 120)
    assert first.stop() == 0  # a clean stop commits what the agent read
    second = start_worker(route="batch", session_idle=30.0, **names)
    second.wait_ready()
    produce(kafka.bootstrap, names["topic_logs"], lines[half:])
    m = second.wait_for(lambda m: m.get("lines_applied", 0) >= len(lines) - half, 120)
    assert m["lines_in"] == len(lines) - half  # none of the agent's lines read again
    assert m.get("sessions_opened", 0) == 0 and m.get("lines_redelivered_skipped", 0) == 0  # all recovered
    assert "starts at offset" in second.log_text()
    m = second.wait_for(lambda m: "consumer_lag" in m, 30)
    assert m["consumer_lag"][names["topic_logs"]] == 0  # read and committed: the batch route's consumer says so


class _Sessions:
    """Stands in for the sessions topic: every send acknowledged at once."""

    async def send(self, *, key: bytes, value: bytes, value_serializer: str) -> asyncio.Future[Any]:
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


@pytest.mark.timeout(120)
def test_the_route_is_caught_up_only_once_it_has_handed_on_the_lines_that_waited_for_it(kafka, names) -> None:
    """The close timer holds idle closes until caught_up_at; read in batches of 10, a backlog of 120 lines takes 12
    fetches, and the route must not say it is caught up after the first."""
    lines = sessions_text([f"c{i}" for i in range(12)], anomalous=set(), length=10)
    produce(kafka.bootstrap, names["topic_logs"], lines)
    route = RouteHandle(StreamConfig(broker=kafka.bootstrap, app_id=names["app_id"], topic_logs=names["topic_logs"],
                                     route_batch_max=10, batch_within=0.05))
    metrics = Metrics()

    async def handed_on_when_caught_up() -> tuple[float, int]:
        task = asyncio.create_task(route.run(SessionKeyer([r"request_id=(\w+)"]), _Sessions(), metrics))
        deadline = time.monotonic() + 60
        try:
            while not route.caught_up_at and time.monotonic() < deadline and not task.done():
                await asyncio.sleep(0.001)
            return route.caught_up_at, metrics.counts.get("lines_in", 0)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    caught_up_at, handed_on = asyncio.run(handed_on_when_caught_up())
    assert caught_up_at > 0 and handed_on == len(lines)
    assert route.caught_up_at == 0  # stopped: not reading, so not caught up
