"""Two ranks equal one: real gloo processes on the CPU.

Every multi-process test starts real processes (``torch.multiprocessing``,
spawn) that join a gloo group through torch's ``env://`` rendezvous on a free
port, exactly as ``torchrun`` sets them up (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), one thread each. :func:`run_ranks` kills every
process it started when the test ends, also on failure or timeout.

Trainable BatchNorm cannot be synchronised on a CPU (torch's SyncBatchNorm
needs CUDA, and ``pss`` refuses it, see the last tests), so the models here
train GroupNorm from scratch.

The single-process side runs with one thread too: a different thread count
alone changes a 4-step run's weights by up to 2.4e-5 here (oneDNN sums in
another order), 50 times what two ranks change. Tolerances (float32; the two
sides differ only in summation order): gradients and weights after one step
``rtol=1e-4, atol=1e-6``; the loss curve of a 4-iteration run 1e-4 relative;
weights after it ``rtol=1e-3, atol=1e-4`` and, each weight tensor as a whole,
|b - a| / |a| <= 1e-3. (On an AMD EPYC with AVX-512 the two sides' summation
orders leave up to 2.1e-5 between single weights after 4 steps, 1.7e-4 of a tensor's
norm at most, with loss curves 1.5e-6 apart: the earlier ``atol=1e-5``, set on
another CPU, failed there.) Evaluation (detections and COCO metrics) and resume
must match exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from multiprocessing import resource_tracker
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from mlflow.tracking import MlflowClient

import pss.engine.train as engine
from pss import dist
from pss.config import load_config
from pss.data import build_dataset, build_loader
from pss.data.sampler import ShardedBatches
from pss.engine.checkpoint import load_checkpoint, load_model_weights
from pss.engine.evaluate import evaluate
from pss.errors import UserError
from pss.models import Detector
from pss.testing.checkpoints import assert_same_training_state
from pss.testing.configs import tiny_train_overrides
from pss.tracking.logger import search_runs

GRAD_TOL = {"rtol": 1e-4, "atol": 1e-6}
CURVE_RTOL = 1e-4
WEIGHT_TOL = {"rtol": 1e-3, "atol": 1e-4}
WEIGHT_NORM_RTOL = 1e-3  # |b - a| / |a| of a whole tensor
COCO_METRICS = ("mAP", "AP50", "AP75", "APs", "APm", "APl", "mAR")


# --------------------------------------------------------------------------- ranks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    try:
        fn(*args)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_ranks(fn: Callable, *args, world: int = 2, timeout: float = 300) -> None:
    """Run ``fn(*args)`` in ``world`` processes of one gloo group; kill them all at the end.

    A rank that raises fails the test with its traceback (torch then stops the others).
    """
    context = mp.start_processes(
        _rank_main,
        args=(world, free_port(), fn, args),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{world} ranks still running after {timeout} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join()
        # spawn also started multiprocessing's resource tracker; it would outlive the test
        # (until pytest exits). A later spawn starts a new one.
        resource_tracker._resource_tracker._stop()


@contextlib.contextmanager
def one_thread():
    """This process computes with one thread, like each rank."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def overrides(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        *tiny_train_overrides(root, out),
        "model.backbone.norm=gn",
        "data.max_val_images=5",  # odd: torch's DistributedSampler would pad with a repeat
        "eval.batch_size=2",
        *extra,
    ]


# --------------------------------------------------------------------------- rank bodies
# Module-level functions: spawned processes import them by name.


