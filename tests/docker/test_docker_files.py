"""No Docker engine runs here: check what can be checked without one — the compose files parse, every file the
image and compose name exists, every command they run is a valid `logmoe` invocation, the compose environment
is a valid worker configuration, and the image's entrypoint command runs in the venv (the last test)."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from model.cli import build_parser
from stream.config import StreamConfig, load_stream_config

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
LOGMOE = Path(sys.executable).with_name("logmoe")  # the console script the image's ENTRYPOINT runs


def interpolate(value: Any) -> Any:
    """Compose's ${VAR:-default} with the variables unset, as on a fresh host."""
    if isinstance(value, str):
        return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value).replace("$$", "$")
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict:
    return interpolate(yaml.safe_load((DOCKER / "compose.yaml").read_text()))


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


def test_dockerfile_copies_only_what_exists_and_runs_as_non_root(dockerfile: str) -> None:
    sources = [m.split()[:-1] for m in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, flags=re.M)]
    assert sources, "the Dockerfile copies nothing from the build context"
    for group in sources:
        for src in group:
            assert (REPO / src).exists(), f"Dockerfile copies {src!r}, which is not in the repository"
    assert re.search(r"^USER (?!root)\S+", dockerfile, flags=re.M)
    assert dockerfile.count("FROM ") >= 2  # multi-stage
    assert re.search(r"chown logmoe\S* /models", dockerfile)  # a fresh named volume there is writable
    assert re.search(r'^ENTRYPOINT \["logmoe"\]$', dockerfile, flags=re.M)


def test_build_context_sends_only_what_the_image_copies(dockerfile: str) -> None:
    lines = [ln.strip() for ln in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()]
    patterns = [ln for ln in lines if ln and not ln.startswith("#")]
    assert patterns[0] == "*"  # everything out (.venv, data, runs), then the copied paths back in
    included = {p[1:] for p in patterns if p.startswith("!")}
    copied = {src.rstrip("/") for m in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, flags=re.M)
              for src in m.split()[:-1]}
    assert copied == included


def test_cuda_is_a_build_argument_and_cpu_the_default(dockerfile: str) -> None:
    assert re.search(r"^ARG TORCH_VARIANT=cpu$", dockerfile, flags=re.M)
    assert "\nARG TORCH_INDEX=https://download.pytorch.org/whl/${TORCH_VARIANT}\n" in dockerfile
    assert '--index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"' in dockerfile
    gpu = yaml.safe_load((DOCKER / "compose.gpu.yaml").read_text())
    base = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    for name, service in gpu["services"].items():
        assert name in base, f"compose.gpu.yaml overrides {name!r}, which compose.yaml does not define"
        assert "TORCH_VARIANT" in service["build"]["args"]
        assert service["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_compose_services_build_from_this_repo(compose: dict) -> None:
    services = compose["services"]
    assert {"kafka", "topics", "trainer", "worker", "alerts"} <= set(services)
    for name in ("trainer", "worker", "alerts"):
        build = services[name]["build"]
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve().is_file(), name
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"]  # KRaft, no ZooKeeper
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):  # files of this repo (../data is the user's own)
                assert (DOCKER / source).exists(), f"{name} mounts {source}, which does not exist"


def test_worker_scales_and_serves_metrics_and_health(compose: dict) -> None:
    worker = compose["services"]["worker"]
    assert "container_name" not in worker  # a fixed name would stop --scale
    port = worker["environment"]["LOGMOE_METRICS_PORT"]
    assert worker["ports"] == [port]  # container port only: Docker picks a host port per replica
    assert f"127.0.0.1:{port}/healthz" in " ".join(worker["healthcheck"]["test"])
    assert compose["services"]["topics"]["restart"] == "no"


@pytest.mark.parametrize("service", ["worker", "alerts", "trainer"])
def test_compose_environment_is_a_valid_worker_config(compose: dict, service: str) -> None:
    env = {k: str(v) for k, v in compose["services"][service]["environment"].items()}
    cfg = load_stream_config(REPO / "configs" / "stream.yaml", environ=env)
    known = {f"LOGMOE_{name.upper()}" for name in StreamConfig.__dataclass_fields__} | {"LOGMOE_BROKER", "LOGMOE_MODEL"}
    assert set(env) <= known, f"{service}: unknown settings {set(env) - known}"
    assert cfg.bootstrap_servers == ["kafka:9092"] and cfg.model == "/models/current"
    if service == "worker":
        assert cfg.metrics_port == 9100 and cfg.model_reload_interval > 0


