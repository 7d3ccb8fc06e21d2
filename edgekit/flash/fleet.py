"""Run flash / rollback / status on many devices at once, with a bound on concurrency."""
from __future__ import annotations

import concurrent.futures as cf

from ..errors import EdgekitError, UsageError
from . import deploy
from .devices import Device
from .transport_ssh import SshOptions


def open_transport(device: Device, ssh: SshOptions):
    if device.kind == "path":
        from .transport_path import PathTransport

        t = PathTransport(device.label)
        if ssh.remote_python != SshOptions.remote_python:  # an explicit --remote-python wins
            t.python = ssh.remote_python
        return t
    from .transport_ssh import connect

    return connect(device, ssh)


def check_path_devices(devices, *, rollback: bool = False) -> None:
    """Refuse the whole run, before any device is touched, if a mounted-path device is not there:
    an unmounted card must not be written onto this host's disk, nor half a fleet flashed."""
    from .transport_path import root_problem

    for d in devices:
        why = root_problem(d.path, create_last=not rollback) if d.kind == "path" else None
        if why:
            raise UsageError(f"device {why}")


def _on_device(device: Device, ssh: SshOptions, op, emit):
    if emit:
        emit(device.label, "connect", {})
    try:
        t = open_transport(device, ssh)
    except EdgekitError as e:
        msg = str(e)
        reason = msg[len("connect: "):] if msg.startswith("connect: ") else msg
        return deploy.DeviceResult(device=device.label, step="connect", reason=reason)
    try:
        return op(t)
    finally:
        try:
            t.close()
        except Exception:  # closing a dropped connection must not hide the result
            pass


def _map(devices, jobs, fn, done=None):
    """fn over devices, results in order; `done` collects them as they come, for a caller interrupted midway."""
    done = [] if done is None else done
    jobs = max(1, min(int(jobs), len(devices)))
    if jobs == 1:
        for d in devices:
            done.append(fn(d))
        return done
    futures = []
    try:
        with cf.ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="flash") as ex:
            futures = [ex.submit(fn, d) for d in devices]
            try:
                cf.wait(futures)
            except BaseException:
                # Ctrl-C reaches this thread only: devices under way finish (a switch must be reported, and
                # each step is safe to complete), the rest are not started
                ex.shutdown(wait=True, cancel_futures=True)
                raise
    except BaseException:
        # A second Ctrl-C during the shutdown above cuts it short, and the pool's exit does not make up for it
        # on Python 3.11: a Thread.join interrupted by KeyboardInterrupt marks the still-running thread as
        # stopped (CPython's bpo-45274 handling), so every later join, the interpreter's exit included, returns
        # at once. The devices that finished (and switched) after it were reported as not flashed, or cut off
        # at exit. Waiting on the futures does not depend on that; a queued device is still not started.
        for f in futures:
            f.cancel()
        try:
            cf.wait(futures)
        except BaseException:  # a third Ctrl-C: report what has finished by now
            pass
        done.extend(f.result() for f in futures if f.done() and not f.cancelled() and f.exception() is None)
        raise
    done.extend(f.result() for f in futures)
    return done


def _reported(devices, jobs, fn):
    """_map, turning Ctrl-C/SIGTERM into deploy.FlashInterrupted with every result obtained so far."""
    done = []
    try:
        return _map(devices, jobs, fn, done)
    except deploy.FlashInterrupted as e:  # the device in progress had switched: its result comes with it
        raise deploy.FlashInterrupted(done + e.results, e.cause) from e.cause
    except (KeyboardInterrupt, SystemExit) as e:
        raise deploy.FlashInterrupted(done, e) from e


def flash_many(devices, bundle, *, opts=None, ssh=None, jobs=4, emit=None) -> list[deploy.DeviceResult]:
    """Raises deploy.FlashInterrupted (a KeyboardInterrupt) on Ctrl-C, holding the devices' results so far."""
    opts, ssh = opts or deploy.FlashOptions(), ssh or SshOptions()
    check_path_devices(devices)
    return _reported(devices, jobs,
                     lambda d: _on_device(d, ssh, lambda t: deploy.flash(t, d.path, bundle, opts, emit), emit))


def rollback_many(devices, *, opts=None, ssh=None, jobs=4, emit=None) -> list[deploy.DeviceResult]:
    opts, ssh = opts or deploy.FlashOptions(), ssh or SshOptions()
    check_path_devices(devices, rollback=True)
    return _reported(devices, jobs,
                     lambda d: _on_device(d, ssh, lambda t: deploy.rollback(t, d.path, opts, emit), emit))


def status_many(devices, *, ssh=None, jobs=4, verify=True) -> list[dict]:
    ssh = ssh or SshOptions()

    def one(d):
        try:
            t = open_transport(d, ssh)
        except EdgekitError as e:
            return {"device": d.label, "error": str(e)}
        try:
            return deploy.status(t, d.path, verify=verify)
        except Exception as e:
            return {"device": d.label, "error": f"status: {deploy.describe(e)}"}
        finally:
            try:
                t.close()
            except Exception:
                pass

    return _map(devices, jobs, one)


__all__ = ["check_path_devices", "flash_many", "rollback_many", "status_many", "open_transport"]
