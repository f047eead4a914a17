"""Runners that time a measurement plan's kernels on a device, found by name (`host-cpu`, `serial`).
An on-device MCU harness writes the same device-profile CSV (bitalloc/hwcost/device_profile.py)."""
from bitalloc.registry import Registry

RUNNERS = Registry("runner", {"host-cpu": "bitalloc.hwcost.device.runners.host_cpu",
                              "serial": "bitalloc.hwcost.device.runners.serial"})
register = RUNNERS.register
