"""Stop signals (exit codes, the second-signal rules) and TensorBoard event files read back."""
import json
import os
import signal

import pytest
from dataclasses import replace

from synthetic import write_tiny_mnist
from trainers.config import TrainConfig
from laser_tool.signals import Interrupted, StopFlag, exit_code
from trainers.train import train
from conftest import TINY


def test_stop_signals_set_the_flag_and_name_the_exit_code():
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGUSR1, 138), (signal.SIGUSR2, 140), (signal.SIGINT, 130)):
        with StopFlag() as stop:
            os.kill(os.getpid(), sig)  # delivered to the main thread before kill() returns
            assert stop.set and stop.signum == sig
            os.kill(os.getpid(), signal.SIGTERM)  # a second signal while stopping changes nothing
            assert stop.signum == sig
        assert exit_code(Interrupted(stop.signum)) == code and Interrupted(stop.signum).preempted == (code != 130)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers are given back
    with StopFlag() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C aborts at once
            os.kill(os.getpid(), signal.SIGINT)
    assert exit_code(KeyboardInterrupt()) == 130


def test_tensorboard_events_hold_the_epoch_scalars_and_resume_without_duplicates(tmp_path):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    data = write_tiny_mnist(tmp_path / "mnist", n_train=600, n_test=100)
    cfg = TrainConfig(model=TINY, dataset="mnist", data_dir=str(data), val_size=100, epochs=3, augment=False,
                      batch_size=50, lr=3e-3, warmup_epochs=0.5, device="cpu", out=str(tmp_path), name="run",
                      tensorboard=True)
    with pytest.raises(KeyboardInterrupt):  # stop in epoch 3 (10 steps per epoch), then resume
        train(cfg, progress=False, _interrupt_at_step=25)
    run = train(replace(cfg, tensorboard=True), progress=False)
    acc = ea.EventAccumulator(str(run / "tb"))
    acc.Reload()
    hist = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    tags = set(acc.Tags()["scalars"])
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr", "time/images_per_s"} <= tags
    for tag, key in (("loss/train", "train_loss"), ("accuracy/val", "val_acc"), ("lr", "lr")):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2, 3], tag  # one point per epoch, none twice after resuming
        assert [e.value for e in events] == pytest.approx([h[key] for h in hist], rel=1e-6)
