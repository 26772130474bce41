"""Helpers shared by the bench scripts: where the data is, what machine ran, metrics, tables, baselines.

Benchmarks print their results (markdown tables) on stdout; everything else goes through `logging` on stderr.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger("bench")

REPO_ROOT = Path(__file__).resolve().parent.parent
# The bench scripts run from a checkout (`python bench/x.py` puts bench/ first on sys.path); make the checkout's
# own model/ and train/ importable even where the editable install is stale.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(1, str(REPO_ROOT))


def default_data_dir() -> Path:
    """$LOGMOE_SHARED_DATA, else ../shared/data relative to the repository root."""
    env = os.environ.get("LOGMOE_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; point --data-dir (or $LOGMOE_SHARED_DATA) at the shared data")
    return path


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options every in-process benchmark shares: torch threads, a JSON copy of the results, verbosity."""
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0: torch's default); on a shared 2-core machine 1 is ~3x faster")
    parser.add_argument("--json-out", type=Path, default=None, help="write every number to this JSON file")
    parser.add_argument("-v", "--verbose", action="store_true")


def start_run(args: argparse.Namespace) -> None:
    """Logging and torch threads as the shared options ask."""
    setup_logging(args.verbose)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)


def rerun_command() -> str:
    """The command line that reproduces this run (run from the repository root)."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_text = str(script.relative_to(REPO_ROOT))
    except ValueError:
        script_text = str(script)
    return " ".join([".venv/bin/python", shlex.quote(script_text), *map(shlex.quote, sys.argv[1:])])


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0))  # what `nproc` prints without OMP_NUM_THREADS, which it would honour
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    import torch  # local: only for its version and thread count

    return {"nproc": nproc, "cpu": cpu, "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "commit": commit,
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}


def print_header(title: str) -> dict[str, Any]:
    """Print the title, the rerun command and the machine; return the machine facts for the JSON output."""
    info = machine_info()
    print(f"# {title}\n")
    print(f"- command: `{rerun_command()}`")
    print(f"- machine: {info['nproc']} CPUs (`nproc`), {info['cpu']}; python {info['python']}, "
          f"torch {info['torch']} (threads: {info['torch_threads']}); commit {info['commit']}")
    print(f"- date: {info['date']}\n")
    return {**info, "command": rerun_command()}


# --------------------------------------------------------------------------------------------- metrics

# Metrics and threshold calibration are train/'s own (train.metrics), so baselines and logmoe are measured
# with the same code: calibrate_threshold(labels, scores, "f1") and classification_metrics(labels, scores, thr).


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def read_session_labels(path: Path) -> dict[str, int]:
    """A `session_id,label` CSV (1 = anomalous), as the data's *_labels.csv files -> session id -> label."""
    with path.open(encoding="utf-8", newline="") as fh:
        return {row["session_id"]: int(row["label"]) for row in csv.DictReader(fh)}


