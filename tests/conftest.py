"""Shared fixtures. The zoo cache is repo-local (``.advex-cache``) unless ADVEX_CACHE is set, so
the reference model is trained once per checkout and shared by every test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("ADVEX_CACHE", str(ROOT / ".advex-cache"))
DATASETS = Path(os.environ.get("ADVEX_DATASETS", ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def datasets_root() -> Path:
    if not DATASETS.is_dir():
        pytest.skip(f"real datasets not found at {DATASETS}")
    return DATASETS


@pytest.fixture(scope="session")
def sms_root(datasets_root) -> Path:
    """The shared SMS Spam Collection folder (skips when it is absent)."""
    root = datasets_root / "sms-spam-collection"
    if not (root / "SMSSpamCollection").is_file():
        pytest.skip(f"SMS Spam Collection not found at {root}")
    return root


@pytest.fixture(scope="session")
def sms_spam_cnn(sms_root):
    """The zoo's word CNN spam filter (trained on first use, then cached)."""
    from advex import zoo

    return zoo.load("sms-spam-cnn", data_root=sms_root, progress=False)


@pytest.fixture(scope="session")
def mnist_model():
    """The zoo's MNIST SmallCNN (trained on first use, then cached)."""
    from advex import zoo

    return zoo.load("mnist-smallcnn", progress=False)


@pytest.fixture(scope="session")
def mnist_test():
    """(x, y) of the built-in mnist5k test split."""
    from advex import data

    return data.mnist5k("test").tensors()


@pytest.fixture(scope="session")
def mnist_correct(mnist_model, mnist_test):
    """The first 200 test digits the zoo model classifies correctly."""
    x, y = mnist_test
    with torch.no_grad():
        pred = mnist_model(x).argmax(1)
    keep = (pred == y).nonzero().squeeze(1)[:200]
    return x[keep], y[keep]


@pytest.fixture
def tiny_model():
    """A small deterministic linear model on 1×8×8 inputs (fast property tests)."""
    g = torch.Generator().manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return m.eval()


# --------------------------------------------------------------------------------------------
# No test may reach the network: every outbound connection that is not to loopback fails.
# (Loopback stays open for the playground server and torch.distributed's gloo rendezvous.)
# --------------------------------------------------------------------------------------------


class NetworkBlocked(RuntimeError):
    """A test tried to open a connection to a non-loopback address."""


def _is_loopback(address) -> bool:
    import ipaddress

    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0] if isinstance(address, tuple) and address else address
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: would need DNS, i.e. the network


@pytest.fixture(autouse=True, scope="session")
def _block_network():
    import socket

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def connect(self, address):
        if not _is_loopback(address):
            raise NetworkBlocked(f"test tried to reach the network: {address!r}")
        return real_connect(self, address)

    def connect_ex(self, address):
        if not _is_loopback(address):
            raise NetworkBlocked(f"test tried to reach the network: {address!r}")
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_loopback((host,) if isinstance(host, str) else (str(host),)):
            raise NetworkBlocked(f"test tried to resolve a network host: {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    socket.getaddrinfo = getaddrinfo
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex = real_connect, real_connect_ex
        socket.getaddrinfo = real_getaddrinfo
