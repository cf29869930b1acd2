"""Faults a user meets outside training: an unprepared dataset offline, a mistyped
boolean, run files teammates cannot read, TensorBoard after a resume."""

import contextlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import TINY, copy_run, read_metrics, tiny_config, tiny_run

import train
from data import datasets, tfds_source
from training import command_line, run_dir

# --- CIFAR-10 not prepared, offline: fail fast, name the right place, leave nothing ----------


@contextlib.contextmanager
def _refused_port():
    """A local TCP port that refuses connections (bound, not listening) while held."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, dirs, files in os.walk(root) for f in files + dirs)


def test_unprepared_cifar10_offline_is_one_error_line_within_seconds_and_leaves_nothing(
        tmp_path):
    """The real command, offline: HOME and TFDS_DATA_DIR are empty folders and the
    download goes through a proxy that refuses connections (offline on any machine)."""
    home, tfds_dir = tmp_path / "home", tmp_path / "tfds"
    home.mkdir()
    tfds_dir.mkdir()
    with _refused_port() as port:
        env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
        env.update(HOME=str(home), TFDS_DATA_DIR=str(tfds_dir),
                   https_proxy=f"http://127.0.0.1:{port}", HTTPS_PROXY=f"http://127.0.0.1:{port}")
        t0 = time.time()
        proc = subprocess.run(
            [sys.executable, "train.py", "--config", "configs/cifar10.py:resnet-20",
             "--workdir", str(tmp_path / "run")],
            env=env, capture_output=True, text=True, timeout=120)
        seconds = time.time() - t0
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert 1 <= len(err) <= 3 and err[-1].startswith("error: "), err
    assert f"not prepared in {tfds_dir} " in err[-1]
    assert f"`tfds build cifar10 --data_dir {tfds_dir}`" in err[-1]
    assert f"127.0.0.1:{port} (proxy for www.cs.toronto.edu) unreachable" in err[-1]
    assert "tensorflow_datasets" not in err[-1]  # not the default TFDS did not use
    assert _files(tfds_dir) == []
    assert not (tmp_path / "run").exists()
    assert seconds < 60


def test_download_hosts_that_do_not_answer_are_found_in_seconds(monkeypatch):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        good = f"http://127.0.0.1:{server.getsockname()[1]}/a.tar.gz"
        assert tfds_source.first_unreachable([good]) is None
        with _refused_port() as port:
            bad = f"https://127.0.0.1:{port}/b.tar.gz"
            why = tfds_source.first_unreachable([good, bad])
            assert why.startswith(f"127.0.0.1:{port} unreachable: ") and "refused" in why
            monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
            why = tfds_source.first_unreachable(["https://example.invalid/c.tar.gz"])
            assert why.startswith(f"127.0.0.1:{port} (proxy for example.invalid) unreachable")


def _cifar10_config(data_dir):
    return command_line.load_config("configs/cifar10.py:resnet-8",
                                    {"data_dir": str(data_dir)})


def test_a_failed_download_removes_only_what_it_added_and_names_the_dir(tmp_path, monkeypatch):
    """The host answers, the download breaks half way: TFDS's real download code runs."""
    from tensorflow_datasets.core.download import downloader

    data_dir = tmp_path / "tfds"
    (data_dir / "downloads" / "cifar10").mkdir(parents=True)
    (data_dir / "downloads" / "cifar10" / "keep.bin").write_bytes(b"x")
    (data_dir / "mnist" / "3.0.1").mkdir(parents=True)
    (data_dir / "mnist" / "3.0.1" / "keep.txt").write_text("prepared elsewhere")
    before = _files(data_dir)
    attempts = []

    def broken_download(self, url, destination_path, verify=True):
        attempts.append(url)
        (destination_path / "cifar-10-binary.tar.gz").write_bytes(b"partial")
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(tfds_source, "first_unreachable", lambda urls: None)
    monkeypatch.setattr(downloader._Downloader, "_sync_download", broken_download)
    with pytest.raises(ValueError) as e:
        datasets.load_in_memory(_cifar10_config(data_dir))
    message = str(e.value)
    assert attempts and "\n" not in message
    assert f"not prepared in {data_dir} " in message and "ConnectionError" in message
    assert f"`tfds build cifar10 --data_dir {data_dir}`" in message
    assert _files(data_dir) == before


def _prepare_fake_cifar10(data_dir, tmp_path, monkeypatch, n_train=12, n_test=6):
    """A real prepared cifar10 in ``data_dir``, built by TFDS from tiny CIFAR binaries."""
    import tensorflow_datasets as tfds

    src = tmp_path / "extracted"
    batches = src / "cifar-10-batches-bin"
    batches.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (n_train, 3, 32, 32), np.uint8),
              "test": rng.integers(0, 256, (n_test, 3, 32, 32), np.uint8)}
    labels = {k: (np.arange(len(v)) % 10).astype(np.uint8) for k, v in images.items()}

    def records(split):
        return b"".join(bytes([lab]) + img.tobytes()
                        for lab, img in zip(labels[split], images[split], strict=True))

    (batches / "data_batch_1.bin").write_bytes(records("train"))
    for i in range(2, 6):
        (batches / f"data_batch_{i}.bin").write_bytes(b"")
    (batches / "test_batch.bin").write_bytes(records("test"))
    (batches / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)))
    with monkeypatch.context() as m:
        m.setattr(tfds.download.DownloadManager, "download_and_extract",
                  lambda self, url: str(src))
        tfds.builder("cifar10", data_dir=str(data_dir)).download_and_prepare()
    return images, labels