def test_compose_commands_are_valid_logmoe_invocations(compose: dict, dockerfile: str) -> None:
    parser = build_parser()
    services = compose["services"]
    for name in ("worker", "alerts"):
        command = services[name]["command"]
        args = parser.parse_args(command)
        assert args.command == command[0], name
        if getattr(args, "config", None):  # /etc/logmoe is configs/ inside the image
            assert (REPO / "configs" / Path(args.config).name).is_file(), f"{name}: {args.config}"
    # The trainer runs the publish script, which runs `logmoe train --output-dir RUN <its arguments>`.
    (script,) = services["trainer"]["entrypoint"]
    assert re.search(rf"^COPY docker/train-and-publish\.sh /usr/local/bin/{script}$", dockerfile, flags=re.M)
    args = parser.parse_args(["train", "--output-dir", "/models/runs/x", *services["trainer"]["command"]])
    assert args.command == "train" and (REPO / "configs" / Path(args.config).name).is_file()


def test_image_default_command_is_a_valid_invocation(dockerfile: str) -> None:
    cmd = yaml.safe_load(re.search(r"^CMD (.+)$", dockerfile, flags=re.M).group(1))
    assert build_parser().parse_args(cmd).command == "worker"


def test_train_and_publish_switches_current_atomically_and_keeps_the_newest_runs(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "logmoe"  # records its arguments and writes a model where --output-dir says
    fake.write_text('#!/bin/sh\necho "$@" >> "$LOG"\nmkdir -p "$3/final_moe_model"\n'
                    'echo "{}" > "$3/final_moe_model/config.json"\n')
    fake.chmod(0o755)
    models = tmp_path / "models"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "MODELS_DIR": str(models), "KEEP": "2",
           "LOG": str(tmp_path / "calls")}
    targets = []
    for _ in range(3):
        out = subprocess.run([str(DOCKER / "train-and-publish.sh"), "--data", "/data/train.jsonl"], env=env,
                             capture_output=True, text=True, timeout=30, check=True)
        assert out.stdout.startswith("published ")
        targets.append(os.readlink(models / "current"))
    assert len(set(targets)) == 3 and Path(targets[-1]).is_dir()
    assert sorted(p.name for p in (models / "runs").iterdir()) == sorted(Path(t).parent.name for t in targets[1:])
    calls = (tmp_path / "calls").read_text().splitlines()
    assert all(c.startswith("train --output-dir ") and c.endswith("--data /data/train.jsonl") for c in calls)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model(folder: Path, encoder_dir: Path) -> Path:
    import torch

    from model.configuration_logmoe import LogMoEConfig
    from model.modeling_logmoe import LogMoEForSequenceClassification

    torch.manual_seed(0)
    config = LogMoEConfig(input_dim=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_experts=2,
                          expert_intermediate_size=16, max_window=8, window_hop=4,  # a hop within the window
                          encoder_name_or_path=str(encoder_dir), data_fingerprint="d" * 64)
    LogMoEForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_image_entrypoint_runs_in_the_venv(compose: dict, dockerfile: str, tiny_encoder_dir: Path,
                                               tmp_path: Path) -> None:
    """ENTRYPOINT + CMD with the compose worker's environment, only the broker, model path and metrics port
    pointed at this machine: healthy on /healthz (and by the compose healthcheck), a clean exit on SIGTERM."""
    from stream.broker import EmbeddedBroker

    cmd = yaml.safe_load(re.search(r"^CMD (.+)$", dockerfile, flags=re.M).group(1))
    cmd = [str(LOGMOE), *[str(REPO / "configs" / "stream.yaml") if c == "/etc/logmoe/stream.yaml" else c for c in cmd]]
    run = tiny_model(tmp_path / "runs" / "r1" / "final_moe_model", tiny_encoder_dir)
    (tmp_path / "current").symlink_to(run)
    port = free_port()
    broker = EmbeddedBroker(host="127.0.0.1")
    broker.start()
    try:
        env = {**os.environ, **{k: str(v) for k, v in compose["services"]["worker"]["environment"].items()},
               "LOGMOE_BROKER": broker.bootstrap, "LOGMOE_MODEL": str(tmp_path / "current"),
               "LOGMOE_METRICS_PORT": str(port), "LOGMOE_PRODUCER_MAX_BATCH_SIZE": "64",  # Tansu, see BROKER.md
               "LOGMOE_APP_ID": f"docker{port}"}
        log = (tmp_path / "worker.log").open("wb")
        worker = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90
            health = None
            while time.monotonic() < deadline and worker.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as response:
                        health = json.loads(response.read())
                        break
                except (urllib.error.URLError, ConnectionError):
                    time.sleep(0.5)
            text = (tmp_path / "worker.log").read_text(errors="replace")
            assert health is not None, f"no healthy /healthz:\n{text[-3000:]}"
            assert health["model"]["fingerprint"] == "d" * 64 and health["model"]["name"] == "final_moe_model"
            # The compose healthcheck itself, as Docker would run it in the container (python is the venv's).
            check = [c.replace(":9100/", f":{port}/") for c in compose["services"]["worker"]["healthcheck"]["test"]]
            assert check[:2] == ["CMD", "python"]
            assert subprocess.run([sys.executable, *check[2:]], timeout=30).returncode == 0
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                code = worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                code = worker.wait()
            log.close()
        assert code == 0
    finally:
        broker.stop()
