"""Inference engines: ONNX Runtime matches eager PyTorch and shares its cache key, other precisions get their own, auto
chooses only engines that pass the check and remembers it, workers are sized from measured rates, and a 2-process
extraction writes the same bits as one process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import TINY
from transferkit.backbones import create_backbone
from transferkit.data import load_builtin
from transferkit.errors import TransferkitError
from transferkit.features import FeatureStore
from transferkit.features import engines as E
from transferkit.features.distributed import extract_distributed, rank_batches
from transferkit.features.store import size_workers

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def tiny():
    return create_backbone(TINY)


@pytest.fixture(scope="module")
def digits24():
    return load_builtin("digits").subset(range(24))


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory):
    """One cache for the ONNX tests of this module: the tiny backbone is exported once."""
    return tmp_path_factory.mktemp("engines-cache")


def test_tolerance_rule_by_hand():
    ref = np.array([[2.0, -4.0]])  # max |eager| = 4 -> tolerance 1e-4 + 1e-3 * 4 = 0.0041
    ok, diff, tol = E.features_close(ref, ref + np.array([[0.004, 0.0]]))
    assert ok and diff == pytest.approx(0.004) and tol == pytest.approx(0.0041)
    ok, diff, _ = E.features_close(ref, ref + np.array([[0.0, -0.0042]]))
    assert not ok and diff == pytest.approx(0.0042)
    assert not E.features_close(ref, np.zeros((1, 3)))[0]  # another shape never matches


def test_onnx_features_match_eager_and_share_the_cache_key(tiny, digits24, shared_root):
    store = FeatureStore(shared_root)
    f_onnx = store.get(tiny, digits24, batch_size=8, num_workers=0, device="cpu", engine="onnx")
    assert f_onnx.extracted == 24
    eager = FeatureStore(shared_root / "fresh").get(tiny, digits24, batch_size=8, num_workers=0, device="cpu",
                                                   engine="torch")
    ok, diff, tol = E.features_close(np.asarray(eager.X), np.asarray(f_onnx.X))
    assert ok, (diff, tol)
    assert not np.array_equal(np.asarray(eager.X), np.asarray(f_onnx.X)) or diff == 0.0
    # a verified engine at precision 32 gives the same features: the torch engine reads what ONNX wrote
    again = store.get(tiny, digits24, batch_size=8, num_workers=0, device="cpu", engine="torch")
    assert again.extracted == 0 and again.path == f_onnx.path
    check = json.loads(next((E.engine_folder(shared_root, tiny)).glob("check-onnxruntime-32-*.json")).read_text())
    assert check["match"] and check["max_abs_diff"] <= check["tolerance"]


def test_int8_gets_its_own_key_and_measured_drift(tiny, digits24, shared_root):
    store = FeatureStore(shared_root)
    f32 = store.get(tiny, digits24, batch_size=8, num_workers=0, device="cpu", engine="torch")
    f8 = store.get(tiny, digits24, batch_size=8, num_workers=0, device="cpu", engine="onnx", feature_precision="int8")
    assert f8.extracted == 24 and f8.path.parent.parent != f32.path.parent.parent  # never mixed with fp32 features
    meta = json.loads((f8.path.parent.parent / "backbone.json").read_text())
    assert meta["engine"] == {"engine": "onnx", "precision": "int8"}
    a, b = np.asarray(f32.X, np.float64), np.asarray(f8.X, np.float64)
    assert not np.allclose(a, b)  # quantisation changes the features...
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.9  # ...but keeps them close to the fp32 ones


def test_auto_skips_the_check_for_small_jobs_and_remembers_it_for_large_ones(tiny, tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    small = E.resolve_engine(tiny, "auto", device=cpu, cache_root=tmp_path, items=E.AUTO_MIN_ITEMS - 1)
    assert small.engine.variant == "eager" and not (tmp_path / "engines").exists()
    first = E.resolve_engine(tiny, "auto", device=cpu, cache_root=tmp_path, items=10_000)
    rec = json.loads(next((tmp_path / "engines").rglob("auto-cpu-*.json")).read_text())
    assert rec["choice"] == first.engine.variant
    assert {c["variant"] for c in rec["candidates"]} == {"eager", "channels-last", "onnxruntime"}
    chosen = next(c for c in rec["candidates"] if c["variant"] == rec["choice"])
    assert chosen["match"] and chosen["items_per_s"] == max(c["items_per_s"] for c in rec["candidates"] if c["match"])

    def no_second_check(*a, **k):
        raise AssertionError("the check ran again")

    monkeypatch.setattr(E, "_check", no_second_check)
    again = E.resolve_engine(tiny, "auto", device=cpu, cache_root=tmp_path, items=10_000)
    assert again.engine.variant == first.engine.variant  # remembered, also for a small job now
    assert E.resolve_engine(tiny, "auto", device=cpu, cache_root=tmp_path, items=1).engine.variant == rec["choice"]


def test_an_engine_that_does_not_match_is_never_chosen_and_keyed_apart(tiny, digits24, tmp_path, monkeypatch):
    real_call = E.OnnxEngine.__call__
    monkeypatch.setattr(E.OnnxEngine, "__call__", lambda self, x: real_call(self, x) + 1.0)  # a broken export
    choice = E.resolve_engine(tiny, "auto", device=torch.device("cpu"), cache_root=tmp_path, items=10_000)
    assert choice.engine.name == "torch"
    rec = json.loads(next((tmp_path / "engines").rglob("auto-cpu-*.json")).read_text())
    assert [c["match"] for c in rec["candidates"] if c["variant"] == "onnxruntime"] == [False]
    store = FeatureStore(tmp_path)
    with pytest.warns(Warning, match="differs from eager"):
        f = store.get(tiny, digits24, batch_size=8, num_workers=0, device="cpu", engine="onnx")
    plain = store.get(tiny, digits24, batch_size=8, num_workers=0, device="cpu", engine="torch")
    assert plain.extracted == 24 and plain.path != f.path  # the unverified features live under their own key


def test_bad_engine_options_are_clear_errors(tiny, digits24, tmp_path):
    with pytest.raises(TransferkitError, match="engine='fast' is not an engine; choose one of auto, torch, onnx"):
        FeatureStore(tmp_path).get(tiny, digits24, engine="fast")
    with pytest.raises(TransferkitError, match="feature_precision='8' is not a feature precision; choose one of 32, bf16, 16, int8"):
        FeatureStore(tmp_path).get(tiny, digits24, feature_precision="8")


def test_cli_engine_flag_errors_name_the_flag(tmp_path):
    from typer.testing import CliRunner

    from transferkit.cli import app

    r = CliRunner().invoke(app, ["extract", "digits", "-b", TINY, "--engine", "fast", "-q"])
    assert r.exit_code == 2 and "--engine fast is not an engine" in r.output
    r = CliRunner().invoke(app, ["extract", "digits", "-b", TINY, "--num-nodes", "2", "--device", "cpu", "-q"])
    assert r.exit_code == 2 and "--num-nodes" in r.output and "torchrun" in r.output


def test_workers_sized_from_measured_rates(tiny, digits24, monkeypatch):
    from transferkit.features import store as S

    class Fast:  # an engine 1000x faster than decoding: as many workers as the CPUs allow
        backbone, items_per_s = tiny, 1e9

    tf = tiny.transform()
    pos = np.arange(24)
    monkeypatch.setattr(S, "_cpus", lambda: 5)
    assert size_workers(Fast(), digits24, pos, tf, 8) == 0  # a small job is not measured: the decode-ahead thread
    monkeypatch.setattr(S, "SIZE_WORKERS_MIN_ITEMS", 10)
    assert size_workers(Fast(), digits24, pos, tf, 8) == 4
    monkeypatch.setattr(S, "_cpus", lambda: 1)
    assert size_workers(Fast(), digits24, pos, tf, 8) == 0  # one CPU: load in the main process

    class Slow:  # one decoder keeps up: no worker process, the thread makes batches ahead
        backbone, items_per_s = tiny, 1e-3

    monkeypatch.setattr(S, "_cpus", lambda: 16)
    assert size_workers(Slow(), digits24, pos, tf, 8) == 0


def test_decode_ahead_keeps_order_raises_and_stops():
    import threading
    import time

    from transferkit.features.store import _ahead

    made = []

    def batches(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"batch {i} is broken")
            made.append(i)
            yield i

    assert list(_ahead(batches(7))) == list(range(7))
    got = []
    with pytest.raises(ValueError, match="batch 3 is broken"):
        for b in _ahead(batches(6, fail_at=3)):
            got.append(b)
    assert got == [0, 1, 2]  # every batch made before the failure is delivered, in order
    made.clear()
    it = _ahead(batches(1000), depth=2)
    assert next(it) == 0
    it.close()  # leaving the loop early stops the thread: it does not make the other 998 batches
    time.sleep(0.3)
    assert len(made) <= 4 and not any(t.name == "transferkit-decode-ahead" for t in threading.enumerate())


def test_rank_batches_by_hand():
    pos = np.arange(10)
    assert rank_batches(pos, 3, 0, 2).tolist() == [0, 1, 2, 6, 7, 8]
    assert rank_batches(pos, 3, 1, 2).tolist() == [3, 4, 5, 9]
    assert rank_batches(pos, 4, 2, 3).tolist() == [8, 9]
    with pytest.raises(TransferkitError):
        rank_batches(pos, 3, 2, 2)


def test_two_processes_extract_the_same_bits_as_one(image_folder, tmp_path):
    two = extract_distributed(str(image_folder), TINY, devices=2, accelerator="cpu", cache_dir=tmp_path / "two",
                              batch_size=5, num_workers=0, engine="torch")
    assert two.extracted == 36
    shards = list((tmp_path / "two").glob("*/shards/*.npz"))
    assert len(shards) >= 2  # both ranks wrote shards
    from transferkit.features.featureset import build_featureset

    one = build_featureset(str(image_folder), create_backbone(TINY), cache_dir=tmp_path / "one", labels="ignore",
                           split=False, batch_size=5, num_workers=0, device="cpu", engine="torch")
    assert one.extracted == 36
    assert np.array_equal(np.asarray(one.X), np.asarray(two.X))


def test_split_eval_transform_gives_the_same_bits_faster_to_batch(tiny):
    from PIL import Image

    from transferkit.features.store import CollateItems, split_eval_transform

    full = tiny.transform()
    item, norm = split_eval_transform(full)
    assert norm is not None
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (20 + 7 * k, 31, 3), dtype=np.uint8)) for k in range(4)]
    parts = [item(x) for x in imgs]
    assert [p.dtype for p in parts] == [torch.uint8] * 4
    batch = CollateItems(tiny, norm)([(i, p, None) for i, p in enumerate(parts)])[1]
    assert torch.equal(batch, torch.stack([full(x) for x in imgs]))
    # an item that took the float path (another image mode) is kept as it is beside normalised uint8 items
    mixed = CollateItems(tiny, norm)([(0, parts[0], None), (1, full(imgs[1]), None)])[1]
    assert torch.equal(mixed, batch[:2])
    assert item.__class__(item.geometry, lambda x: "float path")(imgs[0].convert("L")) == "float path"
    ident = lambda x: x  # noqa: E731
    assert split_eval_transform(ident) == (ident, None)  # not a Compose: kept whole


def test_cache_clear_removes_the_exported_models_and_checks(tiny, digits24, tmp_path):
    store = FeatureStore(tmp_path)
    store.get(tiny, digits24, batch_size=8, num_workers=0, device="cpu", engine="onnx")
    folder = E.engine_folder(tmp_path, tiny)
    (folder / "notes.txt").write_text("mine")  # a user's file is kept
    names = {f.name for g in store.clear_plan(TINY) for f in g["files"] if f.parent == folder}
    assert "model.onnx" in names and any(n.startswith("check-") for n in names) and "notes.txt" not in names
    assert not {f.name for g in store.clear_plan("lite0") for f in g["files"] if f.parent == folder}
    store.clear(TINY)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_auto_times_the_engines_on_the_users_own_data(tiny, tmp_path, monkeypatch):
    seen = {}
    real = E._interleaved_speeds

    def spy(engines, inputs, rounds=3):
        seen["shape"] = tuple(inputs.shape)
        return real(engines, inputs, rounds=1)

    monkeypatch.setattr(E, "_interleaved_speeds", spy)
    s = int(tiny.preprocessing.input_size)
    batch = torch.randn(5, 3, s, s)
    E.resolve_engine(tiny, "auto", device=torch.device("cpu"), cache_root=tmp_path, items=10_000,
                     sample=lambda: batch)
    assert seen["shape"] == (5, 3, s, s)  # not the fixed check batch of 8
    E.resolve_engine(tiny, "auto", device=torch.device("cpu"), cache_root=tmp_path / "b", items=10_000,
                     sample=lambda: (_ for _ in ()).throw(OSError("unreadable")))
    assert seen["shape"][0] == E._CHECK_BATCH  # a failing sample falls back to the fixed batch


def test_texts_are_extracted_shortest_first_images_in_order(digits24):
    from transferkit.data import from_arrays
    from transferkit.features.store import _extraction_order

    texts = from_arrays(["a much longer text here", "short", "mid length", "x", "short"])
    assert _extraction_order(texts, np.arange(5)).tolist() == [3, 1, 4, 2, 0]  # stable among equal lengths
    assert _extraction_order(digits24, np.arange(24)[::-1]).tolist() == list(range(24))[::-1]


def test_onnx_session_shared_per_model_file(tiny, digits24, shared_root, tmp_path):
    """A second cache folder that reaches the same exported model (a symlinked ``engines/``) reuses the session:
    no second session build and first-run warm-up in one process."""
    FeatureStore(shared_root).get(tiny, digits24, batch_size=8, num_workers=0, device="cpu", engine="onnx")
    (tmp_path / "engines").symlink_to(shared_root / "engines")
    cpu = torch.device("cpu")
    a = E.OnnxEngine(tiny, E.engine_folder(shared_root, tiny), cpu)
    b = E.OnnxEngine(tiny, E.engine_folder(tmp_path, tiny), cpu)
    assert a.path != b.path and a._session() is b._session()


def test_onnx_sessions_are_bounded(tiny, digits24, tmp_path):
    """Each augmented view is its own model file; the sessions kept alive stay at MAX_SESSIONS, least recently used
    dropped first (one session per view once filled 24 GB over clipart's 17 views)."""
    E._SESSIONS.clear()
    store = FeatureStore(tmp_path)
    views = [tiny.with_view("weak", k, 0) for k in range(E.MAX_SESSIONS + 2)]
    first = store.get(views[0], digits24, batch_size=8, num_workers=0, device="cpu", engine="onnx")
    for bb in views[1:]:
        store.get(bb, digits24, batch_size=8, num_workers=0, device="cpu", engine="onnx")
        assert 1 <= len(E._SESSIONS) <= E.MAX_SESSIONS
    assert len({k[0] for k in E._SESSIONS}) == E.MAX_SESSIONS  # the newest model files
    assert str((E.engine_folder(tmp_path, views[-1]) / "model.onnx").resolve()) in {k[0] for k in E._SESSIONS}
    # an evicted model's session is rebuilt on demand and gives the same features
    E._SESSIONS.clear()
    again = FeatureStore(tmp_path / "again").get(views[0], digits24, batch_size=8, num_workers=0, device="cpu",
                                                 engine="onnx")
    np.testing.assert_allclose(again.X, first.X, atol=1e-5)
