"""Performance of the streaming pipeline against its ceiling, section by section, every figure a side-by-side ratio.

Sections (`--section NAME`, one per run; each runs in under 10 minutes here, `--quick` in about one):
- `throughput`: (1) the ceiling, a bare Faust pass-through agent (bench/_passthrough.py), and (2) the logmoe
  worker, on the same pre-filled `logs` topic (HDFS dev_stream.log lines keyed by block id, 4 partitions) of one
  embedded broker, run in turn (ABAB..., order swapped every round), each with a fresh consumer group. Rate =
  lines after the first counter snapshot that shows progress / seconds from that snapshot to "done" (pass-through:
  every line forwarded; worker: every line read, every session closed and scored, its alerts sent). The worker
  runs with `--session-idle` small so sessions close (and are scored) while the stream is still being read, as in
  a live pipeline; the last sessions' idle wait is inside the worker's time. `--profile` runs py-spy on the first
  worker run and prints where its time goes.
- `scoring`: `LogScorer` on a fixed set of windows of hdfs/dev.jsonl against the seed's way (the encoder called
  per raw line, no cache, one window at a time), interleaved; the encoder cache hit rate.
- `latency`: lines produced at a fixed rate (half the sustainable one) on 64 message-keyed sources (sessions longer
  than a window, so windows are scored every hop lines while the stream runs); a copy of the model with threshold
  0, so every window raises an alert (the worst case for publishing), no cooldown. Latency of a window = its
  alert's Kafka timestamp - the produce timestamp of the line that completed it; also reported for every line of
  the window (which includes waiting for the session's later lines).
- `memory`: worker RSS (the real model) after 1k, 10k and 100k single-line sessions, max_open_sessions = --bound.
- `gpu`: the scoring section on CUDA in bf16; skipped, with a message, where torch sees no CUDA device.
- `paced` (the headline figure): the paced sustainable rate of each `--variants` entry (`worker+early_alerts=false`
  is the worker with that setting): HDFS lines keyed by block id (or, `--worst-case`, long sessions whose every
  window alerts) produced at each of `--rates`, ascending, for `--paced-seconds` (60) to a fresh worker; it kept up
  with a rate when, once the producer stops, every line is applied and every window due scored within `--keep-up`
  seconds. Line -> alert p50/p99 at the highest rate held and at half of it, beside the bare Faust pass-through's
  backlog rate on the same lines in the same run.

Results (markdown) on stdout, with the command, machine, date and /proc/loadavg; progress on stderr.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from _common import REPO_ROOT, add_run_options, default_data_dir, fmt, markdown_table, print_header, start_run, \
    write_json
from bench_stream import child_env, last_metrics, lines_in_sessions, lines_taken, logmoe, read_log, sessions_closed, \
    stop_process

from stream.metrics import drain_status

logger = logging.getLogger("bench.perf")

KEY_REGEX = r"(blk_-?\d+)"
NEVER = r"(?!x)x"  # a session-key regex that never matches: sessions come from the message key
SECTIONS = ("throughput", "scoring", "latency", "memory", "gpu", "paced")
GOALS = {"ratio": 0.8, "scoring_x": 100.0, "p99_s": 2.0, "rss_band": 0.10}


# --------------------------------------------------------------------------------------------- machine

def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --------------------------------------------------------------------------------------------- kafka

def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes]],
            rate: float | None = None) -> int:
    """Send (key, value) records with aiokafka, paced to `rate` lines/s, or as fast as it can (None: a pre-filled
    topic). A kafka-python producer sending one record per batch costs more CPU than a 2-core machine can spare at
    4,000 lines/s beside the worker. Each record's Kafka timestamp is its send time: what line -> alert latencies
    are measured from. Records are batched for 5 ms (linger): only end offsets are wrong on the embedded broker for
    multi-record batches, and nothing here or in the worker's reading of the raw topic relies on them (BROKER.md)."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    async def send_all() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1)
        await producer.start()
        try:
            started, futures = time.monotonic(), []
            for i, (key, value) in enumerate(records):
                delay = started + i / rate - time.monotonic() if rate else 0.0
                if delay > 0:
                    await asyncio.sleep(delay)
                futures.append(await producer.send(topic, value=value, key=key))
            await producer.flush()
            for fut in futures:
                await fut
            return len(futures)
        finally:
            await producer.stop()

    return asyncio.run(send_all())


def create_topics(bootstrap: str, names: Sequence[str], partitions: int) -> None:
    from stream.topics import TopicSpec, ensure_topics

    ensure_topics(bootstrap, [TopicSpec(n, partitions) for n in names])


def read_hdfs_lines(path: Path, limit: int) -> list[bytes]:
    """The file's first `limit` lines; when it has fewer, it is read again and again with every block id made new
    (`blk_123` -> `blk_2123` on the second pass, ...): more sessions of the same kind, not the same sessions."""
    with path.open("rb") as fh:
        base = [line for line in (raw.rstrip(b"\r\n") for raw in fh) if line]
    if not base:
        raise ValueError(f"{path} holds no lines")
    out = base[:limit]
    block = re.compile(rb"blk_(-?)(\d+)")
    n = 1
    while len(out) < limit:
        n += 1
        prefix = str(n).encode()
        out.extend(block.sub(lambda m: b"blk_" + m.group(1) + prefix + m.group(2), line)
                   for line in base[:limit - len(out)])
    return out


def keyed(lines: Iterable[bytes], key_re: re.Pattern[bytes]) -> Iterator[tuple[bytes | None, bytes]]:
    for line in lines:
        m = key_re.search(line)
        yield (m.group(1) if m else None), line


# --------------------------------------------------------------------------------------------- processes

