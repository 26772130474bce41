"""The batch route in a real worker on the embedded broker (fake scorer): a worker switched from the agent route to
the batch route starts reading where the agent stopped, neither reading lines again nor skipping any; the raw
topic's lag is the batch route's own."""

from __future__ import annotations

import pytest

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
