"""The power-cut filesystem's fixture (``tests/powercut/mount.py``)."""

from tests.powercut.mount import powercut

__all__ = ["powercut"]
