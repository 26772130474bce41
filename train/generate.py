"""A synthetic multi-service log world: requests flowing gateway -> auth -> orders -> inventory/payments -> db,
with injected incidents. Deterministic by seed; the demo data and the test data where ../shared/data is absent.

Each request is a session keyed by its `request_id=<16 hex>`; every line carries it, so a streaming worker can
key the interleaved stream. Normal flows vary in shape (login with or without MFA, cached or uncached reads,
checkouts of 1-4 items with an occasional slow-but-successful payment retry, refunds, health checks); incidents
are a dependency failure, a timeout cascade, an auth (JWKS) failure, resource exhaustion, and an out-of-order
lifecycle whose lines are all normal lines (only the order gives it away).
"""

from __future__ import annotations

import csv
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from train.data import Session

logger = logging.getLogger(__name__)

SERVICES = ("gateway", "auth", "orders", "inventory", "payments", "db")
NORMAL_KINDS = ("login", "list_orders", "checkout", "refund", "health")
INCIDENT_KINDS = ("dependency_failure", "timeout_cascade", "auth_failure", "resource_exhaustion", "out_of_order")
_EPOCH = datetime(2026, 3, 14, 9, 0, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Step:
    """One line before rendering: its template key (the structure), service, level, text and the gap before it."""

    key: str
    service: str
    level: str
    text: str
    gap_ms: int


@dataclass(frozen=True)
class GeneratedSession:
    session: Session
    kind: str
    structure: tuple[str, ...]  # the template keys in order: equal structures are the same masked sequence
    timestamps: tuple[datetime, ...]


class _Flow:
    """Builds one request's steps with a shared random source and the request's own ids."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.steps: list[Step] = []
        self.user = rng.randint(1000, 99999)
        self.order = rng.randint(100000, 999999)
        self.ip = f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"

    def add(self, key: str, service: str, level: str, text: str, gap: tuple[int, int] = (1, 40)) -> None:
        self.steps.append(Step(key, service, level, text, self.rng.randint(*gap)))

    def ms(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def txn(self) -> str:
        return hex_id(self.rng, 16)

    # -- shared fragments ------------------------------------------------------------------------------------
    def received(self, method: str, route: str) -> None:
        self.add(f"gw.recv.{method}", "gateway", "INFO", f"received {method} {route} from {self.ip}", (0, 0))

    def token_ok(self, scope: str) -> None:
        self.add("auth.token_ok", "auth", "INFO", f"token valid for user_id={self.user} scope={scope}")

    def completed(self, method: str, route: str, status: int, level: str = "INFO") -> None:
        elapsed = sum(step.gap_ms for step in self.steps) + self.ms(1, 9)
        self.add(f"gw.done.{status}", "gateway", level, f"completed {method} {route} status={status} in {elapsed} ms")


def _login(f: _Flow) -> None:
    f.received("POST", "/api/v1/login")
    f.add("auth.verify", "auth", "INFO", f"verifying credentials for user_id={f.user}")
    f.add("db.users", "db", "INFO", f"query users.find_by_email took {f.ms(1, 30)} ms rows=1")
    if f.rng.random() < 0.4:
        f.add("auth.mfa_sent", "auth", "INFO", f"mfa challenge sent to user_id={f.user} channel=sms")
        f.add("auth.mfa_ok", "auth", "INFO", f"mfa challenge passed for user_id={f.user}", (800, 4000))
    if f.rng.random() < 0.3:
        f.add("auth.new_device", "auth", "INFO", f"new device registered for user_id={f.user} from {f.ip}")
    f.add("auth.issued", "auth", "INFO", f"issued session token for user_id={f.user} expires_in=3600")
    f.completed("POST", "/api/v1/login", 200)


def _list_orders_head(f: _Flow) -> int:
    page = f.rng.randint(1, 9)
    f.received("GET", f"/api/v1/orders?page={page}")
    f.token_ok("orders:read")
    f.add("orders.list", "orders", "INFO", f"listing orders for user_id={f.user} page={page}")
    if f.rng.random() < 0.3:
        f.add("orders.filter", "orders", "INFO", f"applying filter status={f.rng.choice(('paid', 'open', 'all'))}")
    return page


def _list_orders(f: _Flow) -> None:
    page = _list_orders_head(f)
    if f.rng.random() < 0.5:
        f.add("orders.cache_hit", "orders", "INFO", f"cache hit key=orders:{f.user}:{page}")
    else:
        f.add("orders.cache_miss", "orders", "INFO", f"cache miss key=orders:{f.user}:{page}")
        f.add("db.orders_by_user", "db", "INFO", f"query orders.by_user took {f.ms(2, 60)} ms rows={f.ms(0, 40)}")
        f.add("orders.cache_set", "orders", "INFO", f"cache set key=orders:{f.user}:{page} ttl=300")
    f.completed("GET", "/api/v1/orders", 200)


def _checkout_head(f: _Flow) -> int:
    items = f.rng.randint(1, 4)
    f.received("POST", "/api/v1/orders")
    f.token_ok("orders:write")
    f.add("orders.create", "orders", "INFO", f"creating order order_id={f.order} items={items}")
    for _ in range(items):
        f.add("inv.reserved", "inventory", "INFO",
              f"reserved sku={f.ms(10000, 99999)} qty={f.ms(1, 5)} order_id={f.order}")
    f.add("db.insert_order", "db", "INFO", f"insert into orders took {f.ms(2, 40)} ms")
    f.add("pay.charging", "payments", "INFO",
          f"charging order_id={f.order} amount={f.ms(5, 900)}.{f.ms(0, 99):02d} currency=EUR")
    return items


def _checkout(f: _Flow) -> None:
    _checkout_head(f)
    if f.rng.random() < 0.2:  # a slow provider answer that succeeds on retry is normal
        f.add("pay.slow_retry", "payments", "WARN",
              f"provider answered slowly after {f.ms(900, 1500)} ms, retrying attempt=2", (900, 1500))
    f.add("pay.approved", "payments", "INFO", f"provider approved charge txn={f.txn()}", (80, 400))
    f.add("db.update_paid", "db", "INFO", f"update orders set status=paid took {f.ms(2, 40)} ms")
    f.add("orders.confirmed", "orders", "INFO", f"order order_id={f.order} confirmed")
    if f.rng.random() < 0.5:
        f.add("orders.notify", "orders", "INFO", f"notification queued for user_id={f.user} channel=email")
    f.completed("POST", "/api/v1/orders", 201)


def _refund(f: _Flow) -> None:
    route = f"/api/v1/orders/{f.order}/refund"
    f.received("POST", route)
    f.token_ok("payments:refund")
    f.add("pay.refund_req", "payments", "INFO", f"refund requested order_id={f.order} amount={f.ms(5, 900)}.00")
    f.add("db.select_payment", "db", "INFO", f"select payments by order_id took {f.ms(1, 30)} ms rows=1")
    f.add("pay.refunded", "payments", "INFO", f"refund issued txn={f.txn()}", (60, 300))
    f.add("db.update_refunded", "db", "INFO", f"update payments set status=refunded took {f.ms(2, 40)} ms")
    if f.rng.random() < 0.5:
        f.add("pay.audit", "payments", "INFO", f"audit record written for order_id={f.order} action=refund")
    if f.rng.random() < 0.5:
        f.add("orders.notify", "orders", "INFO", f"notification queued for user_id={f.user} channel=email")
    f.completed("POST", route, 200)


def _health(f: _Flow) -> None:
    f.received("GET", "/healthz")
    f.add("db.ping", "db", "INFO", f"ping ok in {f.ms(1, 5)} ms")
    if f.rng.random() < 0.5:
        f.add("orders.cache_ping", "orders", "INFO", f"cache ping ok in {f.ms(1, 5)} ms")
    if f.rng.random() < 0.5:
        f.add("pay.queue_ok", "payments", "INFO", f"queue depth ok pending={f.ms(0, 20)}")
    f.completed("GET", "/healthz", 200)


def _dependency_failure(f: _Flow) -> None:
    items = _checkout_head(f)
    attempts = f.rng.randint(2, 4)
    provider = f"172.16.{f.ms(0, 255)}.{f.ms(1, 254)}:443"
    for attempt in range(1, attempts + 1):
        f.add("pay.refused", "payments", "ERROR", f"connection refused by provider {provider} attempt={attempt}",
              (20, 200))
        if attempt < attempts:
            f.add("pay.backoff", "payments", "WARN", f"retrying charge in {100 * 2 ** attempt} ms")
    f.add("pay.failed", "payments", "ERROR", f"charge failed after {attempts} attempts: provider unavailable")
    f.add("orders.rollback", "orders", "WARN", f"rolling back order order_id={f.order}")
    for _ in range(items):
        f.add("inv.released", "inventory", "INFO", f"released sku={f.ms(10000, 99999)} order_id={f.order}")
    f.completed("POST", "/api/v1/orders", 502, "ERROR")


def _timeout_cascade(f: _Flow) -> None:
    if f.rng.random() < 0.5:
        page = _list_orders_head(f)
        f.add("orders.cache_miss", "orders", "INFO", f"cache miss key=orders:{f.user}:{page}")
        method = "GET"
    else:
        _checkout_head(f)
        method = "POST"
    f.add("db.slow", "db", "WARN", f"slow query orders.by_user took {f.ms(3000, 9000)} ms", (3000, 5000))
    f.add("orders.db_timeout", "orders", "ERROR", "upstream db timed out after 3000 ms")
    if f.rng.random() < 0.6:
        f.add("orders.breaker", "orders", "WARN", "circuit breaker opened for db after 5 consecutive timeouts")
    f.completed(method, "/api/v1/orders", 504, "ERROR")


def _auth_failure(f: _Flow) -> None:
    f.received(*f.rng.choice((("GET", "/api/v1/orders?page=1"), ("POST", "/api/v1/orders"))))
    kid = hex_id(f.rng, 8)
    f.add("auth.kid_unknown", "auth", "ERROR", f"token signature verification failed: key id {kid} not in JWKS")
    f.add("auth.jwks_refresh", "auth", "WARN", "refreshing JWKS from https://auth.internal/.well-known/jwks.json")
    if f.rng.random() < 0.5:
        f.add("auth.jwks_reset", "auth", "ERROR", "JWKS refresh failed: connection reset by peer")
    else:
        f.add("auth.jwks_stale", "auth", "ERROR", f"JWKS refresh returned stale keys, key id {kid} still missing")
    f.add("auth.rejected", "auth", "WARN", f"rejecting request for user_id={f.user}: unverifiable token")
    f.completed("GET", "/api/v1/orders", 401, "WARN")


def _resource_exhaustion(f: _Flow) -> None:
    f.received("POST", "/api/v1/orders")
    f.token_ok("orders:write")
    f.add("orders.create", "orders", "INFO", f"creating order order_id={f.order} items={f.ms(1, 4)}")
    f.add("db.pool_exhausted", "db", "ERROR", f"connection pool exhausted active=50 max=50 waiting={f.ms(5, 400)}")
    f.add("orders.no_conn", "orders", "ERROR", "could not acquire db connection within 3000 ms", (2900, 3100))
    if f.rng.random() < 0.5:
        f.add("orders.acquire_retry", "orders", "WARN", "retrying db connection acquire attempt=2")
    symptom = f.rng.randint(1, 3)  # 1: out of memory, 2: out of file descriptors, 3: both
    if symptom & 1:
        f.add("orders.oom", "orders", "ERROR",
              f"java.lang.OutOfMemoryError: GC overhead limit exceeded heap_used_mb={f.ms(3900, 4096)}")
    if symptom & 2:
        f.add("orders.fds", "orders", "ERROR", "accept failed: too many open files")
    f.completed("POST", "/api/v1/orders", 503, "ERROR")


def _out_of_order(f: _Flow) -> None:
    f.rng.choice((_checkout, _refund, _login))(f)
    cut = f.rng.randint(len(f.steps) // 2, len(f.steps) - 1)  # the tail from somewhere in the second half
    gaps = [step.gap_ms for step in f.steps]
    reordered = f.steps[cut:] + f.steps[:cut]
    f.steps[:] = [Step(s.key, s.service, s.level, s.text, gap) for s, gap in zip(reordered, gaps)]


_BUILDERS: dict[str, Callable[[_Flow], None]] = {
    "login": _login, "list_orders": _list_orders, "checkout": _checkout, "refund": _refund, "health": _health,
    "dependency_failure": _dependency_failure, "timeout_cascade": _timeout_cascade,
    "auth_failure": _auth_failure, "resource_exhaustion": _resource_exhaustion, "out_of_order": _out_of_order,
}
_NORMAL_WEIGHTS = (0.2, 0.3, 0.3, 0.1, 0.1)
# out-of-order lifecycles are the hardest incident (every line is a normal line), so they get a double share
_INCIDENT_WEIGHTS = (1, 1, 1, 1, 2)


def generate_sessions(n: int, seed: int = 0, anomaly_rate: float = 0.2) -> list[GeneratedSession]:
    """n sessions in start-time order; about anomaly_rate of them incidents, the kinds in equal shares."""
    if n < 1:
        raise ValueError(f"sessions must be >= 1 ({n})")
    if not 0.0 <= anomaly_rate < 1.0:
        raise ValueError(f"anomaly_rate must be in [0, 1) ({anomaly_rate})")
    rng = random.Random(seed)
    pids = {service: rng.randint(100, 9999) for service in SERVICES}
    start = _EPOCH
    out: list[GeneratedSession] = []
    for index in range(n):
        start += timedelta(milliseconds=rng.randint(5, 120))
        if rng.random() < anomaly_rate:
            kind = rng.choices(INCIDENT_KINDS, weights=_INCIDENT_WEIGHTS)[0]
        else:
            kind = rng.choices(NORMAL_KINDS, weights=_NORMAL_WEIGHTS)[0]
        flow = _Flow(rng)
        _BUILDERS[kind](flow)
        request_id = hex_id(rng, 16)
        stamps, lines, at = [], [], start
        for step in flow.steps:
            at += timedelta(milliseconds=max(step.gap_ms, 1))  # strictly increasing within a session
            stamps.append(at)
            lines.append(f"{_format_ts(at)} {step.level:<5} {step.service}[{pids[step.service]}]: "
                         f"request_id={request_id} {step.text}")
        label = int(kind in INCIDENT_KINDS)
        session = Session(session_id=request_id, lines=tuple(lines), label=label)
        out.append(GeneratedSession(session, kind, tuple(s.key for s in flow.steps), tuple(stamps)))
    return out


def split_generated(sessions: list[GeneratedSession], dev_fraction: float, seed: int
                    ) -> tuple[list[GeneratedSession], list[GeneratedSession]]:
    """Sessions go to dev with probability dev_fraction, except that one structure (template sequence) of each
    kind with eight or more structures is held out whole for dev: dev then holds sequences train never saw, next
    to familiar ones. A structure is held out only while each of its line templates stays in some train
    structure (a model cannot be asked to judge a line it never met). The demo world wants a detector that can
    be trained in a minute to catch every incident of the stream; the strict test of generalising to unseen
    sequences only is the HDFS benchmark."""
    rng = random.Random(seed + 1)
    kinds: dict[str, list[tuple[str, ...]]] = {}
    sizes: dict[tuple[str, ...], int] = {}
    for g in sessions:
        if g.structure not in sizes:
            kinds.setdefault(g.kind, []).append(g.structure)
        sizes[g.structure] = sizes.get(g.structure, 0) + 1
    coverage: dict[str, int] = {}  # template -> number of structures still in train holding it
    for structures in kinds.values():
        for structure in structures:
            for key in set(structure):
                coverage[key] = coverage.get(key, 0) + 1
    held_out: set[tuple[str, ...]] = set()
    for kind in sorted(kinds):
        structures = sorted(kinds[kind])
        rng.shuffle(structures)
        if len(structures) < 8:  # only rich kinds, where an unseen combination is a fair question
            continue
        for structure in sorted(structures, key=lambda st: sizes[st]):  # a rare one: dev stays mostly familiar
            if all(coverage[k] >= 2 for k in set(structure)):
                held_out.add(structure)
                for key in set(structure):
                    coverage[key] -= 1
                break
    train: list[GeneratedSession] = []
    dev: list[GeneratedSession] = []
    for g in sessions:
        to_dev = g.structure in held_out or rng.random() < dev_fraction
        (dev if to_dev else train).append(g)
    return train, dev


def interleave(sessions: list[GeneratedSession]) -> list[str]:
    """All lines of the sessions merged in time order (ties keep session order), as a live system writes them."""
    keyed = [(stamp, index, line)
             for index, g in enumerate(sessions) for stamp, line in zip(g.timestamps, g.session.lines)]
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [line for _, _, line in keyed]


def write_world(out_dir: str | Path, sessions: int = 1000, seed: int = 0, dev_fraction: float = 0.3,
                anomaly_rate: float = 0.2) -> dict[str, int]:
    """Write train.jsonl, dev.jsonl, stream.log (dev lines interleaved) and stream_labels.csv; return counts."""
    if not 0.0 < dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be in (0, 1) ({dev_fraction})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = generate_sessions(sessions, seed=seed, anomaly_rate=anomaly_rate)
    train, dev = split_generated(world, dev_fraction, seed)
    for name, part in (("train.jsonl", train), ("dev.jsonl", dev)):
        _write_jsonl(out / name, part)
    stream = interleave(dev)
    (out / "stream.log").write_text("".join(line + "\n" for line in stream), encoding="utf-8")
    with (out / "stream_labels.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["session_id", "label"])
        writer.writerows((g.session.session_id, g.session.label) for g in dev)
    counts = {
        "train": len(train), "train_anomalous": sum(g.session.label for g in train),
        "dev": len(dev), "dev_anomalous": sum(g.session.label for g in dev), "stream_lines": len(stream),
    }
    logger.info("generated %s in %s", counts, out)
    return counts


def _write_jsonl(path: Path, sessions: list[GeneratedSession]) -> None:
    """The seed's format plus session_id and "kind" (an extra field the loader ignores, for analysis)."""
    with path.open("w", encoding="utf-8") as handle:
        for g in sessions:
            record = {"session_id": g.session.session_id, "label": "异常" if g.session.label else "正常",
                      "kind": g.kind, "log_sequence": "\n".join(g.session.lines)}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def hex_id(rng: random.Random, length: int) -> str:
    """A random hex id that starts with a letter and holds a digit, so it always reads (and masks) as hex."""
    body = "".join(rng.choice("0123456789abcdef") for _ in range(length - 2))
    return rng.choice("abcdef") + body + rng.choice("0123456789")


def _format_ts(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
