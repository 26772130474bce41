"""train/distributed.py and train/sharded_prep.py: how batches and data are split over ranks, the environment and
set-up checks (one process), and the collectives, the sharded data step and DDP's gradients in a real 2-process
gloo group started by torchrun (tests/train/ddp_checks.py)."""
from __future__ import annotations

import json
import logging
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch
from ddp_launch import REPO_ROOT, run_bounded, torchrun
from safetensors.torch import load_file

from model.cli import build_parser, main
from model.config_io import load_config
from train.checkpoint import LoadedCheckpoint, TrainerState, load_latest_checkpoint, rng_key, save_checkpoint
from train.cli import nproc_child_argv, train_overrides
from train.config import TrainConfig
from train.distributed import (SINGLE, AllRanksError, check_batch_split, check_enough_windows, choose_backend, shard,
                               unshard, world_from_env)
from train.launch import report_failure

HERE = Path(__file__).resolve().parent
LAUNCH_TIMEOUT_S = 180  # a rank that hangs fails the test instead of hanging it (collectives time out at 60 s)


# ------------------------------------------------------------------------------------------- one process

@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("length", [0, 1, 5, 8, 11])
def test_shards_are_disjoint_cover_everything_and_come_back_in_order(world_size: int, length: int) -> None:
    items = list(range(100, 100 + length))
    shards = [shard(items, rank, world_size) for rank in range(world_size)]
    assert sorted(x for part in shards for x in part) == items
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert unshard(shards) == items
    rows = torch.arange(length)
    assert torch.equal(torch.cat([shard(rows, rank, world_size) for rank in range(world_size)]).sort().values, rows)


def test_a_single_process_takes_the_plain_path() -> None:
    """Without torchrun nothing is wrapped, split or exchanged, so a single process trains bit for bit as before."""
    model = torch.nn.Linear(3, 2)
    assert SINGLE.wrap(model) is model and not SINGLE.distributed and SINGLE.is_main
    rows = torch.tensor([5, 1, 4, 2])
    assert torch.equal(SINGLE.local_rows(rows), rows)
    logits, labels, weight = torch.randn(4, 2), torch.tensor([0, 1, 1, 0]), torch.tensor([0.6, 2.0])
    assert torch.equal(SINGLE.cross_entropy(logits, labels, weight, labels),
                       torch.nn.functional.cross_entropy(logits, labels, weight=weight))
    assert SINGLE.mean_over_ranks(0.25, 3.0) == (0.25, 3.0)
    assert SINGLE.gather_shards([3, 1]) == [3, 1] and SINGLE.agree(lambda: 7) == 7
    assert SINGLE.rank_rng_states() == {}


def test_a_global_batch_splits_into_equal_halves() -> None:
    assert check_batch_split(64, 1) == 64 and check_batch_split(64, 2) == 32 and check_batch_split(64, 4) == 16
    with pytest.raises(AllRanksError, match="training.batch_size 33 does not split evenly over 2 processes"):
        check_batch_split(33, 2)
    check_enough_windows(2, 2)
    with pytest.raises(AllRanksError, match=r"fewer training windows \(2\) than processes \(3\).*start at most 2"):
        check_enough_windows(2, 3)


