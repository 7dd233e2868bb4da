"""The session-wide network guard of conftest.py: public hosts fail, this machine works."""

import os
import socket
import threading

import pytest

from polar_vbll.errors import PolarVBLLError


@pytest.mark.parametrize("address", [("1.1.1.1", 443), ("8.8.8.8", 53), ("huggingface.co", 443)])
def test_connecting_to_a_public_host_fails_with_the_guard_error(address, network_error):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        with pytest.raises(network_error, match=r"network access blocked.*" + address[0]):
            sock.connect(address)
        with pytest.raises(network_error):
            sock.connect_ex(address)
    assert issubclass(network_error, PolarVBLLError)


def test_create_connection_and_udp_to_a_public_host_fail(network_error):
    with pytest.raises(network_error, match="1.1.1.1"):
        socket.create_connection(("1.1.1.1", 80), timeout=2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(network_error, match="8.8.4.4"):
            sock.sendto(b"\0" * 12, ("8.8.4.4", 53))


def test_ipv6_public_host_fails(network_error):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support in this Python")
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        with pytest.raises(network_error, match="2606:4700:4700::1111"):
            sock.connect(("2606:4700:4700::1111", 443))


def test_localhost_tcp_round_trip_works():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        received = []

        def serve():
            connection, _ = server.accept()
            with connection:
                received.append(connection.recv(16))
                connection.sendall(b"pong")

        thread = threading.Thread(target=serve)
        thread.start()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(b"ping")
            assert client.recv(16) == b"pong"
        thread.join(timeout=5)
    assert received == [b"ping"]


def test_localhost_by_name_and_socketpair_work():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
            assert client.connect_ex(("localhost", server.getsockname()[1])) == 0
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"unix")
        assert right.recv(4) == b"unix"


def test_hub_offline_variables_are_set():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_data_defaults_to_the_shared_release_files():
    root = os.environ.get("POLAR_VBLL_DATA")
    assert root and os.path.isabs(root) and os.path.isdir(os.path.join(root, "arc_easy"))