def one_step(cfg_overrides: list[str], out: Path) -> None:
    """One optimizer step on the first global batch of epoch 1; this rank's view, saved."""
    cfg = load_config([], cfg_overrides)
    device = dist.init_from_environment()
    train_set = build_dataset(cfg.data, "train", seed=cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    detector = engine.build_model(cfg, device)
    ddp = torch.nn.parallel.DistributedDataParallel
    model = ddp(detector) if dist.is_distributed() else detector
    per_rank = cfg.train.batch_size // dist.world_size()
    loader = build_loader(
        train_set, per_rank, 0, True, cfg.train.seed, dist.is_distributed(), 32, epoch=1
    )
    images, targets = next(iter(loader))
    optimizer = engine.build_optimizer(cfg, detector)
    loss, losses = engine.forward_losses(model, detector, images, targets, None)
    engine.optimizer_step(loss, optimizer, None, cfg.train.grad_clip)
    torch.save(
        {
            "image_ids": [t["image_id"] for t in targets],
            "losses": losses,
            "grads": {n: p.grad for n, p in detector.named_parameters() if p.grad is not None},
            "weights": detector.state_dict(),
        },
        out / f"rank{dist.rank()}.pt",
    )


def train_and_record(
    cfg_overrides: list[str], experiment: str, stop_after: int | None, calls: Path
) -> None:
    """``train`` as a sweep job runs it (resume="auto"), recording who saved checkpoints."""
    save = engine.save_checkpoint

    def recorded(path, state):
        (calls / f"rank{dist.rank()}-epoch{state['epoch']}").touch()
        save(path, state)

    engine.save_checkpoint = recorded
    cfg = load_config([], cfg_overrides)
    engine.train(
        cfg, resume="auto", run=engine.RunInfo(experiment=experiment), stop_after_epoch=stop_after
    )


def evaluate_checkpoint(cfg_overrides: list[str], checkpoint: Path, out: Path) -> None:
    """Evaluate a checkpoint on this rank's share of the val set; rank 0 writes the results."""
    cfg = load_config([], cfg_overrides)
    device = dist.init_from_environment()
    val_set = build_dataset(cfg.data, "val", seed=cfg.train.seed)
    model = Detector(cfg.model)
    load_model_weights(model, load_checkpoint(checkpoint)["model"], str(checkpoint))
    loader = build_loader(
        val_set, cfg.eval.batch_size, 0, False, 0, dist.is_distributed(), 32
    )
    shown = [t["image_id"] for _, targets in loader for t in targets]
    (out / f"images-rank{dist.rank()}.json").write_text(json.dumps(shown))
    metrics = evaluate(model, loader, val_set, list(cfg.eval.modes), device, out / "eval")
    if dist.is_main():
        (out / "metrics.json").write_text(json.dumps(metrics))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def store(mlflow_uri, tmp_path_factory):
    """The session's MLflow store; the working folder a fresh tmp folder (./mlruns)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
        cwd = tmp_path_factory.mktemp("ddp")
        patch.chdir(cwd)
        yield cwd


@pytest.fixture(scope="module")
def single(store, shapes_root) -> Path:
    """A 2-epoch x 2-iteration run in this process (batch 4)."""
    out = store / "single"
    with one_thread():
        cfg = load_config([], overrides(shapes_root, out))
        engine.train(cfg, run=engine.RunInfo("ddp-single"))
    return out


@pytest.fixture(scope="module")
def two_ranks(store, shapes_root) -> tuple[Path, Path]:
    """The same run on two ranks (2 images each); its checkpoint-save records."""
    out, calls = store / "two", store / "two-calls"
    calls.mkdir()
    run_ranks(train_and_record, overrides(shapes_root, out), "ddp-two", None, calls)
    return out, calls


def loss_history(experiment: str) -> tuple[list[int], list[float]]:
    (run,) = search_runs(experiment)
    history = MlflowClient().get_metric_history(run.info.run_id, "loss")
    history = sorted(history, key=lambda m: (m.step, m.timestamp))
    return [m.step for m in history], [m.value for m in history]


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_one_step_on_the_same_global_batch_gives_one_process_gradients(shapes_root, tmp_path):
    cfg_overrides = overrides(shapes_root, tmp_path / "out")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    with one_thread():
        one_step(cfg_overrides, tmp_path / "one")
    run_ranks(one_step, cfg_overrides, tmp_path / "two")
    single = torch.load(tmp_path / "one" / "rank0.pt", weights_only=True)
    ranks = [torch.load(tmp_path / "two" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]

    # The two ranks' batches are one process's batch (images of different sizes: the
    # ranks pad to the common size), and they hold the same averaged gradients.
    assert sorted(ranks[0]["image_ids"] + ranks[1]["image_ids"]) == sorted(single["image_ids"])
    assert len(ranks[0]["image_ids"]) == len(ranks[1]["image_ids"]) == 2
    assert ranks[0]["losses"] == ranks[1]["losses"]
    for name, value in single["losses"].items():
        assert ranks[0]["losses"][name] == pytest.approx(value, rel=1e-5), name
    grads, weights = ranks[0]["grads"], ranks[0]["weights"]
    assert grads.keys() == single["grads"].keys()
    worst = {"grad": (0.0, 0.0), "weight": (0.0, 0.0)}
    for kind, mine, theirs in (
        ("grad", grads, single["grads"]),
        ("weight", weights, single["weights"]),
    ):
        for name, value in mine.items():
            ref = theirs[name].float()
            value = value.float()
            torch.testing.assert_close(value, ref, **GRAD_TOL, msg=f"{kind} {name}")
            diff = (value - ref).abs()
            rel = diff.norm() / ref.norm().clamp(min=1e-12)  # of the tensor, as a whole
            worst[kind] = (max(worst[kind][0], float(diff.max())), max(worst[kind][1], float(rel)))
    for name in grads:
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), name
    print(f"one vs two ranks: max abs difference, max |a - b| / |a| of a tensor: {worst}")


@pytest.mark.slow
def test_a_two_rank_run_has_one_process_loss_curve_and_weights(single, two_ranks):
    steps_one, loss_one = loss_history("ddp-single")
    steps_two, loss_two = loss_history("ddp-two")
    assert steps_one == steps_two == [1, 2, 3, 4]  # one value per step: rank 0 logs alone
    gap = max(abs(a - b) / abs(a) for a, b in zip(loss_one, loss_two))
    print(f"loss curves {loss_one} vs {loss_two}: max relative gap {gap:.2e}")
    assert gap <= CURVE_RTOL
    a = load_checkpoint(single / "last.pth")["model"]
    b = load_checkpoint(two_ranks[0] / "last.pth")["model"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], **WEIGHT_TOL, msg=key)
        if a[key].is_floating_point() and a[key].dim() >= 2:  # conv and linear weights
            gap = (b[key] - a[key]).norm() / a[key].norm().clamp(min=1e-12)
            assert gap <= WEIGHT_NORM_RTOL, (key, float(gap))


def test_only_rank_0_logs_and_writes_checkpoints(two_ranks):
    out, calls = two_ranks
    assert sorted(p.name for p in calls.iterdir()) == ["rank0-epoch1", "rank0-epoch2"]
    (run,) = search_runs("ddp-two")
    assert run.info.status == "FINISHED"
    client = MlflowClient()
    for key in ("mAP_e2e", "mAP_nms", "forward_ms"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2]
    for key in ("loss", "loss_pss", "loss_rank", "lr"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3, 4]
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".pth") == ["last.pth"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_two_rank_evaluation_gives_exactly_the_single_process_metrics(
    single, shapes_root, tmp_path
):
    # Threshold 0 in every mode: 4 iterations leave every score under 0.05, and the
    # COCO metrics at 0; the detections themselves are compared, all 1,500 of them.
    cfg_overrides = overrides(shapes_root, tmp_path / "unused", "model.inference.score_thresh=0")
    ckpt = single / "last.pth"
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    with one_thread():
        evaluate_checkpoint(cfg_overrides, ckpt, tmp_path / "one")
    run_ranks(evaluate_checkpoint, cfg_overrides, ckpt, tmp_path / "two")

    # 5 images in batches of 2 on two ranks: [1, 2] and [5] on rank 0, [3, 4] on rank 1.
    shown = [json.loads((tmp_path / "two" / f"images-rank{r}.json").read_text()) for r in (0, 1)]
    assert shown == [[1, 2, 5], [3, 4]]
    assert json.loads((tmp_path / "one" / "images-rank0.json").read_text()) == [1, 2, 3, 4, 5]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    coco = [f"{m}_{mode}" for m in COCO_METRICS for mode in ("e2e", "nms", "raw")]
    assert {k: one[k] for k in coco} == {k: two[k] for k in coco}
    for mode in ("e2e", "nms", "raw"):
        name = f"detections_{mode}.json"
        dets_one = json.loads((tmp_path / "one" / "eval" / name).read_text())
        dets_two = json.loads((tmp_path / "two" / "eval" / name).read_text())
        assert len(dets_one) == 500 and dets_one == dets_two, mode  # 100 per image


@pytest.mark.slow
def test_resuming_a_two_rank_run_reproduces_the_uninterrupted_run(
    two_ranks, store, shapes_root
):
    out, calls = store / "parted", store / "parted-calls"
    calls.mkdir()
    cfg_overrides = overrides(shapes_root, out)
    run_ranks(train_and_record, cfg_overrides, "ddp-parted", 1, calls)
    assert load_checkpoint(out / "last.pth")["epoch"] == 1
    run_ranks(train_and_record, cfg_overrides, "ddp-parted", None, calls)
    a = load_checkpoint(two_ranks[0] / "last.pth")
    b = load_checkpoint(out / "last.pth")
    assert a["iteration"] == 4
    assert_same_training_state(a, b)
    assert sorted(p.name for p in calls.iterdir()) == ["rank0-epoch1", "rank0-epoch2"]
    (run,) = search_runs("ddp-parted")  # the resumed start continued the same run
    assert run.info.status == "FINISHED"
    assert loss_history("ddp-parted") == loss_history("ddp-two")


# --------------------------------------------------------------------------- single-process


def test_sharded_batches_deal_every_image_once_in_one_process_batches():
    for n, batch, world in [(5, 2, 2), (6, 2, 2), (7, 3, 2), (1, 4, 3), (10, 1, 4), (0, 2, 2)]:
        one = list(ShardedBatches(n, batch, 1, 0))
        shares = [list(ShardedBatches(n, batch, world, r)) for r in range(world)]
        dealt = [b for share in shares for b in share]
        assert sorted(dealt) == one  # the same batches, each once
        assert sorted(i for b in dealt for i in b) == list(range(n))
        assert [len(ShardedBatches(n, batch, world, r)) for r in range(world)] == [
            len(share) for share in shares
        ]


def build_or_refuse(cases: dict[str, list[str]], out: Path) -> None:
    """build_model of each config on this rank; the UserErrors raised, written to ``out``."""
    device = dist.init_from_environment()
    messages = {}
    for name, cfg_overrides in cases.items():
        try:
            engine.build_model(load_config([], cfg_overrides), device)
            messages[name] = ""
        except UserError as exc:
            messages[name] = str(exc)
    (out / f"rank{dist.rank()}.json").write_text(json.dumps(messages))


@pytest.mark.slow
def test_trainable_batchnorm_on_several_cpu_processes_is_refused(shapes_root, tmp_path):
    base = overrides(shapes_root, tmp_path)
    cases = {
        "bn": [*base, "model.backbone.norm=bn"],
        "frozen_bn": [*base, "model.backbone.norm=frozen_bn"],
        "gn": [*base, "model.backbone.norm=gn"],
        "two_step": [*base, "model.backbone.norm=bn", "train.trainable=pss"],  # BN frozen
    }
    run_ranks(build_or_refuse, cases, tmp_path)
    for rank in (0, 1):
        refused = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert refused["frozen_bn"] == refused["gn"] == refused["two_step"] == ""
        message = refused["bn"]
        assert "norm=bn trains BatchNorm, which 2 CPU processes cannot synchronise" in message
        assert "SyncBatchNorm needs CUDA" in message and "norm=gn or frozen_bn" in message
    # One process (even in a process group, as under `torchrun --nproc_per_node 1`) keeps
    # plain trainable BatchNorm.
    one = load_config([], [*base, "model.backbone.norm=bn"])
    assert any(
        isinstance(m, torch.nn.BatchNorm2d)
        for m in engine.build_model(one, torch.device("cpu")).modules()
    )


def test_rendezvous_env_from_submitit_job_environment(monkeypatch):
    import submitit

    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    envs = []
    for global_rank, node, local_rank in [(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)]:
        monkeypatch.setenv("SLURM_PROCID", str(global_rank))
        monkeypatch.setenv("SLURM_NODEID", str(node))
        monkeypatch.setenv("SLURM_LOCALID", str(local_rank))
        envs.append(dist.rendezvous_env(submitit.JobEnvironment(), dict(os.environ)))
    assert [e["RANK"] for e in envs] == ["0", "1", "2", "3"]
    assert [e["LOCAL_RANK"] for e in envs] == ["0", "1", "0", "1"]
    assert {e["WORLD_SIZE"] for e in envs} == {"4"}
    assert {e["LOCAL_WORLD_SIZE"] for e in envs} == {"2"}
    assert {e["MASTER_ADDR"] for e in envs} == {"gpu07"}  # the allocation's first node
    (port,) = {e["MASTER_PORT"] for e in envs}  # every task finds the same master port
    assert dist.PORT_RANGE[0] <= int(port) < dist.PORT_RANGE[1]
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    assert dist.rendezvous_env(submitit.JobEnvironment(), {})["MASTER_PORT"] != port
    assert dist.rendezvous_env(submitit.JobEnvironment(), {"MASTER_PORT": "29500"})[
        "MASTER_PORT"
    ] == "29500"
