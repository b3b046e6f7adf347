"""The `running` fixture fails a test whose service loop goes on after it was told to stop."""

from __future__ import annotations

import threading

import pytest

from tests.conftest import Running


def test_a_loop_that_ignores_its_stop_fails_stop_all() -> None:
    released = threading.Event()

    def ignores_its_stop(stop: threading.Event) -> None:
        released.wait(10)

    services = Running(join_timeout_s=0.2)
    services.start(ignores_its_stop)
    try:
        with pytest.raises(
            AssertionError, match=r"still running 0\.2 s after being stopped.*ignores_its_stop"
        ):
            services.stop_all()
    finally:
        released.set()


def test_a_loop_that_honours_its_stop_ends_quietly() -> None:
    def honours_its_stop(stop: threading.Event) -> None:
        stop.wait(10)

    services = Running(join_timeout_s=5)
    services.start(honours_its_stop)
    services.stop_all()
    assert services.errors == []