def test_a_prepared_cifar10_is_read_without_touching_the_network(tmp_path, monkeypatch):
    data_dir = tmp_path / "tfds"
    images, labels = _prepare_fake_cifar10(data_dir, tmp_path, monkeypatch)
    calls = []

    def no_network(*args, **kwargs):
        calls.append(args)
        raise OSError("the network was touched")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    data = datasets.load_in_memory(_cifar10_config(data_dir))
    assert calls == []
    assert data.train.images.shape == (12, 32, 32, 3) and data.test.images.shape[0] == 6
    read = {(int(lab), img.tobytes())
            for lab, img in zip(data.test.labels, data.test.images, strict=True)}
    assert read == {(int(lab), img.transpose(1, 2, 0).tobytes())  # any order
                    for lab, img in zip(labels["test"], images["test"], strict=True)}


# --- Booleans mean booleans ---------------------------------------------------------------


@pytest.mark.parametrize("word,value", [("true", True), ("FALSE", False), ("Yes", True),
                                        ("no", False), ("1", True), ("0", False)])
def test_boolean_words_in_the_config_argument_and_overrides(word, value):
    c = command_line.load_config(f"configs/digits.py:resnet-8,plain={word}")
    assert c.model.plain is value
    c = command_line.load_config("configs/digits.py:resnet-8", {"model.plain": word})
    assert c.model.plain is value


@pytest.mark.parametrize("word", ["Flase", "t", "f", "2", "", "on"])
def test_anything_else_is_an_error_naming_the_key(word):
    with pytest.raises(ValueError) as e:
        command_line.load_config(f"configs/digits.py:plain-8,plain={word}")
    assert "config key 'plain'" in str(e.value) and "expected true or false" in str(e.value)
    with pytest.raises(ValueError) as e:
        command_line.load_config("configs/digits.py:plain-8", {"layer_responses": word})
    assert "config key 'layer_responses': expected true or false" in str(e.value)


def test_train_py_with_a_mistyped_boolean_is_one_error_line(tmp_path, capsys):
    workdir = tmp_path / "run"
    tiny = [f"--config.{k}={v}" for k, v in TINY.items() if k != "model.depth"]  # if it ran
    code = train.main(["--config", "configs/digits.py:plain-8,plain=Flase",
                       "--workdir", str(workdir), *tiny])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert "'Flase' for config key 'plain'" in err[0]
    assert not workdir.exists()


# --- Run files readable by teammates; TensorBoard agrees with metrics.jsonl on resume --------


@contextlib.contextmanager
def _umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path):
    return os.stat(path).st_mode & 0o777


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_run_files_get_the_mode_of_the_umask(tmp_path, mask, expected):
    with _umask(mask):
        run_dir.write_json_atomic(str(tmp_path / "summary.json"), {"a": 1})
        log = run_dir.MetricsLog(str(tmp_path), is_writer=True)
        (tmp_path / "metrics.jsonl").write_text('{"step": 5}\n{"step": 10}\n')
    assert _mode(tmp_path / "summary.json") == _mode(tmp_path / "metrics.jsonl") == expected
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl", "summary.json"]  # no temp file
    os.chmod(tmp_path / "metrics.jsonl", 0o604)
    with _umask(mask):
        log.truncate_after(5)
    assert _mode(tmp_path / "metrics.jsonl") == 0o604
    assert [m["step"] for m in read_metrics(tmp_path)] == [5]


def _events(path):
    """The Event protos of a TensorBoard event file (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    with open(path, "rb") as f:
        while header := f.read(12):
            (length,) = struct.unpack("<Q", header[:8])
            yield event_pb2.Event.FromString(f.read(length))
            f.read(4)


def _tensorboard_series(workdir, tag):
    """The (step, value) points TensorBoard shows for ``tag``: event files in the order
    written, a SessionLog START at step s purging the earlier points at steps >= s."""
    from tensorboardX.proto import event_pb2

    points, purges = [], []
    for name in sorted(n for n in os.listdir(workdir) if ".tfevents." in n):
        for event in _events(os.path.join(workdir, name)):
            if (event.HasField("session_log")
                    and event.session_log.status == event_pb2.SessionLog.START):
                purges.append(event.step)
                points = [(s, v) for s, v in points if s < event.step]
            points += [(event.step, v.simple_value) for v in event.summary.value
                       if v.tag == tag]
    return points, purges


def test_a_resumed_run_shows_each_step_once_in_tensorboard_and_its_files_are_readable(
        tmp_path, tmp_path_factory):
    """Killed after logging step 15 with the last checkpoint at step 10 (the step-20
    checkpoint is removed): the resume drops 15 and 20 from metrics.jsonl, and TensorBoard
    must drop them too."""
    config = tiny_config()
    tmp_path = copy_run(tiny_run(tmp_path_factory)[0], tmp_path / "run")  # trained, umask 022
    shutil.rmtree(tmp_path / "checkpoints" / "20")
    os.remove(tmp_path / "summary.json")
    # tensorboardX names event files by the second: the resume's must get a new name.
    written = max(int(n.split(".")[3]) for n in os.listdir(tmp_path) if ".tfevents." in n)
    time.sleep(max(0.0, written + 1.05 - time.time()))
    with _umask(0o022):
        train.train_and_evaluate(config, str(tmp_path))
    steps = [m["step"] for m in read_metrics(tmp_path)]
    assert steps == [5, 10, 15, 20]
    points, purges = _tensorboard_series(tmp_path, "train_loss")
    assert purges == [11]
    assert [s for s, _ in points] == steps
    losses = [m["train_loss"] for m in read_metrics(tmp_path)]
    np.testing.assert_allclose([v for _, v in points], losses, rtol=1e-6)
    for name in ("config.json", "summary.json", "metrics.jsonl"):
        assert _mode(tmp_path / name) == 0o644, name
