"""edgekit flash: bundles (.ekb) and their verified, atomic deployment to devices.

    build_bundle(outdir, dest, artifact=None, inputs=None, atol=None) -> dict
    read_bundle(path, workdir) -> Bundle          (safe extraction, every hash checked)
    open_source(bundle_or_outdir, workdir) -> Bundle
    flash_many(devices, bundle, opts=FlashOptions(), ssh=SshOptions(), jobs=4) -> [DeviceResult]
    rollback_many(devices, ...), status_many(devices, ...)
    collect_devices(devices, devices_file, targets) -> [Device]

flash_many and rollback_many raise FlashInterrupted (a KeyboardInterrupt carrying every device's result so
far) on Ctrl-C/SIGTERM, after any switch of `current` under way has been recorded.
"""
from .bundle import Bundle, build_bundle, open_source, read_bundle
from .deploy import DeviceResult, FlashInterrupted, FlashOptions
from .devices import Device, collect_devices, parse_device
from .fleet import flash_many, open_transport, rollback_many, status_many
from .transport_ssh import SshOptions

__all__ = ["Bundle", "build_bundle", "open_source", "read_bundle", "DeviceResult", "FlashInterrupted", "FlashOptions",
           "Device",
           "collect_devices", "parse_device", "flash_many", "open_transport", "rollback_many", "status_many",
           "SshOptions"]
