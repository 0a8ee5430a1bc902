"""The training loop's shortcuts for one process change no number: calling the model without Fabric's wrapper gives
the same weights bit for bit; ``sgd`` (the fused kernel) gives the foreach update within float rounding, and falls
back to foreach where torch has no fused kernel; a stream's batches are the same rows and labels either way."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.adapt.test_methods import SRC, TGT
from transferkit.adapt import AdaptConfig, DomainAdapter
from transferkit.train import loop as loop_mod
from transferkit.train.streams import TensorStream

FAST = AdaptConfig(steps=30, batch_size=16, eval_every=15, bottleneck=16, lr=0.03)


def _fit_state(method: str) -> tuple[dict[str, torch.Tensor], list]:
    da = DomainAdapter(None, method, config=FAST).fit((SRC[0], SRC[1].astype(str)), TGT[0])
    return {k: v.clone() for k, v in da.fit_.net.state_dict().items()}, da.fit_.history


@pytest.mark.parametrize("method", ["dann", "source-only"])
def test_calling_the_model_without_fabrics_wrapper_changes_nothing(method, monkeypatch):
    calls = []
    real = loop_mod._Loop._forward_model

    def spy(self):
        got = real(self)
        calls.append(got is self.container)
        return got

    monkeypatch.setattr(loop_mod._Loop, "_forward_model", spy)
    fast_state, fast_hist = _fit_state(method)
    assert calls and all(calls)  # one process at 32-bit: the container itself is called
    monkeypatch.setattr(loop_mod._Loop, "_forward_model", lambda self: self.model)  # Fabric's wrapper, as before
    slow_state, slow_hist = _fit_state(method)
    assert fast_state.keys() == slow_state.keys()
    for k in fast_state:
        assert torch.equal(fast_state[k], slow_state[k]), k
    assert [h["dev"] for h in fast_hist] == [h["dev"] for h in slow_hist]


def _params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in [(16, 12), (16,), (3, 16), (3,)]]


def _train(opt_factory, steps: int = 25) -> list[torch.Tensor]:
    ps = _params(0)
    opt = opt_factory([{"params": ps[:2], "lr": 0.01}, {"params": ps[2:], "lr": 0.1}])
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return [p.detach() for p in ps]


def test_sgd_matches_the_foreach_update_and_falls_back(monkeypatch):
    opts = dict(momentum=0.9, weight_decay=5e-4, nesterov=True)
    ours = _train(lambda g: loop_mod.sgd(g, **opts))
    ref = _train(lambda g: torch.optim.SGD(g, foreach=True, **opts))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ours[0], _params(0)[0])  # it did train

    real = torch.optim.SGD

    def no_fused(groups, **kw):
        if kw.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be on a supported device")
        return real(groups, **kw)

    monkeypatch.setattr(torch.optim, "SGD", no_fused)
    opt = loop_mod.sgd([{"params": _params(0), "lr": 0.1}], **opts)
    assert opt.defaults["foreach"] is True and not opt.defaults.get("fused")


def test_tensor_stream_batches_are_the_rows_and_labels_asked_for():
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = np.arange(20) % 3
    st = TensorStream("s", x, y, batch_size=4)
    st.setup(SimpleNamespace(device=torch.device("cpu")), 0)
    batches = [np.array([5, 0, 19, 7]), np.array([3, 3, 11, 2])]
    got = list(st.loader(batches, ["train"], 0, 0, 0, 1))
    for b, want in zip(got, batches):
        assert torch.equal(b.x["train"], torch.from_numpy(x[want])) and torch.equal(b.y, torch.from_numpy(y[want]))
        assert b.index.tolist() == want.tolist() and b.global_size == 4
    two = list(st.loader(batches, ["train"], 0, 0, 1, 2))  # the second of two processes: its half of each batch
    assert [b.index.tolist() for b in two] == [[19, 7], [11, 2]]
