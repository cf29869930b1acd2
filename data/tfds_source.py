"""TFDS datasets read without surprises: quiet, offline when prepared, no stray files.

``load(name, split, data_dir, **kwargs)`` is ``tfds.load`` for this
package. A dataset prepared in the data dir TFDS resolves (``data_dir``, else
``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``) is read without touching
the network. One that is not is downloaded and prepared there only if each
of its download hosts (or the proxy for it) accepts a connection within
``CONNECT_TIMEOUT_S``; otherwise, or when the download or preparation fails,
the entries the attempt added to the dataset's folders are removed and a
one-line ValueError names the data dir and the ``tfds build`` command that
prepares it (instead of urllib3's minutes of retries and a half-written
folder). TensorFlow's start-up log lines and TFDS's absl warnings are kept
off stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Any

CONNECT_TIMEOUT_S = 5.0
_QUIET_LOGGERS = ("absl", "tensorflow")


class _Unreachable(Exception):
    """A download host (or its proxy) that does not accept a connection."""


@contextlib.contextmanager
def _stderr_captured() -> Iterator[None]:
    """Sends file descriptor 2 to a temporary file; replays it if the block raises.

    TensorFlow's C++ start-up lines (oneDNN notices, absl's "before
    InitializeLog" warning) ignore ``TF_CPP_MIN_LOG_LEVEL`` in TF 2.21.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to keep quiet
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """absl and TensorFlow Python loggers at ERROR for the block (TFDS's warnings)."""
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def import_tfds():
    """(tensorflow, tensorflow_datasets), imported quietly, with every GPU hidden from TF."""
    with _stderr_captured():
        import tensorflow as tf  # noqa: PLC0415
        import tensorflow_datasets as tfds  # noqa: PLC0415

        tf.config.set_visible_devices([], "GPU")  # or TF takes the accelerator's memory
    return tf, tfds


def not_prepared_error(name: str, data_dir: str, reason: str) -> ValueError:
    manual = (f"; ImageNet needs ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in "
              f"{data_dir}/downloads/manual first" if name == "imagenet2012" else "")
    return ValueError(
        f"dataset {name} is not prepared in {data_dir} and cannot be downloaded ({reason}); "
        f"run `tfds build {name} --data_dir {data_dir}` where there is internet (then copy "
        f"that folder here), or pass --config.data_dir=DIR of a prepared copy{manual}"
    )


def load(name: str, split: str, data_dir: str | None, **kwargs: Any):
    """(tf.data.Dataset of ``split``, DatasetInfo); ``kwargs`` go to ``builder.as_dataset``.

    Reads first: a prepared dataset (or one mocked by ``tfds.testing.mock_data``)
    never reaches the download code. Raises the ValueError of
    ``not_prepared_error`` when the dataset is not prepared and cannot be.
    """
    _, tfds = import_tfds()
    with quiet_logs():
        builder = tfds.builder(name, data_dir=data_dir)
        try:
            return builder.as_dataset(split=split, **kwargs), builder.info
        except AssertionError:  # TFDS: "could not find data in DIR"
            if builder.is_prepared():
                raise
    _download_and_prepare(builder, name)
    with quiet_logs():
        return builder.as_dataset(split=split, **kwargs), builder.info


def _download_and_prepare(builder, name: str) -> None:
    """``builder.download_and_prepare()`` if its hosts answer; on failure, undone and explained."""
    root = os.fspath(builder.data_dir_root)
    added = _AddedEntries(root, name)
    try:
        unreachable = first_unreachable(sorted(builder.url_infos or ()))
        if unreachable is not None:
            raise _Unreachable(unreachable)
        builder.download_and_prepare()
    except BaseException as e:
        added.remove()
        if isinstance(e, Exception):
            first = (str(e).strip().splitlines() or [""])[0][:200]
            reason = first if isinstance(e, _Unreachable) else f"{type(e).__name__}: {first}"
            raise not_prepared_error(name, root, reason) from e
        raise


def first_unreachable(urls: Iterable[str], timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """'HOST:PORT unreachable (why)' for the first URL whose host, or the proxy for it,
    refuses a TCP connection or gives no answer within ``timeout``; None if all answer."""
    tried = set()
    proxies = urllib.request.getproxies()
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if not parts.hostname or parts.scheme not in ("http", "https", "ftp"):
            continue
        default_port = {"http": 80, "https": 443, "ftp": 21}[parts.scheme]
        target = (parts.hostname, parts.port or default_port)
        proxy = proxies.get(parts.scheme)
        if proxy and not urllib.request.proxy_bypass(parts.hostname):
            p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            target = (p.hostname or "", p.port or 80)
        if target in tried:
            continue
        tried.add(target)
        error = _connect_error(*target, timeout)
        if error is not None:
            via = "" if target[0] == parts.hostname else f" (proxy for {parts.hostname})"
            return f"{target[0]}:{target[1]}{via} unreachable: {error}"
    return None


def _connect_error(host: str, port: int, timeout: float) -> str | None:
    """Why a TCP connection to host:port fails (name resolution included), or None."""
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(e.strerror or str(e) or type(e).__name__)

    thread = threading.Thread(target=attempt, daemon=True)  # getaddrinfo has no timeout
    thread.start()
    thread.join(timeout + 1.0)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


class _AddedEntries:
    """The folders a TFDS download writes under ROOT, listed now, to undo what is added later."""

    def __init__(self, root: str, name: str):
        downloads = os.path.join(root, "downloads")
        self.dirs = [root, downloads, os.path.join(downloads, "extracted"),
                     os.path.join(downloads, "manual"), os.path.join(downloads, name),
                     os.path.join(root, name)]
        self.before = {d: set(os.listdir(d)) if os.path.isdir(d) else None for d in self.dirs}

    def remove(self) -> None:
        """Removes the entries added since, deepest folders first (a new folder whole)."""
        for d in reversed(self.dirs):
            if not os.path.isdir(d) or os.path.islink(d):
                continue
            old = self.before[d]
            if old is None:
                shutil.rmtree(d, ignore_errors=True)
                continue
            for entry in set(os.listdir(d)) - old:
                path = os.path.join(d, entry)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)
