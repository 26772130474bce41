"""No Docker engine runs here: check what can be checked without one — the compose file parses, every file the
image and compose name exists, and every command they run is a valid `logmoe` invocation."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from model.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_dockerfile_copies_only_what_exists_and_runs_as_non_root() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    sources = [m.split()[:-1] for m in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.M)]
    assert sources, "the Dockerfile copies nothing from the build context"
    for group in sources:
        for src in group:
            assert (REPO / src).exists(), f"Dockerfile copies {src!r}, which is not in the repository"
    assert re.search(r"^USER (?!root)\S+", text, flags=re.M)
    assert text.count("FROM ") >= 2  # multi-stage


def test_compose_services_build_from_this_repo(compose: dict) -> None:
    services = compose["services"]
    assert {"kafka", "topics", "trainer", "worker", "alerts"} <= set(services)
    for name in ("trainer", "worker", "alerts"):
        build = services[name]["build"]
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve().is_file(), name
    assert services["kafka"]["image"].startswith("apache/kafka:")


def test_compose_commands_are_valid_logmoe_invocations(compose: dict) -> None:
    parser = build_parser()
    for name in ("trainer", "worker", "alerts"):
        command = compose["services"][name]["command"]
        args = parser.parse_args(command)
        assert args.command == command[0], name
        config = getattr(args, "config", None)
        if config:  # /etc/logmoe is configs/ inside the image
            assert (REPO / "configs" / Path(config).name).is_file(), f"{name}: {config}"


def test_image_default_command_is_a_valid_invocation() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    cmd = yaml.safe_load(re.search(r"^CMD (.+)$", text, flags=re.M).group(1))
    assert build_parser().parse_args(cmd).command == "worker"
