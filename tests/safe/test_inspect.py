"""``inspect_backbone``: digests against the known ones, and a trigger sweep that flags a backdoored LeNet but not a
clean one trained the same way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from transferkit.backbones import create_backbone
from transferkit.safe.inspect import inspect_backbone, trigger_sweep
from transferkit.safe.triggers import Patch, attack_success_rate, image_batches, poison

TRIGGER = Patch(size=0.15, colour=(255, 255, 255), position="br")


def _mnist(n: int = 1000):
    from transferkit.data.builtin import load_builtin

    src = load_builtin("mnist5k")
    idx = np.random.default_rng(0).permutation(len(src))[:n]
    return np.stack([src.items[i] for i in idx]), src.encoded_labels()[idx]


def _train_lenet(X: np.ndarray, y: np.ndarray, epochs: int = 3, seed: int = 0):
    """A LeNet + linear head trained with plain SGD steps (a tiny fixture; the engine is tested elsewhere)."""
    torch.manual_seed(seed)
    bb = create_backbone("lenet-fc")
    head = nn.Linear(bb.num_features, 10)
    xs = torch.cat(list(image_batches(bb.transform("eval"), list(X))))
    yt = torch.as_tensor(y, dtype=torch.long)
    opt = torch.optim.Adam([*bb.parameters(), *head.parameters()], lr=2e-3)
    bb.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for b in torch.randperm(len(xs), generator=g).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(head(bb(xs[b])), yt[b]).backward()
            opt.step()
    bb.eval()
    return bb, head


def make_nets() -> dict:
    """A LeNet-fc backdoored by BadNets poisoning (20% of its images carry a white patch, relabelled 0) and a clean
    one trained the same way, plus clean test images and the backdoor's attack success rate."""
    X, y = _mnist()
    train, test = slice(0, 800), slice(800, None)
    Xp, yp, _ = poison(X[train], y[train], 0.2, target=0, patch=TRIGGER, seed=0)
    bad, bad_head = _train_lenet(Xp, yp)
    clean, _ = _train_lenet(X[train], y[train])
    with torch.no_grad():
        trig = torch.cat([bad_head(bad(x)).argmax(1) for x in image_batches(bad.transform("eval"),
                                                                             list(TRIGGER.apply(X[test])))])
    return {"bad": bad, "clean": clean, "images": X[test][:80], "asr": attack_success_rate(trig.numpy(), y[test], 0)}


@pytest.fixture(scope="module")
def nets():
    torch.set_num_threads(1)
    return make_nets()


@pytest.mark.slow  # trains two small networks
def test_the_backdoored_lenet_is_flagged_and_the_clean_one_is_not(nets):
    assert nets["asr"] > 0.9  # the fixture really is backdoored
    bad = trigger_sweep(nets["bad"], nets["images"])
    clean = trigger_sweep(nets["clean"], nets["images"])
    # the trigger's own patch pushes every image's features the same long way; nothing does so on the clean net
    assert bad[0].flagged and bad[0].patch.endswith("white at br") and bad[0].push > 1.0
    assert not any(r.flagged for r in clean) and clean[0].push < 0.2


def test_digest_of_the_shipped_lite0_matches_and_a_changed_file_does_not(tmp_path):
    r = inspect_backbone("lite0")
    assert r.digest_status == "match" and r.file_sha256 == r.known_sha256 and r.sweep == []
    lenet = create_backbone("lenet")
    lenet.save(tmp_path / "bb")
    r = inspect_backbone(f"file:{tmp_path / 'bb'}")
    assert r.digest_status == "no reference digest" and len(r.file_sha256) == 64
    assert "does not prove the absence" in r.limits


@pytest.mark.slow
def test_cli_flags_the_backdoored_file_with_exit_code_3(nets, tmp_path):
    from tests.test_cli import tk

    nets["bad"].save(tmp_path / "bad")
    bad = tk("inspect-backbone", f"file:{tmp_path / 'bad'}", "--data", "mnist5k", "--images", "60")
    assert bad.returncode == 3, bad.stdout + bad.stderr
    assert "suspicious" in bad.stdout and "white at br" in bad.stdout and "does not prove" in bad.stdout
