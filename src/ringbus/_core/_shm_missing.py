"""Stand-in for ShmChannel where the native extension did not build: every use says why it cannot work."""

from __future__ import annotations

from typing import NoReturn

from ringbus.errors import Unsupported

_WHY = (
    "ShmChannel needs ringbus's native extension (shared memory and futex waits in C), "
    "which is not built in this installation; reinstall with a C compiler and the Python headers"
)


class ShmChannel:
    """Raises ringbus.Unsupported on every constructor: there is no pure-Python shared-memory ring."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise Unsupported(_WHY)

    @staticmethod
    def create(name: str, size_bytes: int) -> NoReturn:
        raise Unsupported(_WHY)

    @staticmethod
    def attach(name: str) -> NoReturn:
        raise Unsupported(_WHY)

    @staticmethod
    def remove(name: str) -> NoReturn:
        raise Unsupported(_WHY)
