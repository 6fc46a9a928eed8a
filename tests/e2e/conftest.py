"""End-to-end fixtures: the simulated device of ``tests/device.py``."""

from tests.device import device, make_device

__all__ = ["device", "make_device"]
