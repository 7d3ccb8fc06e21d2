"""A damaged or missing history.json costs rollback ordering only: the install order is rebuilt
from the version directories on the device (mounted-path device, real files)."""
from __future__ import annotations

import json
import os

import pytest

from edgekit.flash import collect_devices, flash_many, rollback_many
from flash_fixtures import bundles_for_seeds


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    return bundles_for_seeds(tmp_path_factory.mktemp("hist"), range(3))


@pytest.mark.parametrize("damage", ['{"oops": 1}\n', '"text"\n', "42\n", "{not json", None])
def test_rollback_with_damaged_history_goes_to_the_previous_install(tmp_path, three, damage):
    dev = tmp_path / "dev"
    devs = collect_devices([str(dev)])
    for i, b in enumerate(three):
        assert flash_many(devs, b)[0].status == "flashed"
        # the install order shows in the directories' times: make it unambiguous on coarse file systems
        os.utime(dev / "versions" / b.version, (1_000_000 + i, 1_000_000 + i))
    if damage is None:
        (dev / "history.json").unlink()
    else:
        (dev / "history.json").write_text(damage)
    res = rollback_many(devs)[0]
    assert (res.status, res.version) == ("rolled-back", three[1].version), res.reason
    assert os.readlink(dev / "current") == f"versions/{three[1].version}"
    assert len(res.warnings) == 1 and "history.json" in res.warnings[0], res.warnings
    # the rebuilt order was written back: the next rollback walks on without a warning
    assert isinstance(json.loads((dev / "history.json").read_text()), list)
    res = rollback_many(devs)[0]
    assert (res.version, res.warnings) == (three[0].version, [])


def test_fresh_device_has_no_history_warning(tmp_path, three):
    res = flash_many(collect_devices([str(tmp_path / "dev")]), three[0])[0]
    assert res.status == "flashed" and res.warnings == []
