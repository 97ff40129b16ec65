"""The trainer on a tiny model (CPU): learning, exact resume, DDP on gloo, precision modes and errors."""

import csv
import logging
import math
import os
import signal
import socket
import types

import pytest
import torch
import torch.multiprocessing as mp
from tiny_training import tiny

from udm_fast.losses import MissingWeightsError
from udm_fast.models import checkpoint as ckpt
from udm_fast.models.udm import UDM
from udm_fast.train import distributed
from udm_fast.train.config import ConfigError, ScheduleConfig, load_config
from udm_fast.train.data import DataError
from udm_fast.train.schedules import ScheduleFactor
from udm_fast.train.trainer import Trainer


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _mean(rows, key):
    return sum(float(r[key]) for r in rows) / len(rows)


def test_tiny_training_learns_and_writes_its_outputs(tmp_path):
    # without the critic and the second noise sample (covered by the other tests) a step is ~2x cheaper
    lean = {"model.discriminator": False, "loss.weights.gan_generator": 0.0, "loss.weights.diversity": 0.0}
    trainer = Trainer(tiny(tmp_path, **{"run.max_steps": 30, "log.image_every": 15, "log.save_every": 10}, **lean))
    moco = trainer.model.global_encoder
    initial_q = [p.clone() for p in moco.encoder_q.parameters()]
    initial_k = [p.clone() for p in moco.encoder_k.parameters()]
    initial_queue = trainer.model.global_encoder.queue.clone()
    summary = trainer.run()
    assert summary["step"] == 30 and summary["finished"]
    rows = read_log(tmp_path)
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    first, last = rows[:8], rows[-8:]
    assert _mean(last, "loss") < _mean(first, "loss")
    assert _mean(last, "l1") < _mean(first, "l1")  # the synthesised ŷ moves towards y
    assert "critic_loss" not in rows[0] and "diversity" not in rows[0]
    # MoCo: the queue was written, and the key encoder followed the trained query encoder by momentum
    assert not torch.equal(moco.queue, initial_queue)
    for q0, q, k0, k in zip(initial_q, moco.encoder_q.parameters(), initial_k, moco.encoder_k.parameters()):
        if q.dim() > 1:  # weights (conv biases before BatchNorm get ~zero gradients)
            assert not torch.equal(q, q0) and not torch.equal(k, k0)
    # outputs: resolved config, checkpoints (every 10 steps, two kept), grids, exported model
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["latest.pt", "step_00000020.pt", "step_00000030.pt"]
    assert sorted(os.listdir(tmp_path / "images")) == ["step_00000015.png", "step_00000030.png"]
    assert load_config(tmp_path / "config.yaml") == trainer.config
    exported = UDM.load(tmp_path / "model.pt")
    assert exported.weights_hash() == trainer.model.weights_hash()


def _state_equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_state_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_state_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_kill_and_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    settings = {"run.max_steps": 4, "log.save_every": 2, "run.ema_decay": 0.5}
    reference = Trainer(tiny(tmp_path / "a", **settings))
    reference.run()

    # the interrupted run uses loader workers: items do not depend on them
    killed = Trainer(tiny(tmp_path / "b", **settings, **{"data.workers": 2}))
    step = killed.train_step

    def dies_during_step_4(*batch):
        if killed.step == 3:
            raise KeyboardInterrupt("killed")
        return step(*batch)

    killed.train_step = dies_during_step_4
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    assert ckpt.load_file(tmp_path / "b" / "checkpoints" / "latest.pt")["step"] == 2

    interrupted_save = tmp_path / "b" / "checkpoints" / ".tmp-k1ll3d.pt"  # what a kill during a save leaves
    interrupted_save.write_bytes(b"half a checkpoint")
    resumed = Trainer(tiny(tmp_path / "b", **settings), resume=True)
    assert resumed.step == 2
    resumed.run()
    assert not interrupted_save.exists()
    for name in ("model", "ema", "optimizer_g", "optimizer_d", "scheduler_g", "sampler"):
        assert _state_equal(reference.state_dict()[name], resumed.state_dict()[name]), name
    a, b = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    assert [r["step"] for r in b] == [str(s) for s in range(1, 5)]  # the killed run's row 3 was replaced
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k != "images_per_s"} == {
            k: v for k, v in rb.items() if k != "images_per_s"
        }