def write_json(path: str | Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    logger.info("wrote %s", path)


# --------------------------------------------------------------------------------------------- baselines

def identity_analyzer(tokens: Sequence[str]) -> list[str]:
    return list(tokens)


def fit_count_model(estimator: Any, train_docs: Sequence[Sequence[str]], train_labels: np.ndarray) -> Any:
    """A pipeline of token counts (each doc a list of tokens, e.g. masked lines or event ids) -> estimator."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.pipeline import make_pipeline

    pipeline = make_pipeline(CountVectorizer(analyzer=identity_analyzer, lowercase=False), estimator)
    pipeline.fit(list(train_docs), np.asarray(train_labels))
    return pipeline


def baseline_estimators(seed: int) -> dict[str, Callable[[], Any]]:
    """The classical models compared with logmoe (fresh instances per call)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    return {
        "DecisionTree": lambda: DecisionTreeClassifier(random_state=seed),
        "LogisticRegression": lambda: LogisticRegression(max_iter=2000, C=1.0),
    }


# --------------------------------------------------------------------------------------------- data

@dataclass(frozen=True)
class LabelledSession:
    """One session of the shared HDFS data: raw lines, label (1 anomalous), parsed event ids (analysis only)."""

    session_id: str
    lines: tuple[str, ...]
    label: int
    event_ids: tuple[str, ...]


_ANOMALOUS_LABELS = {"异常": 1, "正常": 0}


def load_hdfs_jsonl(path: Path) -> list[LabelledSession]:
    """Read one of the shared HDFS JSONL files (seed format plus session_id and event_ids)."""
    sessions = []
    with require_file(path).open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            obj = json.loads(text)
            label = _ANOMALOUS_LABELS.get(obj["label"])
            if label is None:
                raise ValueError(f"{path}:{number}: unknown label {obj['label']!r}")
            lines = tuple(line for line in obj["log_sequence"].split("\n") if line.strip())
            sessions.append(LabelledSession(str(obj.get("session_id", f"{path.stem}:{number}")), lines, label,
                                            tuple(obj.get("event_ids", ()))))
    return sessions


def write_hdfs_jsonl(path: Path, sessions: Iterable[LabelledSession]) -> Path:
    """Write sessions in the seed's format (what `logmoe train/evaluate` read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for s in sessions:
            record = {"session_id": s.session_id, "label": "异常" if s.label else "正常",
                      "log_sequence": "\n".join(s.lines)}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def labels_of(sessions: Sequence[LabelledSession]) -> np.ndarray:
    return np.array([s.label for s in sessions], dtype=int)


# --------------------------------------------------------------------------------------------- methods

@dataclass
class Prepared:
    """Sessions with what the baselines read: masked lines and event ids, one list per session."""

    sessions: list[LabelledSession]
    masked: list[list[str]]
    event_ids: list[list[str]]

    @property
    def labels(self) -> np.ndarray:
        return labels_of(self.sessions)

    def subset(self, index: np.ndarray) -> Prepared:
        return Prepared([self.sessions[i] for i in index], [self.masked[i] for i in index],
                        [self.event_ids[i] for i in index])


def prepare(sessions: list[LabelledSession], parser: Any = None) -> Prepared:
    """Mask every line; event ids from the data (parser None) or parsed from the masked lines (a drift.TemplateParser)."""
    from model import mask

    masked = [[mask(line) for line in s.lines] for s in sessions]
    ids = [list(s.event_ids) for s in sessions] if parser is None else [parser.parse_session(m) for m in masked]
    return Prepared(sessions, masked, ids)


class Method(Protocol):
    name: str
    threshold: float

    def fit(self, train: Prepared, calibration: Prepared) -> None: ...

    def score(self, data: Prepared) -> np.ndarray: ...


class CountBaseline:
    """A scikit-learn classifier on per-session token counts (tokens: masked lines or event ids)."""

    def __init__(self, name: str, tokens: str, make_estimator: Any) -> None:
        self.name = name
        self.tokens = tokens  # "masked" or "event_ids"
        self.make_estimator = make_estimator
        self.threshold = 0.5

    def _docs(self, data: Prepared) -> list[list[str]]:
        return data.masked if self.tokens == "masked" else data.event_ids

    def fit(self, train: Prepared, calibration: Prepared) -> None:
        from train.metrics import calibrate_threshold

        self.pipeline = fit_count_model(self.make_estimator(), self._docs(train), train.labels)
        self.threshold = calibrate_threshold(calibration.labels, self.score(calibration), "f1")

    def score(self, data: Prepared) -> np.ndarray:
        return self.pipeline.predict_proba(self._docs(data))[:, 1]


class NoveltyRuleBaseline:
    """Never-seen lines alone, no classifier: which level groups (model.novelty.GROUPS) of lines the training split
    never held a session holds, weighed by a logistic regression fitted on the labelled calibration split, as
    logmoe's novelty calibration weighs them beside its classifier's margin. It reads no training label, so beside an
    unsupervised logmoe calibrated the same way it shows how much of that score the calibration labels alone give."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.threshold = 0.5

    def _flags(self, data: Prepared) -> np.ndarray:
        from model.novelty import window_flags

        return np.asarray([window_flags(lines, self.seen) for lines in data.masked])  # (sessions, groups)

    def fit(self, train: Prepared, calibration: Prepared) -> None:
        from sklearn.linear_model import LogisticRegression

        from model.novelty import REGULARISATION_C
        from train.metrics import calibrate_threshold

        self.seen = frozenset(line for lines in train.masked for line in lines)
        self.model = LogisticRegression(C=REGULARISATION_C).fit(self._flags(calibration), calibration.labels)
        self.threshold = calibrate_threshold(calibration.labels, self.score(calibration), "f1")

    def score(self, data: Prepared) -> np.ndarray:
        return self.model.predict_proba(self._flags(data))[:, 1]


class LogMoE:
    """logmoe trained by train.train(cfg) on JSONL files, scored through LogScorer like the worker."""

    def __init__(self, train_files: Sequence[Path], eval_files: Sequence[Path], out_dir: Path, seed: int,
                 config: Path, overrides: Sequence[str], name: str = "logmoe (raw lines, BERT embeddings)") -> None:
        self.name = name
        self.train_files, self.eval_files = list(train_files), list(eval_files)
        self.out_dir, self.seed, self.config, self.overrides = out_dir, seed, config, list(overrides)
        self.threshold = 0.5
        self.train_metrics: dict[str, Any] = {}

    def build_config(self) -> Any:
        from model.config_io import load_config
        from train.config import TrainConfig

        overrides = [f"data.train={[str(p) for p in self.train_files]}",
                     f"data.eval={[str(p) for p in self.eval_files]}",
                     f"output_dir={self.out_dir}", f"training.seed={self.seed}", *self.overrides]
        return load_config(TrainConfig, self.config if self.config.is_file() else None, overrides)

    def fit(self, train: Prepared, calibration: Prepared) -> None:
        import train as train_pkg
        from model import LogScorer

        cfg = self.build_config()
        self.cfg = cfg
        started = time.perf_counter()
        self.train_metrics = train_pkg.train(cfg)
        self.fit_seconds = time.perf_counter() - started
        self.model_dir = Path(cfg.output_dir) / "final_moe_model"
        self.scorer = LogScorer.from_pretrained(self.model_dir, device=cfg.training.device)
        self.threshold = float(self.scorer.threshold)
        self.hop = self.scorer.window_hop  # the model owns its hop (training.hop), as the worker reads it

    @property
    def novelty_calibrated(self) -> bool:
        """Training fitted and stored a novelty calibration (model.novelty)."""
        return self.scorer.novelty_calibration is not None

    def score(self, data: Prepared, novelty: bool = True) -> np.ndarray:
        """Session scores (the highest of their windows'); novelty=False: without the stored novelty calibration."""
        from model.windowing import session_windows

        stored = self.scorer.novelty_calibration
        if not novelty and stored is not None:
            self.scorer.set_novelty_calibration(None)
            try:
                return self.score(data)
            finally:
                self.scorer.set_novelty_calibration(stored)
        windows: list[list[str]] = []
        owner: list[int] = []
        for i, s in enumerate(data.sessions):
            for window in session_windows(list(s.lines), self.scorer.max_window, self.hop):
                windows.append(window)
                owner.append(i)
        window_scores = np.asarray(self.scorer.score(windows), dtype=np.float64)
        scores = np.full(len(data.sessions), -np.inf)
        np.maximum.at(scores, np.asarray(owner), window_scores)
        return scores


class CountAnomalyBaseline:
    """A classical unsupervised detector on per-session masked-line counts, fitted without labels, as loglizer
    does: "pca" (tf-idf weighted, zero-mean counts; the squared residual outside the principal components that
    explain 95% of the variance, the SPE of Xu et al.) or "iforest" (an isolation forest on the raw counts). Higher is
    more anomalous: for pca SPE / (1 + SPE), in [0, 1) with log-odds log SPE, for iforest the forest's anomaly score,
    in (0, 1], so the label-free threshold (`train.metrics.rate_threshold` with a gap) reads every method's score as
    a probability-like number. Lines never seen in training count for nothing, as in loglizer."""

    def __init__(self, name: str, kind: str, seed: int) -> None:
        if kind not in ("pca", "iforest"):
            raise ValueError(f"kind must be pca or iforest ({kind!r})")
        self.name, self.kind, self.seed = name, kind, seed
        self.threshold = 0.0

    def _counts(self, data: Prepared) -> np.ndarray:
        return self.vectorizer.transform(data.masked).toarray().astype(np.float64)  # (S, F)

    def fit(self, train: Prepared, calibration: Prepared) -> None:
        from sklearn.decomposition import PCA
        from sklearn.ensemble import IsolationForest
        from sklearn.feature_extraction.text import CountVectorizer

        self.vectorizer = CountVectorizer(analyzer=identity_analyzer, lowercase=False).fit(train.masked)
        counts = self._counts(train)  # (S, F)
        if self.kind == "pca":
            self.idf = np.log(len(counts) / ((counts > 0).sum(axis=0) + 1e-8))  # (F,)
            weighted = counts * self.idf
            self.mean = weighted.mean(axis=0)  # (F,)
            self.components = PCA(n_components=0.95, svd_solver="full").fit(weighted - self.mean).components_  # (k, F)
        else:
            self.forest = IsolationForest(n_estimators=200, random_state=self.seed).fit(counts)

    def score(self, data: Prepared) -> np.ndarray:
        counts = self._counts(data)
        if self.kind == "iforest":
            return -self.forest.score_samples(counts)
        centred = counts * self.idf - self.mean  # (S, F)
        residual = centred - centred @ self.components.T @ self.components  # (S, F)
        spe = (residual ** 2).sum(axis=1)  # (S,)
        return spe / (1.0 + spe)
