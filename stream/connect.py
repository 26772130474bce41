"""One clear error when no Kafka broker answers, for the worker (topic creation) and the tools (replay, alerts).

kafka-python raises KafkaTimeoutError ("Unable to bootstrap from [...]", 3.x) or NoBrokersAvailable (2.x) from a
client's constructor after its bootstrap timeout (30 s by default); without this the CLI showed a traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from kafka import errors

# NoBrokersAvailable exists in kafka-python 2.x only
_UNREACHABLE = tuple(getattr(errors, name) for name in ("NoBrokersAvailable", "KafkaTimeoutError",
                                                        "KafkaConnectionError") if hasattr(errors, name))


class BrokerUnreachable(ConnectionError):
    """No broker of the bootstrap list answered; the message names them and what to check."""


@contextlib.contextmanager
def reaching(servers: str | Sequence[str], purpose: str) -> Iterator[None]:
    """Around the construction of a kafka-python client (where it bootstraps): its connection failure becomes
    BrokerUnreachable naming `servers` and `purpose` (e.g. "create the worker's topics")."""
    try:
        yield
    except _UNREACHABLE as exc:
        listed = servers if isinstance(servers, str) else ",".join(servers)
        raise BrokerUnreachable(
            f"no Kafka broker answered at {listed} to {purpose} ({type(exc).__name__}); check that a broker runs "
            f"there and this host can reach that host:port, the bootstrap servers (--broker/--bootstrap or "
            f"LOGMOE_BROKER, host:port[,host:port]), and that security_protocol and its TLS/SASL settings match "
            f"the broker's listener") from None