def _without_group_names(optimizer_state: dict) -> dict:
    """An optimiser state as the trainer wrote it before its parameter groups had names."""
    groups = [{k: v for k, v in group.items() if k != "name"} for group in optimizer_state["param_groups"]]
    return {**optimizer_state, "param_groups": groups}


def test_named_parameter_groups_and_resume_from_a_checkpoint_without_names(tmp_path):
    settings = {"run.max_steps": 4, "log.save_every": 2, "optim.lr_generator": 2e-3, "optim.lr_critic": 5e-4}
    reference = Trainer(tiny(tmp_path / "a", **settings))
    groups = {group["name"]: group for group in reference.optimizer_g.param_groups}
    assert list(groups) == ["global_encoder", "local_encoder", "generator", "global_compressor", "local_compressor"]
    model = reference.model
    for name, module in (
        ("global_encoder", model.global_encoder.encoder_q),
        ("generator", model.generator),
        ("local_compressor", model.local_compressor),
    ):
        assert [id(p) for p in groups[name]["params"]] == [id(p) for p in module.parameters()], name
    assert [group["name"] for group in reference.optimizer_d.param_groups] == ["critic"]
    assert reference.lr() == {"lr_generator": 2e-3, "lr_critic": 5e-4}  # by name: the other groups have 1e-3
    reference.run()

    state = ckpt.load_file(tmp_path / "a" / "checkpoints" / "step_00000002.pt")
    old = dict(
        state,
        optimizer_g=_without_group_names(state["optimizer_g"]),
        optimizer_d=_without_group_names(state["optimizer_d"]),
    )
    torch.save(old, tmp_path / "unnamed.pt")
    resumed = Trainer(tiny(tmp_path / "b", **settings), resume=str(tmp_path / "unnamed.pt"))
    assert [g["name"] for g in resumed.optimizer_g.param_groups] == list(groups)  # matched by position, kept
    assert resumed.lr() == {"lr_generator": 2e-3, "lr_critic": 5e-4}
    resumed.run()
    for name in ("model", "optimizer_g", "optimizer_d", "scheduler_g", "scheduler_d", "sampler"):
        assert _state_equal(reference.state_dict()[name], resumed.state_dict()[name]), name
    assert [float(r["lr_generator"]) for r in read_log(tmp_path / "b")] == [2e-3, 2e-3]

    renamed = dict(
        state["optimizer_g"],
        param_groups=[dict(g, name=f"part{i}") for i, g in enumerate(state["optimizer_g"]["param_groups"])],
    )
    torch.save(dict(state, optimizer_g=renamed), tmp_path / "renamed.pt")
    with pytest.raises(
        ckpt.CheckpointError,
        match=r"renamed.pt: the optimiser's parameter groups are "
        r"\['part0', .*\] in the checkpoint and \['global_encoder'",
    ):
        Trainer(tiny(tmp_path / "c", **settings), resume=str(tmp_path / "renamed.pt"))
    fewer = dict(old["optimizer_g"], param_groups=old["optimizer_g"]["param_groups"][:4])
    torch.save(dict(state, optimizer_g=fewer), tmp_path / "fewer.pt")
    with pytest.raises(ckpt.CheckpointError, match=r"groups are \['group 0', 'group 1', 'group 2', 'group 3'\]"):
        Trainer(tiny(tmp_path / "c", **settings), resume=str(tmp_path / "fewer.pt"))


def test_sigint_stops_after_the_step_with_a_checkpoint(tmp_path):
    lean = {"model.discriminator": False, "loss.weights.gan_generator": 0.0, "loss.weights.diversity": 0.0}
    trainer = Trainer(tiny(tmp_path, **{"run.max_steps": 5}, **lean))
    step = trainer.train_step

    def interrupted_during_step_2(*batch):
        if trainer.step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # handled by the trainer: finish this step, then stop
        return step(*batch)

    trainer.train_step = interrupted_during_step_2
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs in a background job
    summary = trainer.run()
    assert summary["step"] == 2 and not summary["finished"]
    assert ckpt.load_file(tmp_path / "checkpoints" / "latest.pt")["step"] == 2
    assert not (tmp_path / "model.pt").exists()
    assert signal.getsignal(signal.SIGINT) is handler_before  # restored