def test_world_from_torchrun_environment() -> None:
    assert world_from_env({}) == (0, 1, 0)
    assert world_from_env({"WORLD_SIZE": "1"}) == (0, 1, 0)
    assert world_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == (3, 4, 1)
    with pytest.raises(ValueError, match="WORLD_SIZE is 2 but RANK is not set: start logmoe train with torchrun"):
        world_from_env({"WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match=r"RANK must be in \[0, 2\) for WORLD_SIZE 2 \(2\)"):
        world_from_env({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer \\('two'\\)"):
        world_from_env({"WORLD_SIZE": "two"})


def test_backend_auto_is_gloo_on_cpu_and_an_unavailable_one_is_refused() -> None:
    cpu = torch.device("cpu")
    assert choose_backend("auto", cpu, 2) == "gloo"
    assert choose_backend("gloo", cpu, 2) == "gloo"
    with pytest.raises(AllRanksError, match="backend 'nccl' is not available here \\(device cpu\\)"):
        choose_backend("nccl", cpu, 2)
    with pytest.raises(AllRanksError, match="training.backend must be one of auto, gloo, nccl \\('mpi'\\)"):
        choose_backend("mpi", cpu, 2)


def test_nproc_children_get_the_parents_config_without_nproc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("a.jsonl").write_text("")
    argv = ["train", "--data", "a.jsonl", "--eval-data", "b.jsonl", "--nproc", "2", "--json", "--seed", "7",
            "model.top_p=0.9", "--set", "training.batch_size=32", "--resume", "--output-dir", "runs/x"]
    parent = build_parser().parse_args(argv)
    child_argv = nproc_child_argv(parent, train_overrides(parent))
    assert "--nproc" not in child_argv and child_argv[:2] == ["train", "--json"]
    child = build_parser().parse_args(child_argv)
    assert child.nproc is None and child.json
    assert load_config(TrainConfig, None, train_overrides(child)) == load_config(TrainConfig, None,
                                                                               train_overrides(parent))


def test_nproc_is_refused_under_torchrun_and_below_one(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["train", "--data", "a.jsonl", "--nproc", "2"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "logmoe: error: --nproc 2 under a launcher that already started 2 processes: leave --nproc out (torchrun's "
        "--nproc_per_node sets the count)"]
    monkeypatch.delenv("WORLD_SIZE")
    assert main(["train", "--data", "a.jsonl", "--nproc", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["logmoe: error: --nproc must be >= 1 (0)"]


@pytest.mark.parametrize("setting, message", [
    ("training.batch_size=33", "training.batch_size 33 does not split evenly over 2 processes (it is the global "
                               "batch; each process takes batch_size / 2): use a multiple of 2"),
    ("training.backend=nccl", "backend 'nccl' is not available here (device cpu): NCCL needs CUDA devices and a CUDA "
                              "build of torch; on CPU use gloo (training.backend=auto picks one that is)"),
])
def test_a_bad_setup_is_one_line_before_any_process_waits(setting: str, message: str,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """As rank 0 of 2 (torchrun's environment, no rank 1 anywhere): refused before joining a process group, so the
    test returns at once instead of waiting for a rank that never comes."""
    for key, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    assert main(["train", "--data", "a.jsonl", "--device", "cpu", "--set", setting]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"logmoe: error: {message}"]
    monkeypatch.setenv("RANK", "1")  # the same error on another rank: rank 0 reports it, this one stays quiet
    root_level = logging.getLogger().level
    try:
        assert main(["train", "--data", "a.jsonl", "--device", "cpu", "--set", setting]) == 2
    finally:
        logging.getLogger().setLevel(root_level)  # a rank above 0 logs warnings only; pytest's process goes on
    assert capsys.readouterr().err == ""


def test_a_failed_launch_names_the_rank_unless_it_explained_itself(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    def failed(exitcode: int) -> ChildFailedError:
        return ChildFailedError("model.cli", {1: ProcessFailure(1, 4242, exitcode, str(tmp_path / "none.json"))})

    assert report_failure(failed(2)) == 2  # it printed its own `logmoe: error:` line
    assert capsys.readouterr().err == ""
    assert report_failure(failed(-9)) == 1
    assert capsys.readouterr().err.startswith("logmoe: error: training process rank 1 failed (signal SIGKILL); "
                                              "the other processes were stopped")
    assert report_failure(failed(1)) == 1
    assert "rank 1 failed (exit code 1)" in capsys.readouterr().err


def test_each_rank_keeps_and_restores_its_own_rng_state(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    torch.manual_seed(1)
    rank0 = torch.get_rng_state()
    rank1 = torch.manual_seed(2).get_state()
    torch.set_rng_state(rank0)
    save_checkpoint(tmp_path, model, None, TrainerState(epochs_done=1), keep=2, rank_rng={rng_key(1): rank1})
    loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None and set(loaded.optimizer_tensors) == {"rng.torch", "rng.torch.rank1"}
    torch.manual_seed(99)
    loaded.restore_rng(1)
    assert torch.equal(torch.get_rng_state(), rank1)
    loaded.restore_rng(0)
    assert torch.equal(torch.get_rng_state(), rank0)
    torch.manual_seed(99)
    before = torch.get_rng_state()
    LoadedCheckpoint(tmp_path, loaded.trainer, {}, {"rng.torch": rank0}, []).restore_rng(2)  # saved by 1 process
    assert torch.equal(torch.get_rng_state(), before)


# ------------------------------------------------------------------------------------------- two processes

@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory, world: Path, tiny_encoder_dir: Path
          ) -> list[tuple[dict[str, Any], dict[str, torch.Tensor]]]:
    """What each of 2 ranks saw in tests/train/ddp_checks.py, in rank order."""
    out = tmp_path_factory.mktemp("ddp_checks")
    done = run_bounded(torchrun("--standalone", "--nproc_per_node", "2", str(HERE / "ddp_checks.py"), str(out),
                                str(world), str(tiny_encoder_dir)), LAUNCH_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]
    return [(json.loads((out / f"rank{r}.json").read_text()), load_file(str(out / f"rank{r}.safetensors")))
            for r in range(2)]


@pytest.mark.slow
def test_every_rank_joins_with_its_torchrun_rank(ranks: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    assert [results["world"] for results, _ in ranks] == [[0, 2, 0, "gloo"], [1, 2, 1, "gloo"]]


@pytest.mark.slow
def test_gathers_rebuild_the_whole_in_order(ranks: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    for results, _ in ranks:
        assert results["gather_shards"] == list(range(11))
        assert results["gather_rows"] == [[[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], []]  # uneven, one rank empty
        assert results["mean_over_ranks"] == [1.5, 10.0]


@pytest.mark.slow
def test_a_setup_error_on_one_rank_is_raised_on_every_rank(ranks: list[tuple[dict[str, Any], dict[str, Any]]]
                                                           ) -> None:
    for rank, (results, _) in enumerate(ranks):
        assert results["agree_error"] == "rank 1: data file not found: b.jsonl"
        assert results["agree_ok"] == f"rank {rank} loaded"
        assert results["check_same_error"] == (
            "the ranks disagree on the data fingerprint: rank 0 has train abababababab…, rank 1 train "
            "cdcdcdcdcdcd…; every rank must read the same files with the same settings")
        assert results["check_same_equal"] is None
        assert results["from_main"] == {"checkpoint": 3}  # read by rank 0 alone, handed to both
        assert results["from_main_error"] == "--resume: the checkpoint was made with other settings"


@pytest.mark.slow
def test_ranks_mask_and_encode_their_shares_and_share_one_cache(
        ranks: list[tuple[dict[str, Any], dict[str, torch.Tensor]]]) -> None:
    (first, tensors0), (second, tensors1) = ranks
    assert first["masked_equal"] and second["masked_equal"]
    # cold cache: the 5 lines split between the ranks, each encoded once
    assert first["encoded_cold"] == ["a b", "d e f", "hh ii"] and second["encoded_cold"] == ["cc", "g"]
    # one new line: only it is encoded; then a fully warm cache: nothing is
    assert first["encoded_one_new"] + second["encoded_one_new"] == ["new line"]
    assert first["encoded_warm"] == second["encoded_warm"] == []
    for name in ("cold", "one_new", "warm"):
        assert torch.equal(tensors0[f"table_{name}"], tensors0[f"single_{name}"]), name  # as one process has it
        assert torch.equal(tensors1[f"table_{name}"], tensors0[f"single_{name}"]), name
    assert first["primed_warm"] == second["primed_warm"] == 6
    # rank 0 alone wrote the cache: one shard per run that encoded something, every line in it
    assert first["cache_shards"] == 2
    assert first["cache_lines"] == ["a b", "cc", "d e f", "g", "hh ii", "new line"]


@pytest.mark.slow
@pytest.mark.parametrize("weighting", ["weighted", "unweighted"])
def test_ddp_gradients_of_two_halves_are_the_gradients_of_the_whole_batch(
        ranks: list[tuple[dict[str, Any], dict[str, torch.Tensor]]], weighting: str) -> None:
    for rank, (_, tensors) in enumerate(ranks):
        assert tensors[f"{weighting}.rows"].tolist() == list(range(rank, 8, 2))
        keys = sorted(k.split(".ddp.", 1)[1] for k in tensors if k.startswith(f"{weighting}.ddp."))
        assert keys and not any("router" in key for key in keys)  # stage 1 never calls the router: no gradient
        for key in keys:
            ddp, single = tensors[f"{weighting}.ddp.{key}"], tensors[f"{weighting}.single.{key}"]
            assert torch.allclose(ddp, single, rtol=1e-5, atol=1e-7), (key, float((ddp - single).abs().max()))


@pytest.mark.slow
def test_the_pipeline_refuses_more_processes_than_training_windows_on_every_rank(
        ranks: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    for results, _ in ranks:
        assert results["too_few_windows"] == ("fewer training windows (1) than processes (2): every process needs at "
                                              "least one window of each batch; start at most 1")


@pytest.mark.slow
def test_ranks_draw_dropout_of_their_own_and_rank_0_gathers_them(
        ranks: list[tuple[dict[str, Any], dict[str, torch.Tensor]]]) -> None:
    (_, tensors0), (_, tensors1) = ranks
    assert not torch.equal(tensors0["rng_own"], tensors1["rng_own"])
    assert torch.equal(tensors0["gathered.rng.torch.rank1"], tensors1["rng_own"])
    assert "gathered.rng.torch" not in tensors0  # rank 0's own is saved as rng.torch by save_checkpoint


# ------------------------------------------------------------------------------------------- README

def readme_cluster_commands() -> list[list[str]]:
    """The commands of README's "Training on a cluster", each as argv (continuations joined; srun, comments and
    shell assignments left out)."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Training on a cluster\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if not words or re.match(r"\w+=", words[0]):
                continue
            commands.append(words[1:] if words[0] == "srun" else words)
    return commands


def test_readme_cluster_commands_are_valid_torchrun_and_logmoe_invocations(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.distributed.run import get_args_parser

    monkeypatch.chdir(REPO_ROOT)
    commands = readme_cluster_commands()
    launches = []
    for argv in commands:
        assert argv[0] in ("logmoe", "torchrun"), argv
        if argv[0] == "torchrun":
            launch = get_args_parser().parse_args(argv[1:])
            assert launch.training_script == "$(which logmoe)", argv
            launches.append(launch)
            argv = ["logmoe", *launch.training_script_args]
        args = build_parser().parse_args(argv[1:])
        assert args.command == "train"
        load_config(TrainConfig, args.config, train_overrides(args))
    assert any(argv[0] == "logmoe" and "--nproc" in argv for argv in commands)
    assert any(launch.standalone for launch in launches)
    multi_node = [launch for launch in launches if not launch.standalone]
    assert len(multi_node) == 2 and all(launch.rdzv_backend == "c10d" and launch.rdzv_endpoint
                                        for launch in multi_node)  # by hand and under Slurm
