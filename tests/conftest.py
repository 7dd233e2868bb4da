"""Session-wide test setup: no network, offline hubs, local data, one torch thread, shared models.

* **No network.** A guard installed for the whole session (``pytest_configure``) makes every
  socket ``connect`` / ``connect_ex`` / ``sendto`` to anything but a loopback address or a unix
  socket raise :class:`NetworkAccessError` (a :class:`polar_vbll.errors.PolarVBLLError`), and
  ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` / ``HF_DATASETS_OFFLINE`` are set to 1 before
  any test module imports transformers. A test that needs the network is a bug: the package
  must work offline (DESIGN.md, "Machine facts").
* **Data.** ``POLAR_VBLL_DATA`` defaults to the repository's sibling ``../shared/data`` (an
  absolute path) when it is unset and that folder exists.
* **Threads.** ``torch.set_num_threads(1)``. Measured on this 2-core machine under load
  (load average ~15): the smoke-profile methods on the tiny model took 20.7 s with 1 thread
  and 77-105 s with 2; SmolLM2 + PoLAR-VBLL, 4 smoke steps, took 47 s with 1 thread and 457 s
  with 2. With other jobs on the cores, the second thread mostly waits at every op's
  hand-off; tiny ops (rank-4 adapters, 5-class heads) never gain from it. The second core
  goes to a second test process instead: ``make test-lib`` runs two pytest-xdist workers, one
  test file to a worker (``--dist loadfile``, so module fixtures load once); see
  ``benchmarks/learning_log.md`` for the times.
* **Kernels.** Tests that run a notebook wait for its kernel in one-second polls
  (:mod:`polar_vbll.kernel_poll`, a plugin that pyproject.toml's pytest ``addopts`` loads), so a
  missed wakeup costs a second, not the cell's limit.
* **Models.** ``smollm2``: the packaged SmolLM2-135M, loaded once per session (treat it as
  read-only: deep-copy it before adding adapters). ``tiny_backbone``: a fresh tiny random
  Llama per test (seconds), free to modify.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

for _variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_variable] = "1"

_SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if not os.environ.get("POLAR_VBLL_DATA") and _SHARED_DATA.is_dir():
    os.environ["POLAR_VBLL_DATA"] = str(_SHARED_DATA)

import torch  # noqa: E402  (after the environment variables, which libraries read at import)

from polar_vbll.errors import PolarVBLLError  # noqa: E402

TEST_THREADS = 1
torch.set_num_threads(TEST_THREADS)


# ----------------------------------------------------------------------------- network guard


class NetworkAccessError(PolarVBLLError, ConnectionError):
    """A test tried to reach a host other than this machine."""


_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def _is_local(family, address) -> bool:
    """True for unix sockets and loopback addresses (127.0.0.0/8, ::1, 'localhost')."""
    if family == getattr(socket, "AF_UNIX", object()) or isinstance(address, (str, bytes)):
        return True  # a unix socket path (str/bytes), never a network host
    host = address[0] if isinstance(address, tuple) and address else address
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str):
        return False
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:  # a host name: resolving it would already use the network
        return False


def _refuse(sock, address):
    raise NetworkAccessError(
        f"network access blocked in tests: socket connection to {address!r}; tests may only "
        "connect to localhost (127.0.0.0/8, ::1) or unix sockets, and the package must work "
        "offline (HF_HUB_OFFLINE=1, POLAR_VBLL_DATA for data)")


_originals: dict[str, object] = {}


def install_network_guard() -> None:
    """Wrap socket.socket.connect / connect_ex / sendto (idempotent)."""
    if _originals:
        return
    for name in ("connect", "connect_ex", "sendto"):
        _originals[name] = getattr(socket.socket, name)

    def connect(self, address):
        if not _is_local(self.family, address):
            _refuse(self, address)
        return _originals["connect"](self, address)

    def connect_ex(self, address):
        if not _is_local(self.family, address):
            _refuse(self, address)
        return _originals["connect_ex"](self, address)

    def sendto(self, data, *args):
        address = args[-1]
        if not _is_local(self.family, address):
            _refuse(self, address)
        return _originals["sendto"](self, data, *args)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.socket.sendto = sendto


def remove_network_guard() -> None:
    for name, original in _originals.items():
        setattr(socket.socket, name, original)
    _originals.clear()


def pytest_configure(config):
    install_network_guard()


def pytest_unconfigure(config):
    remove_network_guard()


@pytest.fixture
def network_error():
    """The exception type the network guard raises (for tests that check the guard)."""
    return NetworkAccessError


# ----------------------------------------------------------------------------- models


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the packaged SmolLM2-135M, loaded once. Read-only: deep-copy the
    model before adding adapters or training."""
    from polar_vbll import models

    return models.load_backbone(models.SMOLLM2, device="cpu")


@pytest.fixture
def tiny_backbone():
    """(model, tokenizer): a fresh 2-layer random Llama (hidden 64) with SmolLM2's tokenizer."""
    from polar_vbll import models

    return models.load_backbone(models.TINY, device="cpu")


# ----------------------------------------------------------------------------- benchmarks


def benchmark_module(name: str):
    """A script of ``benchmarks/`` as a module (they import their ``_common`` beside them)."""
    import importlib
    import sys

    folder = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, folder)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(folder)


@pytest.fixture(scope="session")
def bench_walkthrough():
    """``benchmarks/bench_walkthrough.py`` as a module: its table of the notebooks' live runs."""
    return benchmark_module("bench_walkthrough")


@pytest.fixture(scope="session")
def bench_colab_install():
    """``benchmarks/bench_colab_install.py`` as a module: what the install cell installs."""
    return benchmark_module("bench_colab_install")