def _ddp_worker(rank, world, port, out_dir):
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    try:
        trainer = Trainer(tiny(out_dir, **{"run.max_steps": 3, "log.save_every": 2}))
        assert trainer.sampler.per_rank == 2
        trainer.run()
        torch.save(
            {"model": trainer.model.state_dict(), "optimizer_g": trainer.optimizer_g.state_dict()},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        distributed.shutdown()


def test_two_process_gloo_training_keeps_the_ranks_identical(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the children reuse the imported modules (spawn would import torch twice more)
    mp.start_processes(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, start_method="fork")
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert _state_equal(states[0], states[1])
    model = states[0]["model"]
    # every step enqueued the keys of both ranks (4 per step), not only the local 2
    assert model["global_encoder.queue_ptr"].item() == (3 * 4) % 16
    assert not torch.equal(
        model["global_encoder.encoder_k.LPE_p.0.conv.weight"], model["global_encoder.encoder_q.LPE_p.0.conv.weight"]
    )
    saved = ckpt.load_file(tmp_path / "checkpoints" / "latest.pt")
    assert saved["step"] == 3 and len(saved["rng"]) == 2  # each rank's random state
    assert len(read_log(tmp_path)) == 3  # only rank 0 logs


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # fp16: skipped first step
@pytest.mark.parametrize(
    "overrides, columns",
    [
        (
            {
                "run.amp": "bf16",
                "run.channels_last": True,
                "model.disc_channels": 6,
                "data.degrade_on": "device",
                "loss.weights.dists": 1.0,
                "loss.weights.lpips": 1.0,
                "loss.pretrained": False,
                "loss.weights.spectrum": 1.0,
                "loss.weights.spectrum_pool": 4,
                "loss.weights.lowpass_l1": 1.0,
                "optim.grad_clip": 1.0,
                "optim.critic_grad_clip": 1.0,
            },
            {"dists", "lpips", "spectrum", "lowpass_l1", "grad_norm", "critic_grad_norm"},
        ),
        (
            {"run.amp": "fp16", "optim.grad_clip": 1.0, "optim.critic_grad_clip": 1.0, "loss.weights.diversity": 0.0},
            {"critic_loss", "grad_norm", "critic_grad_norm"},
        ),
    ],
)
def test_precision_and_option_modes_train(tmp_path, overrides, columns):
    summary = Trainer(tiny(tmp_path, **{"run.max_steps": 1}, **overrides)).run()
    assert summary["finished"] and columns <= set(summary["losses"])
    # fp16: the loss scaler's first steps overflow (gradient norm inf or NaN) and are skipped
    assert all(math.isfinite(v) for k, v in summary["losses"].items() if k != "grad_norm")
    saved = ckpt.load_file(tmp_path / "checkpoints" / "latest.pt")
    assert (saved["scaler"] is not None) == (overrides["run.amp"] == "fp16")


def test_schedules_drive_their_own_optimisers(tmp_path):
    overrides = {
        "run.max_steps": 2,
        "optim.generator_schedule": {"kind": "step", "interval": "step", "step_size": 1, "gamma": 0.5},
        "optim.critic_schedule": {"kind": "cosine", "interval": "epoch", "min_lr_ratio": 0.1},
    }
    trainer = Trainer(tiny(tmp_path, **overrides))
    assert trainer.sampler.batches_per_epoch == 1  # 4 bundled photos, batch 4
    trainer.run()
    rows = read_log(tmp_path)
    assert [float(r["lr_generator"]) for r in rows] == pytest.approx([5e-4, 2.5e-4])
    # cosine over the run's 2 epochs: halfway after one, at the floor after two
    assert [float(r["lr_critic"]) for r in rows] == pytest.approx([1e-3 * 0.55, 1e-3 * 0.1])
    assert trainer.optimizer_g.param_groups[3]["lr"] == pytest.approx(1e-3 * 0.25)  # every group decays

    # resumed with a longer run, the cosine spans the new length at once (not the checkpoint's)
    resumed = Trainer(tiny(tmp_path, **{**overrides, "run.max_steps": 4}), resume=True)
    assert resumed.optimizer_d.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.55)
    resumed.run()
    cosine = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * n / 4)) for n in (3, 4)]
    assert [float(r["lr_critic"]) for r in read_log(tmp_path)[2:]] == pytest.approx([1e-3 * f for f in cosine])


def test_schedule_factor():
    step = ScheduleFactor(ScheduleConfig(kind="step", step_size=3, gamma=0.1), length=0)
    assert [step(n) for n in range(7)] == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01])
    cosine = ScheduleFactor(ScheduleConfig(kind="cosine", min_lr_ratio=0.2), length=4)
    expected = [0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * min(n, 4) / 4)) for n in range(6)]
    assert [cosine(n) for n in range(6)] == pytest.approx(expected)
    assert ScheduleFactor(ScheduleConfig(kind="constant"), length=5)(100) == 1.0