class Proc:
    """A worker subprocess with its log; `samples` are (monotonic time, metrics) taken by `poll`."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, threads: int) -> None:
        self.name, self.log_path = name, log_path
        logger.info("%s: %s", name, " ".join(cmd))
        with log_path.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=child_env(threads), cwd=log_path.parent, start_new_session=True)
        self.samples: list[tuple[float, dict[str, Any]]] = []
        self.polls: list[tuple[float, dict[str, Any]]] = []  # every poll's (time, counters), repeats included

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> dict[str, Any]:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{read_log(self.log_path)[-3000:]}")
        m = last_metrics(self.log_path)
        now = time.monotonic()
        if m and (not self.samples or self.samples[-1][1] != m):
            self.samples.append((now, m))
        if m:
            self.polls.append((now, m))
        return m

    def wait_for(self, done: Callable[[dict[str, Any]], bool], timeout: float, every: float = 0.1) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done(self.poll()):
                return time.monotonic()
            time.sleep(every)
        raise TimeoutError(f"{self.name}: not done after {timeout:.0f} s; last counters {self.poll()}")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while "Worker]: Ready" not in read_log(self.log_path):
            self.poll()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: not ready after {timeout:.0f} s")
            time.sleep(0.2)

    def first_progress(self, count: Callable[[dict[str, Any]], int]) -> tuple[float, int]:
        """(time, 0): the last poll that still saw no progress, the start of the timed part. Counting from the
        first snapshot showing progress instead would drop what was done before it, which a reader of whole
        fetched batches does almost entirely in its first metrics interval. Every process timed here logs its
        counters every 0.5 s and is polled every 0.1 s, so each start is early by at most that, the same for all."""
        idle = None
        for t, m in self.polls:
            if count(m) > 0:
                if idle is None:
                    raise RuntimeError(f"{self.name}: progress in its first counters; no start to time from")
                return idle, 0
            idle = t
        raise RuntimeError(f"{self.name}: no progress seen")

    def stop(self) -> None:
        stop_process(self.proc, self.name)


def worker_cmd(bootstrap: str, model: Path, app_id: str, *, session_key: str, session_idle: float,
               extra: Sequence[str] = ()) -> list[str]:
    sets = {"app_id": app_id, "topic_sessions": f"{app_id}-sessions", "topic_alerts": f"{app_id}-alerts",
            "metrics_interval": 0.5, "device": "cpu"}
    cmd = logmoe("worker", "--broker", bootstrap, "--model", str(model.resolve()), "--session-key", session_key,
                 "--session-idle", str(session_idle))
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    for item in extra:
        cmd += ["--set", item]
    return cmd


# --------------------------------------------------------------------------------------------- profiles

def start_profile(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        logger.warning("py-spy not found; no profile")
        return None
    cmd = [pyspy, "record", "--pid", str(pid), "--format", "raw", "--rate", "50", "--threads", "-o", str(out)]
    logger.info("profiling: %s", " ".join(cmd))
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=(out.parent / "py-spy.log").open("wb"))


def stop_profile(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*?)(?::\d+)?\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m["file"]
    for marker in ("site-packages/", "/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m['func']} ({path})"


_IDLE_LEAVES = ("select (selectors", "Condition.wait (threading", "Event.wait (threading", "sleep (", "poll (")


def summarize_profile(path: Path, top: int = 20) -> dict[str, Any]:
    """py-spy raw (collapsed) stacks -> sample shares: per thread (busy samples only: stacks whose leaf is a
    selector poll or a lock wait are idle), then for the busiest thread, self time and inclusive time per
    function (frames on more than 90% of its samples, the event loop's own, left out)."""
    if not path.is_file():
        return {}
    stacks: list[tuple[str, list[str], int]] = []
    threads: Counter[str] = Counter()
    idle = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, n_text = line.rpartition(" ")
        if not stack or not n_text.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread") else "?"
        frames = [_short(f) for f in frames if not f.startswith(("thread", "process"))]
        if not frames:
            continue
        if any(marker in frames[-1] for marker in _IDLE_LEAVES):
            idle += int(n_text)
            continue
        stacks.append((thread, frames, int(n_text)))
        threads[thread] += int(n_text)
    busy = sum(threads.values())
    if not busy:
        return {}
    main_thread = threads.most_common(1)[0][0]
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for thread, frames, n in stacks:
        if thread != main_thread:
            continue
        self_t[frames[-1]] += n
        for f in dict.fromkeys(frames):
            incl[f] += n
    main_n = threads[main_thread]
    return {"busy_samples": busy, "idle_samples": idle, "main_thread": main_thread,
            "threads": [(k, round(v / busy, 4)) for k, v in threads.most_common()],
            "self": [(k, round(v / main_n, 4)) for k, v in self_t.most_common(top)],
            "inclusive": [(k, round(v / main_n, 4)) for k, v in incl.most_common()
                          if v / main_n <= 0.9][:top]}


def print_profile(title: str, prof: dict[str, Any]) -> None:
    if not prof:
        print(f"\n{title}: no profile\n")
        return
    print(f"\n{title}: {prof['busy_samples']} busy samples at 50 Hz ({prof['idle_samples']} idle left out)\n")
    print(markdown_table(["thread", "share of busy samples"], [[t, f"{s:.1%}"] for t, s in prof["threads"]]))
    print(f"\nBusiest thread ({prof['main_thread']}):\n")
    print(markdown_table(["self time: function (file)", "share"], [[f"`{k}`", f"{s:.1%}"] for k, s in prof["self"]]))
    print()
    print(markdown_table(["inclusive time: function (file)", "share"],
                         [[f"`{k}`", f"{s:.1%}"] for k, s in prof["inclusive"]]))


# --------------------------------------------------------------------------------------------- 1+2 throughput

def drained(n_lines: int) -> Callable[[dict[str, Any]], bool]:
    """The score agent is done with `n_lines` input lines (stream.metrics.drain_status), not just the route."""
    def done(m: dict[str, Any]) -> bool:
        return drain_status(m, n_lines) is None and int(m.get("sessions_opened", 0)) > 0
    return done


def run_passthrough(bootstrap: str, work: Path, tag: str, n_lines: int, args: argparse.Namespace) -> dict[str, Any]:
    sink = f"{tag}-out"
    create_topics(bootstrap, [sink], args.partitions)
    cmd = [sys.executable, str(REPO_ROOT / "bench" / "_passthrough.py"), "--broker", bootstrap, "--app-id", tag,
           "--source", "logs", "--sink", sink, "--partitions", str(args.partitions)]
    proc = Proc(tag, cmd, work / f"{tag}.log", args.threads)
    try:
        t_end = proc.wait_for(lambda m: m.get("lines_in", 0) >= n_lines, args.run_timeout)
        t0, c0 = proc.first_progress(lambda m: int(m.get("lines_in", 0)))
    finally:
        proc.stop()
    return {"variant": "passthrough", "lines_per_s": (n_lines - c0) / (t_end - t0), "seconds": t_end - t0}


def variant_sets(variant: str) -> tuple[str, list[str]]:
    """`worker+key=value+key=value` -> ("worker", ["key=value", ...]): the worker with those settings."""
    name, *sets = variant.split("+")
    return name, sets


def run_worker(bootstrap: str, work: Path, tag: str, n_lines: int, args: argparse.Namespace, variant: str,
               profile: bool) -> dict[str, Any]:
    name, sets = variant_sets(variant)
    extra = [*args.worker_set, *sets]
    cmd = worker_cmd(bootstrap, Path(args.model), tag, session_key=KEY_REGEX, session_idle=args.session_idle,
                     extra=extra)
    if name != "worker":  # a part as it was before a change, selected by bench/_worker_variant.py
        cmd = [sys.executable, str(REPO_ROOT / "bench" / "_worker_variant.py"), name, *cmd[3:]]
    proc = Proc(tag, cmd, work / f"{tag}.log", args.threads)
    prof_proc = None
    prof_path = work / f"{tag}.pyspy.txt"
    try:
        proc.wait_for(lambda m: bool(m), args.run_timeout, every=0.2)  # model loaded, timers running
        if profile:
            prof_proc = start_profile(proc.pid, prof_path)
        t_read = proc.wait_for(lambda m: lines_taken(m) >= n_lines, args.run_timeout)
        t_end = proc.wait_for(drained(n_lines), args.run_timeout)
        stop_profile(prof_proc)
        t0, c0 = proc.first_progress(lines_taken)
        m = proc.samples[-1][1]
    finally:
        stop_profile(prof_proc)
        proc.stop()
    out = {"variant": variant, "lines_per_s": (n_lines - c0) / (t_end - t0), "seconds": t_end - t0,
           "read_lines_per_s": (n_lines - c0) / max(t_read - t0, 1e-9), "metrics": m}
    if profile:
        out["profile"] = summarize_profile(prof_path)
    return out


def section_throughput(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from stream.broker import EmbeddedBroker

    stream = Path(args.stream)
    lines = read_hdfs_lines(stream, args.lines)
    n = len(lines)
    variants = ["passthrough", *args.variants]
    runs: list[dict[str, Any]] = []
    with EmbeddedBroker() as broker:
        create_topics(broker.bootstrap, ["logs"], args.partitions)
        t0 = time.monotonic()
        produce(broker.bootstrap, "logs", keyed(lines, re.compile(KEY_REGEX.encode())))
        logger.info("pre-filled logs with %d lines in %.1f s", n, time.monotonic() - t0)
        for r in range(args.repeats):
            order = variants if r % 2 == 0 else variants[::-1]
            for variant in order:
                tag = f"perf-{re.sub(r'[^A-Za-z0-9-]', '-', variant)}-{r}-{os.getpid()}"
                load = loadavg()
                if variant == "passthrough":
                    res = run_passthrough(broker.bootstrap, work, tag, n, args)
                else:
                    res = run_worker(broker.bootstrap, work, tag, n, args, variant, profile=False)
                res.update(round=r, loadavg_before=load, loadavg_after=loadavg())
                logger.info("round %d %s: %.0f lines/s (%.1f s)", r, variant, res["lines_per_s"], res["seconds"])
                runs.append(res)
        profiled = []
        if args.profile:  # an extra run per worker variant: py-spy slows what it samples, so it is not timed
            for variant in args.variants:
                res = run_worker(broker.bootstrap, work,
                                 f"perf-{re.sub(r'[^A-Za-z0-9-]', '-', variant)}-profile-{os.getpid()}", n, args, variant,
                                 profile=True)
                res.update(round="profile", loadavg_before=loadavg())
                profiled.append(res)
    return {"lines": n, "stream": str(stream), "runs": runs, "variants": variants, "profiled": profiled}


def report_throughput(r: dict[str, Any], args: argparse.Namespace) -> None:
    by: dict[str, list[dict[str, Any]]] = {}
    for run in r["runs"]:
        by.setdefault(run["variant"], []).append(run)
    ceiling = statistics.median(x["lines_per_s"] for x in by["passthrough"])
    rows = []
    for variant in r["variants"]:
        rates = [x["lines_per_s"] for x in by[variant]]
        med = statistics.median(rates)
        ratios = [x["lines_per_s"] / p["lines_per_s"] for x, p in zip(by[variant], by["passthrough"])]
        rows.append([variant, f"{med:.0f}", " / ".join(f"{v:.0f}" for v in rates), f"{med / ceiling:.2f}",
                     " / ".join(f"{v:.2f}" for v in ratios)])
    print(f"{r['lines']} lines of {Path(r['stream']).name} (keyed by block id) pre-filled into `logs`, "
          f"{args.partitions} partitions; {args.repeats} rounds, variants interleaved (order swapped every round); "
          f"worker: session idle {args.session_idle:g} s, OMP_NUM_THREADS={args.threads}"
          f"{', --set ' + ' '.join(args.worker_set) if args.worker_set else ''}.\n")
    print(markdown_table(["variant", "lines/s (median)", "lines/s per round", "ratio to pass-through (medians)",
                          "ratio per round (same round)"], rows))
    for variant in args.variants:
        med_ratio = statistics.median(x["lines_per_s"] for x in by[variant]) / ceiling
        print(f"\n- {variant}: {med_ratio:.2f} of the pass-through (goal >= {GOALS['ratio']}: "
              f"{'met' if med_ratio >= GOALS['ratio'] else 'NOT met'})")
        last = by[variant][-1]
        m = last["metrics"]
        print(f"  - last round: read every line at {last['read_lines_per_s']:.0f} lines/s; done (every session "
              f"closed, scored, alerts out) at {last['lines_per_s']:.0f} lines/s; sessions opened "
              f"{m.get('sessions_opened')}, windows scored {m.get('windows_scored')} (early "
              f"{m.get('windows_early', 0)}), alerts {m.get('alerts_out')} (early {m.get('alerts_early', 0)}), "
              f"mean windows per scoring batch {m.get('batch_windows_mean')}, encoder cache hit rate "
              f"{m.get('cache_hit_rate')}")
    print("\n- load average (1/5/15 min) before each run: " +
          "; ".join(f"{x['variant']}#{x['round']}: {x['loadavg_before']}" for x in r["runs"]))
    for run in r.get("profiled", []):
        per_k = run["profile"].get("busy_samples", 0) / (r["lines"] / 1000)
        print_profile(f"py-spy profile of `{run['variant']}` (an extra, untimed run: {run['lines_per_s']:.0f} lines/s "
                      f"while sampled; {per_k:.0f} busy samples = {per_k / 50:.2f} CPU-s per 1,000 lines)",
                      run["profile"])


# --------------------------------------------------------------------------------------------- 3 scoring

def load_windows(dev: Path, n_windows: int, max_window: int, hop: int) -> list[list[str]]:
    from model.windowing import session_windows

    windows: list[list[str]] = []
    with dev.open(encoding="utf-8") as fh:
        for text in fh:
            if not text.strip():
                continue
            lines = [ln for ln in json.loads(text)["log_sequence"].split("\n") if ln.strip()]
            windows += session_windows(lines, max_window, hop)
            if len(windows) >= n_windows:
                break
    return windows[:n_windows]


def seed_way(model: Any, encoder: Any, windows: Sequence[Sequence[str]], budget_s: float) -> dict[str, float]:
    """One window at a time, the encoder called per raw line (no mask, no cache), then the model."""
    import torch

    done = lines = 0
    started = time.perf_counter()
    with torch.inference_mode():
        for window in windows:
            rows = torch.cat([encoder.encode([line]) for line in window])  # (T, D), one encoder call per line
            model(inputs_embeds=rows.unsqueeze(0), attention_mask=torch.ones(1, len(window), dtype=torch.bool),
                  line_counts=torch.zeros(1, len(window), dtype=torch.long))  # the seed had no rarity input
            done += 1
            lines += len(window)
            if time.perf_counter() - started > budget_s:
                break
    return {"seconds": time.perf_counter() - started, "windows": done, "lines": lines}


def logmoe_way(scorer: Any, windows: Sequence[Sequence[str]], batch: int) -> dict[str, float]:
    """LogScorer.score_detailed in micro-batches of `batch` windows, as the worker calls it; the raw-line mask
    cache is cleared first (the worker sees each raw HDFS line once), the encoder cache is kept."""
    from model.masking import mask_cached

    mask_cached.cache_clear()
    started = time.perf_counter()
    for i in range(0, len(windows), batch):
        scorer.score_detailed(windows[i:i + batch])
    return {"seconds": time.perf_counter() - started, "windows": len(windows),
            "lines": sum(len(w) for w in windows)}


def section_scoring(args: argparse.Namespace, device: str = "cpu") -> dict[str, Any]:
    from model import LogScorer
    from model.encoder import LineEncoder

    t0 = time.perf_counter()
    scorer = LogScorer.from_pretrained(args.model, device=device)
    windows = load_windows(Path(args.dev), args.windows, scorer.max_window, scorer.window_hop)
    load_s = time.perf_counter() - t0
    n_lines = sum(len(w) for w in windows)
    scorer.encoder.cache_clear()
    cold = logmoe_way(scorer, windows, args.score_batch)
    cold_info = scorer.encoder.cache_info()
    out: dict[str, Any] = {"device": device, "windows": len(windows), "lines": n_lines, "load_s": load_s,
                           "cold": cold, "cold_cache": cold_info}
    if device == "cpu":
        cfg = scorer.config
        seed_encoder = LineEncoder.for_model(cfg, cache_size=0, device=device)
        seed_encoder.encode(["warm up"])
    warm, seed = [], []
    for r in range(args.repeats):
        warm.append(logmoe_way(scorer, windows, args.score_batch))
        if device == "cpu":
            seed.append(seed_way(scorer.model, seed_encoder, windows, args.seed_budget / args.repeats))
    out["warm"] = warm
    from model.masking import mask

    started = time.perf_counter()
    for window in windows:
        for line in window:
            mask(line)
    out["mask_s"] = time.perf_counter() - started  # masking alone, every line of every window once
    info = scorer.encoder.cache_info()
    out["cache"] = info
    out["hit_rate"] = info["hits"] / max(1, info["hits"] + info["misses"])
    out["cold_hit_rate"] = cold_info["hits"] / max(1, cold_info["hits"] + cold_info["misses"])
    rate = lambda xs, k: statistics.median(x[k] / x["seconds"] for x in xs)  # noqa: E731
    out["warm_windows_s"], out["warm_lines_s"] = rate(warm, "windows"), rate(warm, "lines")
    out["cold_windows_s"], out["cold_lines_s"] = cold["windows"] / cold["seconds"], cold["lines"] / cold["seconds"]
    if seed:
        out["seed"] = seed
        out["seed_windows_s"], out["seed_lines_s"] = rate(seed, "windows"), rate(seed, "lines")
    return out


def report_scoring(r: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"{r['windows']} windows ({r['lines']} lines) of {Path(args.dev).name}, the model's window/hop; device "
          f"{r['device']}; logmoe's way in micro-batches of {args.score_batch} windows (the worker's batch_max), "
          f"raw-line mask cache cleared before each pass; {args.repeats} rounds interleaved with the seed's way.\n")
    rows = []
    if "seed" in r:
        s = r["seed"]
        rows.append(["seed's way: encoder per raw line, no cache, one window at a time",
                     f"{r['seed_windows_s']:.2f}", f"{r['seed_lines_s']:.1f}",
                     f"{sum(x['windows'] for x in s)} windows in {sum(x['seconds'] for x in s):.0f} s", "1x"])
    base = r.get("seed_windows_s")
    for name, w, ln, work in (
            ("LogScorer, cold encoder cache (first pass)", r["cold_windows_s"], r["cold_lines_s"],
             f"{r['cold_cache']['misses']} distinct masked lines encoded, hit rate {r['cold_hit_rate']:.4f}"),
            (f"LogScorer, warm encoder cache (median of {len(r['warm'])})", r["warm_windows_s"], r["warm_lines_s"],
             f"distinct-line hit rate {r['hit_rate']:.4f} over all passes; masking alone "
             f"{1e6 * r['mask_s'] / r['lines']:.0f} µs/line = {r['mask_s'] * r['warm_lines_s'] / r['lines']:.0%} of "
             f"the warm time")):
        rows.append([name, f"{w:.1f}", f"{ln:.0f}", work, f"{w / base:.0f}x" if base else "n/a"])
    print(markdown_table(["method", "windows/s", "lines/s", "work", "speed-up"], rows))
    lines_total = r["lines"] * (1 + len(r["warm"]))
    misses = r["cache"]["misses"]
    print(f"\n- encoder cache: {misses} encoder runs for {lines_total} window lines over all passes, a per-line hit "
          f"rate of {1 - misses / lines_total:.4f}; the worker's `cache_hit_rate` counts distinct masked lines per "
          f"scoring call (a line repeated within one call counts once): {r['cold_hit_rate']:.4f} cold, "
          f"{r['hit_rate']:.4f} over all passes")
    if base:
        x = r["warm_windows_s"] / base
        print(f"\n- goal >= {GOALS['scoring_x']:.0f}x the seed's way: {'met' if x >= GOALS['scoring_x'] else 'NOT met'}"
              f" ({x:.0f}x warm, {r['cold_windows_s'] / base:.0f}x cold)")


# --------------------------------------------------------------------------------------------- 4 latency

def all_alerts_model(model: Path, dest: Path) -> Path:
    """A copy of the model whose threshold is 0: every window alerts (the most alert traffic possible)."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in model.iterdir():
        if f.is_file():
            shutil.copy2(f, dest / f.name)
    cfg = json.loads((dest / "config.json").read_text(encoding="utf-8"))
    cfg["threshold"] = 0.0
    (dest / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return dest


def percentiles(values: Sequence[float]) -> dict[str, float]:
    import numpy as np

    if not values:
        return {"n": 0}
    a = np.asarray(values, dtype=float)
    return {"n": len(a), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def expected_windows(counts: Iterable[int], window: int, hop: int) -> int:
    """Windows emitted while sessions of these lengths are open (not counting the final ones at close)."""
    return sum((c - window) // hop + 1 for c in counts if c >= window)


def section_latency(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from kafka import KafkaConsumer

    from stream.broker import EmbeddedBroker

    model = all_alerts_model(Path(args.model), work / "model_threshold0")
    cfg = json.loads((model / "config.json").read_text(encoding="utf-8"))
    window, hop = int(cfg["max_window"]), int(cfg["window_hop"])
    pool = read_hdfs_lines(Path(args.stream), args.calib_lines + int(args.latency_seconds * 2000))
    rng = random.Random(0)  # sources interleave at random: windows complete spread out, not all at once
    calib = [(f"cal{rng.randrange(args.sources):03d}".encode(), line) for line in pool[:args.calib_lines]]
    tag = f"perf-latency-{os.getpid()}"
    prof_proc = None
    with EmbeddedBroker() as broker:
        create_topics(broker.bootstrap, ["logs"], args.partitions)
        cmd = worker_cmd(broker.bootstrap, model, tag, session_key=NEVER, session_idle=args.latency_idle,
                         extra=["alert_cooldown_lines=0", *args.worker_set])
        proc = Proc(tag, cmd, work / f"{tag}.log", args.threads)
        try:
            proc.wait_ready(args.run_timeout)
            time.sleep(2.0)  # partitions assigned: no line waits for the group join
            # 1. The sustainable rate of this workload: a pre-filled burst, read and scored as fast as possible
            #    (it also warms the worker up: encoder kernels, caches).
            n_cal = produce(broker.bootstrap, "logs", calib)
            due = expected_windows(Counter(k for k, _ in calib).values(), window, hop)
            t_cal = proc.wait_for(lambda m: lines_taken(m) >= n_cal and int(m.get("windows_scored", 0)) >= due,
                                  args.run_timeout)
            t0, c0 = proc.first_progress(lines_taken)
            sustainable = (n_cal - c0) / (t_cal - t0)
            rate = args.rate or sustainable / 2
            logger.info("latency: sustainable %.0f lines/s on this workload; producing at %.0f", sustainable, rate)
            # 2. Lines at `rate` on new sessions; every window alerts.
            n_lines = int(rate * args.latency_seconds)
            records = [(f"src{rng.randrange(args.sources):03d}".encode(), line)
                       for line in pool[args.calib_lines:args.calib_lines + n_lines]]
            load = loadavg()
            started = time.monotonic()
            sent = produce(broker.bootstrap, "logs", records, rate=rate)
            produce_s = time.monotonic() - started
            proc.wait_for(drained(n_cal + sent), args.run_timeout)
            m = proc.poll()
            if args.profile:  # 3. the same paced load on new sessions, sampled (py-spy slows it: not measured)
                extra = [(f"prf{rng.randrange(args.sources):03d}".encode(), line)
                         for line in pool[:int(rate * min(30.0, args.latency_seconds))]]
                prof_proc = start_profile(proc.pid, work / f"{tag}.pyspy.txt")
                produce(broker.bootstrap, "logs", extra, rate=rate)
                stop_profile(prof_proc)
        finally:
            stop_profile(prof_proc)
            proc.stop()
        consumer = KafkaConsumer(f"{tag}-alerts", bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                                 enable_auto_commit=False, group_id=None, consumer_timeout_ms=5000)
        alerts = [(rec.timestamp / 1000.0, json.loads(rec.value)) for rec in consumer]
        consumer.close()
    trigger, per_line, finals, calibration = [], {}, 0, 0
    for ts, alert in alerts:
        if alert["session"].startswith(("cal", "prf")):
            calibration += 1
            continue
        if alert["window"]["final"]:
            finals += 1
            continue
        trigger.append(ts - float(alert["lines"][-1]["ts"]))
        for ln in alert["lines"]:
            key = (alert["session"], ln["n"])
            per_line[key] = min(per_line.get(key, float("inf")), ts - float(ln["ts"]))
    out = {"sustainable": sustainable, "calib_lines": n_cal, "rate": rate, "sent": sent, "produce_s": produce_s,
           "achieved_rate": sent / produce_s, "sources": args.sources, "alerts": len(alerts),
           "calibration_alerts": calibration, "final_alerts": finals, "loadavg": load,
           "trigger": percentiles(trigger), "per_line": percentiles(list(per_line.values())), "metrics": m}
    if args.profile:
        out["profile"] = summarize_profile(work / f"{tag}.pyspy.txt")
    return out


def report_latency(r: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"Workload: HDFS lines of {Path(args.stream).name} on {args.sources} message-keyed sources picked at random "
          f"(long sessions: a {args.latency_seconds:g} s run gives each one many windows, scored every hop lines "
          f"while the stream runs); a copy of the model with threshold 0 and no cooldown, so every window alerts "
          f"(the most alert traffic possible); session idle {args.latency_idle:g} s.\n")
    print(f"1. Sustainable rate of this workload: {r['calib_lines']} lines pre-filled, read and every window scored "
          f"at {r['sustainable']:.0f} lines/s (this also warms the worker up).")
    print(f"2. {r['sent']} lines on new sessions produced at {r['rate']:.0f} lines/s (achieved "
          f"{r['achieved_rate']:.0f}){' = half the sustainable rate' if not args.rate else ' (--rate)'}; "
          f"{r['alerts']} alerts in all: {r['calibration_alerts']} from the unmeasured phases (burst, profile) and "
          f"{r['final_alerts']} at session "
          f"close left out (their delay is the idle time). Load average before: {r['loadavg']}.\n")
    rows = []
    for name, p in (("window-completing line -> its alert", r["trigger"]),
                    ("any line -> first alert including it (includes waiting for later lines)", r["per_line"])):
        rows.append([name, p.get("n", 0), fmt(p.get("p50"), 3), fmt(p.get("p95"), 3), fmt(p.get("p99"), 3),
                     fmt(p.get("max"), 3)])
    print(markdown_table(["latency (s)", "n", "p50", "p95", "p99", "max"], rows))
    p99 = r["trigger"].get("p99")
    ok = p99 is not None and p99 <= GOALS["p99_s"]
    print(f"\n- goal p99 <= {GOALS['p99_s']:g} s (window-completing line -> alert): "
          f"{'met' if ok else 'NOT met'} ({fmt(p99, 3)} s)")
    if "profile" in r:
        print_profile("py-spy profile of the worker under the same paced load (an extra, unmeasured 30 s phase)",
                      r["profile"])


# --------------------------------------------------------------------------------------------- 6 paced

def section_paced(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The paced sustainable rate: each variant at each of --rates in ascending order (order of variants swapped
    every rate), lines produced at that rate for --paced-seconds into a fresh topic read by a fresh worker; a variant
    stops at the first rate it does not keep up with (once the producer stops, every line applied and every window
    due scored within --keep-up seconds; a worker that falls behind builds a backlog of (rate - capacity) x
    seconds). Then each variant once more at half its highest rate held. Each run also reports line -> alert
    latency (see `alert_latency`). In the same run, the bare Faust pass-through's backlog rate on the same lines.

    Workloads: HDFS lines keyed by block id (sessions close when idle), or with --worst-case the latency section's:
    --sources message-keyed long sessions, a copy of the model with threshold 0 and no cooldown (every window
    alerts)."""
    from stream.broker import EmbeddedBroker

    rates = sorted(args.rates)
    n_max = int(rates[-1] * args.paced_seconds)
    lines = read_hdfs_lines(Path(args.stream), n_max)
    model, extra = Path(args.model), [*args.worker_set]
    if args.worst_case:
        model = all_alerts_model(model, work / "model_threshold0")
        extra.append("alert_cooldown_lines=0")
    runs: list[dict[str, Any]] = []
    with EmbeddedBroker() as broker:
        create_topics(broker.bootstrap, ["logs"], args.partitions)
        n_pass = produce(broker.bootstrap, "logs", paced_records(lines[:args.lines], args))
        passthrough = run_passthrough(broker.bootstrap, work, f"perf-paced-passthrough-{os.getpid()}", n_pass, args)
        logger.info("paced: pass-through backlog rate %.0f lines/s", passthrough["lines_per_s"])
        held: dict[str, float] = {}
        failed: set[str] = set()
        for i, rate in enumerate(rates):
            for variant in (args.variants if i % 2 == 0 else args.variants[::-1]):
                if variant in failed:
                    continue
                res = paced_run(broker.bootstrap, work, args, variant, model, extra, lines, rate)
                runs.append(res)
                if res["kept_up"]:
                    held[variant] = rate
                else:
                    failed.add(variant)
        for variant in args.variants:
            if variant in held:
                res = paced_run(broker.bootstrap, work, args, variant, model, extra, lines, held[variant] / 2,
                                half=True)
                runs.append(res)
    return {"runs": runs, "variants": list(args.variants), "rates": rates, "held": held,
            "passthrough": passthrough, "passthrough_lines": n_pass}


def paced_records(lines: Sequence[bytes], args: argparse.Namespace) -> list[tuple[bytes | None, bytes]]:
    """(key, value) records of the paced workload: keyed by block id, or by one of --sources (--worst-case)."""
    if args.worst_case:
        rng = random.Random(0)  # sources interleave at random: windows complete spread out, not all at once
        return [(f"src{rng.randrange(args.sources):03d}".encode(), line) for line in lines]
    return list(keyed(lines, re.compile(KEY_REGEX.encode())))


def paced_run(bootstrap: str, work: Path, args: argparse.Namespace, variant: str, model: Path, extra: list[str],
              lines: Sequence[bytes], rate: float, half: bool = False) -> dict[str, Any]:
    """One variant at one paced rate on a fresh topic and worker (app id, topics and table of its own): kept up or
    not, and line -> alert latency."""
    name, sets = variant_sets(variant)
    tag = f"perf-paced-{re.sub(r'[^A-Za-z0-9-]', '-', variant)}-{int(rate)}{'-half' if half else ''}-{os.getpid()}"
    topic = f"{tag}-logs"
    create_topics(bootstrap, [topic], args.partitions)
    cmd = worker_cmd(bootstrap, model, tag, session_key=NEVER if args.worst_case else KEY_REGEX,
                     session_idle=args.paced_idle, extra=[f"topic_logs={topic}", *extra, *sets])
    if name != "worker":
        cmd = [sys.executable, str(REPO_ROOT / "bench" / "_worker_variant.py"), name, *cmd[3:]]
    proc = Proc(tag, cmd, work / f"{tag}.log", args.threads)
    try:
        proc.wait_ready(args.run_timeout)
        proc.wait_for(lambda m: bool(m), args.run_timeout, every=0.2)
        time.sleep(2.0)  # partitions assigned (the batch route joins its own group): no line waits for a join
        load = loadavg()
        records = paced_records(lines[:int(rate * args.paced_seconds)], args)
        started = time.monotonic()
        sent = produce(bootstrap, topic, records, rate=rate)
        stopped = time.monotonic()

        def caught_up(m: dict[str, Any]) -> bool:
            done = int(m.get("windows_scored", 0)) + int(m.get("windows_failed", 0))
            return lines_in_sessions(m) >= sent and done >= int(m.get("windows_due", 0))
        finished = proc.wait_for(caught_up, args.run_timeout, every=0.1)
        m = proc.poll()
    finally:
        proc.stop()
    behind = finished - stopped
    latency = alert_latency(bootstrap, f"{tag}-alerts")
    res = {"variant": variant, "rate": rate, "sent": sent, "achieved_rate": sent / (stopped - started),
           "behind_s": behind, "kept_up": behind <= args.keep_up, "loadavg": load, "half": half,
           "windows_scored": m.get("windows_scored"), "windows_early": m.get("windows_early", 0),
           "lines_applied": m.get("lines_applied"), "alerts_out": m.get("alerts_out"),
           "alerts_early": m.get("alerts_early", 0), "score_latency_ms_p50": m.get("score_latency_ms_p50"),
           "latency": latency}
    logger.info("paced %s at %.0f lines/s: caught up %.1f s after the producer stopped; line -> alert p50 %s s, "
                "p99 %s s", variant, rate, behind, fmt(latency.get("p50"), 3), fmt(latency.get("p99"), 3))
    return res


def alert_latency(bootstrap: str, topic: str) -> dict[str, float]:
    """Percentiles of line -> alert: each alert's Kafka timestamp minus the produce timestamp of the line that
    completed its window (the line that made it due), over alerts of windows scored while their session was open;
    alerts at session close are left out (their delay is the idle time)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, consumer_timeout_ms=5000)
    delays = []
    for rec in consumer:
        alert = json.loads(rec.value)
        if not alert["window"]["final"]:
            delays.append(rec.timestamp / 1000.0 - float(alert["lines"][-1]["ts"]))
    consumer.close()
    return percentiles(delays)


def report_paced(r: dict[str, Any], args: argparse.Namespace) -> None:
    workload = (f"the worst case: HDFS lines of {Path(args.stream).name} on {args.sources} message-keyed long "
                f"sessions, a copy of the model with threshold 0 and no cooldown (every window alerts)" if args.worst_case else
                f"HDFS lines of {Path(args.stream).name} keyed by block id")
    print(f"Workload: {workload}, {args.partitions} partitions, produced at each rate for {args.paced_seconds:g} s "
          f"into a fresh topic and a fresh worker (session idle {args.paced_idle:g} s"
          f"{', --set ' + ' '.join(args.worker_set) if args.worker_set else ''}); rates in ascending order, a "
          f"variant stops at the first rate it does not keep up with, then runs once at half its highest rate held; "
          f"variants in turn, order swapped every rate. Kept up: every line applied and every window due scored at "
          f"most {args.keep_up:g} s after the producer stopped. Line -> alert: the alert's Kafka timestamp minus the "
          f"produce timestamp of the line that completed its window (alerts at session close left out).\n")
    print(f"Ceiling in the same run: the bare Faust pass-through read {r['passthrough_lines']} pre-filled lines of the "
          f"same workload at **{r['passthrough']['lines_per_s']:.0f} lines/s** (backlog rate).\n")
    rows = [[x["variant"], f"{x['rate']:.0f}" + (" (half)" if x.get("half") else ""), f"{x['achieved_rate']:.0f}",
             f"{x['behind_s']:.1f}", "yes" if x["kept_up"] else "no", x["windows_scored"], x["windows_early"],
             x["alerts_out"], x["latency"].get("n", 0), fmt(x["latency"].get("p50"), 3),
             fmt(x["latency"].get("p99"), 3), x["score_latency_ms_p50"], x["loadavg"]]
            for x in r["runs"]]
    print(markdown_table(["variant", "rate (lines/s)", "achieved", "caught up after (s)", "kept up",
                          "windows scored", "of them early", "alerts", "alerts timed", "line -> alert p50 (s)",
                          "p99 (s)", "scoring batch p50 (ms)", "load avg"], rows))
    for variant in r["variants"]:
        rate = r["held"].get(variant)
        if rate is None:
            print(f"\n- {variant}: kept up with none of the rates")
            continue
        at = {(x["rate"], bool(x.get("half"))): x for x in r["runs"] if x["variant"] == variant}
        full, half = at[(rate, False)]["latency"], at.get((rate / 2, True), {}).get("latency", {})
        print(f"\n- {variant}: paced sustainable rate >= **{rate:.0f} lines/s** (the highest rate held for "
              f"{args.paced_seconds:g} s; {rate / r['passthrough']['lines_per_s']:.2f}x the pass-through's backlog "
              f"rate); line -> alert p50 / p99 {fmt(full.get('p50'), 3)} / {fmt(full.get('p99'), 3)} s at it, "
              f"{fmt(half.get('p50'), 3)} / {fmt(half.get('p99'), 3)} s at half of it")


# --------------------------------------------------------------------------------------------- 5 memory

def section_memory(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from stream.broker import EmbeddedBroker

    levels = args.levels
    base = read_hdfs_lines(Path(args.stream), 1000)
    tag = f"perf-memory-{os.getpid()}"
    stages = []
    with EmbeddedBroker() as broker:
        create_topics(broker.bootstrap, ["logs"], args.partitions)
        cmd = worker_cmd(broker.bootstrap, Path(args.model), tag, session_key=NEVER, session_idle=3600.0,
                         extra=[f"max_open_sessions={args.bound}", *args.worker_set])
        proc = Proc(tag, cmd, work / f"{tag}.log", args.threads)
        try:
            proc.wait_for(lambda m: bool(m), args.run_timeout, every=0.2)
            stages.append({"sessions_offered": 0, "rss_mb": rss_mb(proc.pid), "open_sessions": 0})
            offered = 0
            for level in levels:
                recs = ((f"s{i:07d}".encode(), base[i % len(base)]) for i in range(offered, level))
                t0 = time.monotonic()
                produce(broker.bootstrap, "logs", recs)
                offered = level
                expect = min(level, args.bound)

                def settled(m: dict[str, Any], level: int = level, expect: int = expect) -> bool:
                    open_now = int(m.get("open_sessions", -1))
                    return lines_in_sessions(m) >= level and 0.99 * expect <= open_now <= expect and \
                        int(m.get("sessions_opened", 0)) - sessions_closed(m) <= expect
                proc.wait_for(settled, args.run_timeout, every=0.5)
                time.sleep(3.0)  # let the close scan and the table settle
                m = proc.poll()
                stages.append({"sessions_offered": level, "rss_mb": rss_mb(proc.pid),
                               "open_sessions": m.get("open_sessions"), "seconds": time.monotonic() - t0,
                               "evicted": m.get("sessions_evicted_overflow", 0), "loadavg": loadavg()})
                logger.info("memory: %s", stages[-1])
        finally:
            proc.stop()
    return {"bound": args.bound, "stages": stages}


def report_memory(r: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"Real worker (model {Path(args.model).name}), one line per session (message-keyed), session idle 3600 s, "
          f"max_open_sessions = {r['bound']}; RSS (VmRSS) once the worker has read the stage's lines and the "
          f"overflow closes are done, plus 3 s.\n")
    rows = [[s["sessions_offered"], s["open_sessions"], s.get("evicted", 0), f"{s['rss_mb']:.0f}",
             fmt(s.get("seconds"), 1), s.get("loadavg", "")] for s in r["stages"]]
    print(markdown_table(["sessions offered", "open sessions", "evicted (overflow)", "RSS MB", "stage s",
                          "load avg"], rows))
    at_bound = [s for s in r["stages"] if s["sessions_offered"] > r["bound"]]
    if len(at_bound) >= 2:
        first, last = at_bound[0]["rss_mb"], at_bound[-1]["rss_mb"]
        drift = (last - first) / first
        ok = abs(drift) <= GOALS["rss_band"]
        print(f"\n- goal: RSS within ±{GOALS['rss_band']:.0%} once the bound is reached (from the first stage past "
              f"the bound, where overflow sessions are already being closed and scored, to the last): "
              f"{'met' if ok else 'NOT met'} "
              f"({first:.0f} MB at {at_bound[0]['sessions_offered']} sessions offered -> {last:.0f} MB at "
              f"{at_bound[-1]['sessions_offered']}, {drift:+.1%})")
    else:
        print("\n- the bound was not reached twice: raise the last level or lower --bound to check the goal")


# --------------------------------------------------------------------------------------------- main

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    hdfs = default_data_dir() / "hdfs"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--section", required=True, choices=SECTIONS)
    p.add_argument("--model", default=os.environ.get("LOGMOE_BENCH_MODEL"),
                   help="trained model folder (…/final_moe_model); $LOGMOE_BENCH_MODEL")
    p.add_argument("--stream", default=str(hdfs / "dev_stream.log"))
    p.add_argument("--dev", default=str(hdfs / "dev.jsonl"))
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3, help="rounds (throughput, scoring)")
    p.add_argument("--lines", type=int, default=40000, help="throughput: lines pre-filled")
    p.add_argument("--variants", nargs="+", default=["worker"],
                   help="throughput: worker variants to run against the pass-through (see bench/_worker_variant.py)")
    p.add_argument("--session-idle", type=float, default=2.0, help="throughput: worker session idle (s)")
    p.add_argument("--profile", action="store_true",
                   help="py-spy the worker: throughput, one extra untimed run per variant; latency, the paced phase")
    p.add_argument("--worker-set", nargs="*", default=[], metavar="KEY=VALUE", help="extra worker config overrides")
    p.add_argument("--windows", type=int, default=2000, help="scoring: windows")
    p.add_argument("--score-batch", type=int, default=256, help="scoring: windows per LogScorer call")
    p.add_argument("--seed-budget", type=float, default=60.0, help="scoring: seconds for the seed's way, all rounds")
    p.add_argument("--rate", type=float, default=0.0,
                   help="latency: lines/s; 0 = half the sustainable rate measured first on the same workload")
    p.add_argument("--calib-lines", type=int, default=12000, help="latency: lines of the sustainable-rate burst")
    p.add_argument("--latency-seconds", type=float, default=90.0, help="latency: seconds of producing")
    p.add_argument("--latency-idle", type=float, default=5.0, help="latency: worker session idle (s)")
    p.add_argument("--sources", type=int, default=64, help="latency: message keys (sessions)")
    p.add_argument("--bound", type=int, default=10000, help="memory: max_open_sessions")
    p.add_argument("--levels", type=int, nargs="+", default=[1000, 10000, 20000, 40000],
                   help="memory: sessions offered, cumulative")
    p.add_argument("--rates", type=float, nargs="+", default=[1000.0, 2000.0, 3000.0, 4000.0, 5000.0],
                   help="paced: lines/s, tried in ascending order, each for --paced-seconds")
    p.add_argument("--paced-seconds", type=float, default=60.0, help="paced: seconds of producing per rate")
    p.add_argument("--worst-case", action="store_true",
                   help="paced: every window alerts (the latency section's workload) instead of HDFS block sessions")
    p.add_argument("--paced-idle", type=float, default=10.0, help="paced: worker session idle (s)")
    p.add_argument("--keep-up", type=float, default=5.0,
                   help="paced: seconds after the producer stops within which the worker must have caught up")
    p.add_argument("--run-timeout", type=float, default=480.0, help="seconds one worker run may take")
    p.add_argument("--work-dir", type=Path, default=None, help="keep logs and profiles here (default: temp)")
    p.add_argument("--quick", action="store_true", help="a smoke run of the section (not a benchmark)")
    add_run_options(p)
    args = p.parse_args(argv)
    if args.section != "gpu" and not args.model:
        p.error("--model (or $LOGMOE_BENCH_MODEL) is required for this section")
    if args.quick:
        args.repeats, args.lines, args.windows, args.seed_budget = 1, 5000, 300, 10.0
        args.latency_seconds, args.calib_lines, args.levels, args.bound = 20.0, 5000, [500, 1000, 2000, 4000], 1000
        args.paced_seconds, args.rates = 15.0, args.rates[:2]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start_run(args)
    for name in ("kafka", "aiokafka"):
        logging.getLogger(name).setLevel(logging.ERROR)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-perf-"))
    work.mkdir(parents=True, exist_ok=True)
    logger.info("work folder: %s", work)
    if args.section == "gpu":
        import torch

        if not torch.cuda.is_available():
            info = print_header("Performance: scoring on GPU (bf16)")
            print("GPU section skipped: torch sees no CUDA device on this machine (no GPU lent).")
            write_json(args.json_out, {"machine": info, "gpu": None})
            return 0
        if not args.model:
            logger.error("--model (or $LOGMOE_BENCH_MODEL) is required for the GPU section")
            return 2
    load_before = loadavg()
    try:
        if args.section == "throughput":
            result = section_throughput(args, work)
        elif args.section == "scoring":
            result = section_scoring(args)
        elif args.section == "gpu":
            result = section_scoring(args, device="cuda")
        elif args.section == "latency":
            result = section_latency(args, work)
        elif args.section == "paced":
            result = section_paced(args, work)
        else:
            result = section_memory(args, work)
    except KeyboardInterrupt:
        logger.error("interrupted; logs kept in %s", work)
        return 130
    title = {"throughput": "ceiling (Faust pass-through) vs the logmoe worker", "scoring": "scoring stage",
             "gpu": "scoring stage on GPU (bf16)", "latency": "latency at half the sustainable rate",
             "memory": "worker memory vs open sessions",
             "paced": "paced sustainable rate, variants side by side"}[args.section]
    info = print_header(f"Performance: {title}" + (" (--quick: a smoke run, not a benchmark)" if args.quick else ""))
    print(f"- load average (1/5/15 min): {load_before} at the start, {loadavg()} at the end\n")
    report = {"throughput": report_throughput, "scoring": report_scoring, "gpu": report_scoring, "paced": report_paced,
              "latency": report_latency, "memory": report_memory}[args.section]
    report(result, args)
    write_json(args.json_out, {"machine": info, "section": args.section, **result})
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _raise_interrupt)
    sys.exit(main())
