"""edgekit flash to a mounted path (an SD card, an NFS export): same layout, same guarantees."""
from __future__ import annotations

import json
import os

import pytest

from edgekit.flash import FlashOptions, collect_devices, flash_many, read_bundle, rollback_many
from edgekit.flash.bundle import META, build_bundle
from flash_fixtures import bundles_for_seeds, make_outdir, rebuild_bundle, tree_hashes


def _active_hashes(dev):
    return os.readlink(dev / "current"), tree_hashes(dev / "current")


def _tree(root):
    """Every path under root (links not followed) with its link target: what a flash may have created."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            out[os.path.relpath(p, root)] = os.readlink(p) if os.path.islink(p) else None
    return out


def _with_kind(kind):
    def mutate(d):
        meta = json.loads((d / META).read_text())
        meta["artifact"]["kind"] = kind
        (d / META).write_text(json.dumps(meta))
    return mutate


def _want(b):
    w = dict(b.files)
    w[META] = b.meta_sha256()
    return w


def test_flash_outdir_to_mounted_path_update_and_rollback(tmp_path, capsys):
    from edgekit.cli import main

    dev = tmp_path / "sdcard" / "models"
    dev.parent.mkdir()  # the mounted card; its models folder is made on the first flash
    out0 = make_outdir(tmp_path / "out0", seed=0)
    assert main(["flash", str(out0), "--device", str(dev), "--json"]) == 0  # OUTDIR bundled on the fly
    r0 = json.loads(capsys.readouterr().out)["results"][0]
    assert r0["status"] == "flashed" and r0["selftest"]["ok"] is True
    v0 = r0["version"]
    assert os.readlink(dev / "current") == f"versions/{v0}"
    assert (dev / "current" / "model.fp32.onnx").read_bytes() == (out0 / "model.fp32.onnx").read_bytes()
    # the same OUTDIR bundles to the same version: nothing is sent
    assert main(["flash", str(out0), "--device", f"file://{dev}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["status"] == "up-to-date"

    out1 = make_outdir(tmp_path / "out1", seed=1)
    build_bundle(out1, tmp_path / "v1.ekb")
    v1 = read_bundle(tmp_path / "v1.ekb", tmp_path)
    res = flash_many(collect_devices([str(dev)]), v1)[0]
    assert (res.status, res.previous) == ("flashed", v0)
    assert _active_hashes(dev) == (f"versions/{v1.version}", _want(v1))
    before = tree_hashes(dev / "versions" / v0)
    assert main(["flash", "--rollback", "--device", str(dev), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["version"] == v0
    assert os.readlink(dev / "current") == f"versions/{v0}" and tree_hashes(dev / "current") == before


def test_mounted_path_faults_keep_previous(tmp_path):
    dev = tmp_path / "dev"
    out = make_outdir(tmp_path / "out", seed=0)
    build_bundle(out, tmp_path / "v0.ekb")
    v0 = read_bundle(tmp_path / "v0.ekb", tmp_path)
    devs = collect_devices([str(dev)])
    assert flash_many(devs, v0)[0].status == "flashed"
    good = _active_hashes(dev)

    import numpy as np

    from edgekit.flash.archive import save_npz

    rebuild_bundle(tmp_path / "v0.ekb", tmp_path / "bad.ekb",
                   lambda d: save_npz(d / "expected.npz", {k: v * 3 + 1 for k, v in np.load(d / "expected.npz").items()}))
    res = flash_many(devs, read_bundle(tmp_path / "bad.ekb", tmp_path))[0]
    assert (res.status, res.step) == ("failed", "selftest")
    assert _active_hashes(dev) == good

    def corrupt(device, step, info):
        if step == "verify":
            (stage,) = (dev / ".incoming").iterdir()
            (stage / "selftest.npz").write_bytes(b"junk")

    build_bundle(make_outdir(tmp_path / "out1", seed=1), tmp_path / "v1.ekb")
    res = flash_many(devs, read_bundle(tmp_path / "v1.ekb", tmp_path), emit=corrupt)[0]
    assert (res.status, res.step) == ("failed", "verify") and "selftest.npz" in res.reason
    assert _active_hashes(dev) == good


def test_current_that_is_not_a_link_is_left_alone(tmp_path):
    dev = tmp_path / "dev"
    (dev / "current").mkdir(parents=True)
    (dev / "current" / "keep.txt").write_text("user data")
    build_bundle(make_outdir(tmp_path / "out"), tmp_path / "v.ekb")
    res = flash_many(collect_devices([str(dev)]), read_bundle(tmp_path / "v.ekb", tmp_path))[0]
    assert (res.status, res.step) == ("failed", "inspect") and "not a symlink" in res.reason
    assert (dev / "current" / "keep.txt").read_text() == "user data"


@pytest.mark.parametrize("target", ["/etc", "../elsewhere/v", "versions/../../x", "versions"])
def test_current_linking_outside_versions_is_left_alone(tmp_path, target):
    from edgekit.flash.fleet import status_many

    dev = tmp_path / "dev"
    dev.mkdir()
    os.symlink(target, dev / "current")
    build_bundle(make_outdir(tmp_path / "out"), tmp_path / "v.ekb")
    devs = collect_devices([str(dev)])
    res = flash_many(devs, read_bundle(tmp_path / "v.ekb", tmp_path))[0]
    assert (res.status, res.step) == ("failed", "inspect") and "points outside" in res.reason, res.reason
    assert target in res.reason and "will not replace it" in res.reason
    assert rollback_many(devs)[0].step == "inspect"
    assert os.readlink(dev / "current") == target
    assert "points outside" in status_many(devs)[0]["note"]


def test_keep_never_drops_active_or_previous(tmp_path):
    dev = tmp_path / "dev"
    devs = collect_devices([str(dev)])
    vs = []
    for i in range(3):
        build_bundle(make_outdir(tmp_path / f"o{i}", seed=i), tmp_path / f"v{i}.ekb")
        vs.append(read_bundle(tmp_path / f"v{i}.ekb", tmp_path))
        assert flash_many(devs, vs[-1], opts=FlashOptions(keep=1))[0].status == "flashed"
    assert sorted(os.listdir(dev / "versions")) == sorted([vs[1].version, vs[2].version])
    assert rollback_many(devs)[0].version == vs[1].version


@pytest.mark.parametrize("addr,msg", [
    ("ftp://h/x", "unsupported scheme"), ("ssh://u@h", "install directory"), ("local", "not a device"),
    ("ssh://u@h:99999/x", "bad port"),
])
def test_bad_addresses(addr, msg):
    from edgekit.errors import UsageError

    with pytest.raises(UsageError, match=msg):
        collect_devices([addr])


@pytest.mark.parametrize("addr,hint", [
    ("ssh://user@127.0.0.1:2222", "no remote directory; give the install directory, "
                                  "e.g. ssh://user@127.0.0.1:2222/opt/models"),
    ("ssh://user@127.0.0.1:2222/", "no remote directory"),
    ("user@host", "no remote directory; an ssh device needs ssh://user@host[:port]/<install directory>"),
    ("user@host:2222", "e.g. ssh://user@host:2222/opt/models"),
    ("user@host:", "no remote directory"),
    ("user@host:/opt/models", "not an ssh:// address; write ssh://user@host/opt/models"),
])
def test_ssh_address_without_remote_directory_refused(tmp_path, monkeypatch, capsys, addr, hint):
    """user@host used to become a local folder named 'user@host', and the flash 'succeeded' there."""
    from edgekit.cli import main

    build_bundle(make_outdir(tmp_path / "out"), tmp_path / "v0.ekb")
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["flash", str(tmp_path / "v0.ekb"), "--device", addr])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"device address {addr!r}: " in err and hint in err, err
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("addr,path", [("./user@host", "user@host"), ("/mnt/a@b", "/mnt/a@b"),
                                       ("dir/x@y", "dir/x@y")])
def test_local_paths_with_at_sign_still_accepted(addr, path):
    (d,) = collect_devices([addr])
    assert (d.kind, d.path) == ("path", path)


def test_address_parsing_and_devices_file(tmp_path):
    from edgekit.flash import parse_device

    d = parse_device("ssh://pi@[::1]:2222/opt/edge%20models/")
    assert (d.kind, d.user, d.host, d.port, d.path) == ("ssh", "pi", "::1", 2222, "/opt/edge models")
    f = tmp_path / "fleet.txt"
    f.write_text("# boards\nssh://a@10.0.0.1/m  # lab\n\n/mnt/card\nssh://a@10.0.0.1/m\n")
    devs = collect_devices(devices_file=f)
    assert [(x.kind, x.path) for x in devs] == [("ssh", "/m"), ("path", "/mnt/card")]  # duplicates dropped


def test_unmounted_card_is_refused_and_nothing_is_created(tmp_path, capsys):
    """A missing parent means the card is not mounted: writing would fill this host's disk instead."""
    from edgekit.cli import main
    from edgekit.errors import UsageError
    from edgekit.flash.deploy import flash as deploy_flash
    from edgekit.flash.remote import run_runner
    from edgekit.flash.transport_path import PathTransport

    build_bundle(make_outdir(tmp_path / "out"), tmp_path / "v0.ekb")
    v0 = read_bundle(tmp_path / "v0.ekb", tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    dev = mnt / "notmounted" / "sdcard" / "models"
    ok = mnt / "models"  # a second, healthy device: a fleet with one bad path is refused as a whole
    for argv in (["flash", str(tmp_path / "v0.ekb"), "--device", str(ok), "--device", str(dev)],
                 ["flash", str(tmp_path / "out"), "--device", str(dev)],
                 ["flash", "--rollback", "--device", str(dev)]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(dev) in err and "is the device mounted?" in err, err
        assert list(mnt.iterdir()) == []
    with pytest.raises(UsageError, match="does not exist"):
        flash_many(collect_devices([str(dev)]), v0)
    res = deploy_flash(PathTransport(str(dev)), str(dev), v0, FlashOptions())  # the card pulled after the check
    assert (res.status, res.step) == ("failed", "inspect") and "is the device mounted?" in res.reason
    with pytest.raises(Exception, match="is the device mounted"):
        run_runner(str(dev), v0, ["selftest", "--bundle", "{dir}"])
    assert list(mnt.iterdir()) == []
    # a rollback needs the folder itself; a flash creates only that last folder
    with pytest.raises(SystemExit):
        main(["flash", "--rollback", "--device", str(ok)])
    assert "does not exist" in capsys.readouterr().err and not ok.exists()
    assert flash_many(collect_devices([str(ok)]), v0)[0].status == "flashed"
    assert sorted(p.name for p in mnt.iterdir()) == ["models"] and (ok / "current").is_symlink()


@pytest.mark.parametrize("kind", ["../../../evil_kind", "x/../../y"])
def test_bundle_with_path_in_kind_refused_previous_stays(tmp_path, capsys, kind):
    from edgekit.cli import main

    dev = tmp_path / "a" / "b" / "c" / "dev"  # deep, so '../../../' would still land inside tmp_path
    dev.parent.mkdir(parents=True)
    build_bundle(make_outdir(tmp_path / "out"), tmp_path / "v0.ekb")
    assert main(["flash", str(tmp_path / "v0.ekb"), "--device", str(dev), "--json"]) == 0
    capsys.readouterr()
    good = _active_hashes(dev)
    rebuild_bundle(tmp_path / "v0.ekb", tmp_path / "evil.ekb", _with_kind(kind))
    before = _tree(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["flash", str(tmp_path / "evil.ekb"), "--device", str(dev)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{tmp_path / 'evil.ekb'}: " in err and f"unsafe artifact kind {kind!r}" in err
    assert _tree(tmp_path) == before  # no version dir, nothing in .incoming, nothing outside the device
    assert _active_hashes(dev) == good


@pytest.mark.parametrize("version", ["../../../evil-0123", "x/../../y-0123", "..", "a/b", "v\n", "/abs"])
def test_deploy_layer_refuses_unsafe_version_names(tmp_path, version):
    """read_bundle refuses these; flash, the bench upload and the link switch must too, for a Bundle
    that did not come through it."""
    from edgekit.errors import EdgekitError, TargetError
    from edgekit.flash import Bundle
    from edgekit.flash.deploy import Layout, switch_current
    from edgekit.flash.remote import run_runner
    from edgekit.flash.transport_path import PathTransport

    dev = tmp_path / "a" / "b" / "c" / "dev"
    dev.parent.mkdir(parents=True)
    build_bundle(make_outdir(tmp_path / "out"), tmp_path / "v0.ekb")
    v0 = read_bundle(tmp_path / "v0.ekb", tmp_path)
    devs = collect_devices([str(dev)])
    assert flash_many(devs, v0)[0].status == "flashed"
    good, before = _active_hashes(dev), _tree(tmp_path)
    evil = Bundle(v0.root, {**v0.meta, "version": version})
    res = flash_many(devs, evil)[0]
    assert (res.status, res.step, res.version) == ("failed", "inspect", v0.version)
    assert "unsafe version name" in res.reason and len(res.reason.splitlines()) == 1
    res = flash_many(collect_devices([str(tmp_path / "fresh")]), evil)[0]
    assert (res.status, res.step) == ("failed", "inspect")
    with pytest.raises(TargetError, match="upload: unsafe version name"):
        run_runner(str(dev), evil, ["selftest", "--bundle", "{dir}"])
    with pytest.raises(EdgekitError, match="unsafe version name"):
        switch_current(PathTransport("dev"), Layout(str(dev)), version)
    assert _tree(tmp_path) == before  # not even an empty dir for the fresh device
    assert _active_hashes(dev) == good


def test_rollbacks_then_flash_keeps_keep_versions(tmp_path):
    dev = tmp_path / "dev"
    devs = collect_devices([str(dev)])
    vs = []
    for i in range(5):
        build_bundle(make_outdir(tmp_path / f"o{i}", seed=i), tmp_path / f"v{i}.ekb")
        vs.append(read_bundle(tmp_path / f"v{i}.ekb", tmp_path))
    keep3 = FlashOptions(keep=3)
    for b in vs[:3]:
        assert flash_many(devs, b, opts=keep3)[0].status == "flashed"
    assert rollback_many(devs)[0].version == vs[1].version
    assert rollback_many(devs)[0].version == vs[0].version
    assert rollback_many(devs)[0].reason == "no earlier version on the device to roll back to"  # never forth again
    res = flash_many(devs, vs[3], opts=keep3)[0]
    assert (res.status, res.previous) == ("flashed", vs[0].version)
    # v3 just installed, v0 active before it, then v2: the newest install of the rest, though rolled back from
    assert res.removed == [vs[1].version]
    assert sorted(os.listdir(dev / "versions")) == sorted([vs[0].version, vs[2].version, vs[3].version])
    assert rollback_many(devs)[0].version == vs[0].version  # back to what v3 replaced, not to a rolled-back one
    # one rollback (to v0, still active) then a flash: v4, v0 and v3 (installed after v2) stay
    res = flash_many(devs, vs[4], opts=keep3)[0]
    assert (res.status, sorted(res.removed)) == ("flashed", [vs[2].version])
    assert sorted(os.listdir(dev / "versions")) == sorted([vs[0].version, vs[3].version, vs[4].version])


def test_prune_leaves_entries_it_did_not_make(tmp_path):
    dev = tmp_path / "dev"
    (dev / "versions" / "lost+found").mkdir(parents=True)
    devs = collect_devices([str(dev)])
    for i in range(3):
        build_bundle(make_outdir(tmp_path / f"o{i}", seed=i), tmp_path / f"v{i}.ekb")
        res = flash_many(devs, read_bundle(tmp_path / f"v{i}.ekb", tmp_path), opts=FlashOptions(keep=1))[0]
        assert res.status == "flashed" and res.warnings == []
    assert "lost+found" in os.listdir(dev / "versions") and len(os.listdir(dev / "versions")) == 3


def test_status_of_a_missing_device_folder_is_an_error(tmp_path, capsys):
    from edgekit.cli import main

    # it printed an empty table with ok: true, as for a device with nothing on it
    with pytest.raises(SystemExit) as e:
        main(["devices", "status", "--device", str(tmp_path / "nonexist"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert e.value.code == 1 and out["ok"] is False
    assert "no such folder on the device" in out["devices"][0]["error"]


def _flashed_then_damaged(tmp_path):
    """A device with one version active whose model file was then cut short: (dev, bundle, devices,
    the model's path, its good bytes)."""
    dev = tmp_path / "dev"
    build_bundle(make_outdir(tmp_path / "out", seed=0), tmp_path / "v0.ekb")
    v0 = read_bundle(tmp_path / "v0.ekb", tmp_path)
    devs = collect_devices([str(dev)])
    assert flash_many(devs, v0)[0].status == "flashed"
    model = dev / "versions" / v0.version / "model.fp32.onnx"
    good = model.read_bytes()
    model.write_bytes(good[:100])
    (model.parent / "notes.txt").write_text("mine")  # the user's own file beside the model
    return dev, v0, devs, model, good


def test_reflashing_the_active_version_repairs_a_damaged_copy(tmp_path):
    # a corrupted model file on the card: flashing the same bundle again must fix it, not refuse
    dev, v0, devs, model, good = _flashed_then_damaged(tmp_path)
    res = flash_many(devs, v0)[0]
    assert (res.status, res.version) == ("flashed", v0.version), res.reason
    assert any("was damaged" in w and "model.fp32.onnx" in w for w in res.warnings)
    assert model.read_bytes() == good
    assert _active_hashes(dev) == (f"versions/{v0.version}", _want(v0))
    assert os.listdir(dev / ".incoming") == []  # the upload went into place
    # the damaged copy is kept where the warning says, with a file the user had put beside the model
    (kept,) = os.listdir(dev / "damaged")
    assert f"damaged/{kept}" in " ".join(res.warnings)
    assert (dev / "damaged" / kept / "notes.txt").read_text() == "mine"
    assert flash_many(devs, v0)[0].status == "up-to-date"


def test_repair_interrupted_between_its_renames_puts_the_damaged_copy_back(tmp_path, monkeypatch):
    # Ctrl-C (KeyboardInterrupt, not an Exception) between moving the damaged copy aside and moving the
    # fresh one in left `current` pointing at nothing
    from edgekit.flash import transport_path

    dev, v0, devs, model, good = _flashed_then_damaged(tmp_path)
    real = transport_path.PathTransport.rename

    def rename(self, src, dst):
        if ".incoming" in str(src):
            raise KeyboardInterrupt
        return real(self, src, dst)

    monkeypatch.setattr(transport_path.PathTransport, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        flash_many(devs, v0)
    assert os.readlink(dev / "current") == f"versions/{v0.version}"
    assert model.read_bytes() == good[:100]  # the damaged copy, back in place: no less than before


def test_repair_that_fails_its_selftest_keeps_the_damaged_active_copy(tmp_path):
    # the fresh copy is tested before the swap; when it fails, the device keeps exactly what it had
    dev, v0, devs, model, _ = _flashed_then_damaged(tmp_path)
    before = _tree(dev)
    res = flash_many(devs, v0, opts=FlashOptions(selftest_timeout=0.001))[0]
    assert (res.status, res.step) == ("failed", "selftest"), res

    def installed(tree):  # a timed-out upload stays in .incoming for the next try to resume
        return {k: v for k, v in tree.items() if not k.startswith(".incoming")}
    assert installed(_tree(dev)) == installed(before) and len(model.read_bytes()) == 100


def test_device_path_below_a_file_says_it_is_a_file_not_unmounted(tmp_path, capsys):
    # a regular file where a folder of the device path should be was reported as "does not exist
    # (is the device mounted?)": the user went looking for a mount instead of the stray file
    from edgekit.cli import main
    from edgekit.flash.deploy import flash as deploy_flash
    from edgekit.flash.transport_path import PathTransport

    out = make_outdir(tmp_path / "out")
    build_bundle(out, tmp_path / "v0.ekb")
    v0 = read_bundle(tmp_path / "v0.ekb", tmp_path)
    f = tmp_path / "afile"
    f.write_text("hi\n")
    for dev in (f / "sub", f / "sub" / "deeper"):
        for argv in (["flash", str(out), "--device", str(dev)], ["flash", "--rollback", "--device", str(dev)]):
            with pytest.raises(SystemExit) as e:
                main(argv)
            err = capsys.readouterr().err.strip()
            assert e.value.code == 2 and len(err.splitlines()) == 1, err
            assert f"{f} is a file, not a folder" in err and "mounted" not in err, err
        res = deploy_flash(PathTransport(str(dev)), str(dev), v0, FlashOptions())  # deploy._check_root
        assert (res.status, res.step) == ("failed", "inspect") and "is a file, not a folder" in res.reason, res
    assert f.read_text() == "hi\n"


def test_flash_over_a_deleted_active_version_does_not_name_it_previous(tmp_path):
    # the user deleted the running version's folder: `current` dangles. Flashing again must say so, and
    # must not offer that missing version as the one a rollback would return to
    dev = tmp_path / "dev"
    build_bundle(make_outdir(tmp_path / "out", seed=0), tmp_path / "v0.ekb")
    v0 = read_bundle(tmp_path / "v0.ekb", tmp_path)
    devs = collect_devices([str(dev)])
    assert flash_many(devs, v0)[0].status == "flashed"
    import shutil

    shutil.rmtree(dev / "versions" / v0.version)
    res = flash_many(devs, v0)[0]
    assert (res.status, res.version, res.previous) == ("flashed", v0.version, None), res.reason
    assert any(f"active version {v0.version} was missing" in w for w in res.warnings), res.warnings
    assert _active_hashes(dev) == (f"versions/{v0.version}", _want(v0))


def test_rollback_from_a_deleted_active_version_warns_and_names_no_previous(tmp_path):
    # flash warned about a `current` pointing at a deleted directory; rollback named that version
    # "previous" ('from fp32-...') without a word
    import shutil

    dev = tmp_path / "dev"
    devs = collect_devices([str(dev)])
    bundles = bundles_for_seeds(tmp_path, (0, 1))
    for b in bundles:
        assert flash_many(devs, b)[0].status == "flashed"
    shutil.rmtree(dev / "versions" / bundles[1].version)
    (res,) = rollback_many(devs)
    assert (res.status, res.version, res.previous) == ("rolled-back", bundles[0].version, None), res.reason
    assert any(f"active version {bundles[1].version} was missing" in w for w in res.warnings), res.warnings