def test_output_folder_and_resume_errors(tmp_path):
    Trainer(tiny(tmp_path, **{"run.max_steps": 1})).run()
    with pytest.raises(FileExistsError, match="already holds a run"):
        Trainer(tiny(tmp_path, **{"run.max_steps": 1}))
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        Trainer(tiny(tmp_path / "other"), resume=True)
    with pytest.raises(
        ckpt.CheckpointError, match=r"another model \(checkpoint -> config now: model.filters: 8 -> 16\)"
    ):
        Trainer(tiny(tmp_path, **{"model.filters": 16}), resume=True)
    with pytest.raises(ckpt.CheckpointError, match="run.ema_decay was off"):
        Trainer(tiny(tmp_path, **{"run.ema_decay": 0.9}), resume=True)
    resumed = Trainer(tiny(tmp_path, **{"run.max_steps": 2}), resume=True)  # a longer run continues
    assert resumed.run()["step"] == 2
    # a damaged newest checkpoint is reported and skipped: latest.pt next, then the older step files
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest.pt", "step_00000001.pt", "step_00000002.pt"]
    newest = checkpoints / "step_00000002.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    assert Trainer(tiny(tmp_path, **{"run.max_steps": 2}), resume=True).step == 2
    (checkpoints / "latest.pt").write_bytes(b"not a checkpoint")
    assert Trainer(tiny(tmp_path, **{"run.max_steps": 2}), resume=True).step == 1
    (checkpoints / "step_00000001.pt").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match="step_00000001.pt .*not a complete file"):
        Trainer(tiny(tmp_path, **{"run.max_steps": 2}), resume=True)
    # output folder and device mistakes
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError, match="a_file .*is a file"):
        Trainer(tiny(tmp_path / "a_file"))
    with pytest.raises(ConfigError, match="run.device 'tpu' is not a device"):
        Trainer(tiny(tmp_path / "d", **{"run.device": "tpu"}))


def test_a_second_run_into_a_busy_output_folder_is_refused(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    lean = {
        "run.max_steps": 1,
        "model.discriminator": False,
        "loss.weights.gan_generator": 0.0,
        "loss.weights.diversity": 0.0,
    }
    with open(tmp_path / ".run.lock", "w") as held:  # another run (its lock is tied to this open file)
        held.write("pid 12345 on elsewhere")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match=r"being written by another run \(pid 12345 on elsewhere\)"):
            Trainer(tiny(tmp_path, **lean)).run()
        assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "config.yaml").exists()
    assert Trainer(tiny(tmp_path, **lean)).run()["finished"]  # released with the holder


def test_missing_perceptual_weights_give_the_losses_error(tmp_path, monkeypatch, weight_packages):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    config = tiny(tmp_path, **{"loss.weights.dists": 10.0, "loss.download": False})
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth.*pretrained=False"):
        Trainer(config)


def test_each_unusable_file_is_reported_once_and_every_skip_counted(caplog):
    trainer = types.SimpleNamespace(skipped=0, _reported_skips=set())
    with caplog.at_level(logging.WARNING, logger="udm_fast.train"):
        for _ in range(3):  # three epochs over the same two broken files
            Trainer._report_skipped(trainer, ["a.jpg: cannot decode image", "b.jpg: smaller than the crop"])
    assert trainer.skipped == 6
    assert [r.getMessage() for r in caplog.records] == [
        "skipped unusable training file a.jpg: cannot decode image (not reported again)",
        "skipped unusable training file b.jpg: smaller than the crop (not reported again)",
    ]


def test_bad_data_is_reported(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images"):
        Trainer(tiny(tmp_path / "a", **{"data.root": str(empty)}))
    with pytest.raises(DataError, match="4 items, fewer than one batch"):
        Trainer(tiny(tmp_path / "b", **{"data.batch_size": 8}))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="run.device 'cuda' requested but no CUDA device is available"):
            Trainer(tiny(tmp_path / "c", **{"run.device": "cuda"}))
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(4):
        (broken / f"{i}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"unusable items in a row.*broken/\d\.jpg: cannot decode image"):
        Trainer(tiny(tmp_path / "d", **{"data.root": str(broken), "run.max_steps": 1})).run()
