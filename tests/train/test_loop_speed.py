"""The training loop's shortcuts for one process change no number: calling the model without Fabric's wrapper gives
the same weights bit for bit; a stream's batches are the rows and labels asked for, on one process and on two."""

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


@pytest.mark.parametrize("mapped", [False, True])
def test_tensor_stream_batches_are_the_rows_and_labels_asked_for(mapped, tmp_path):
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = np.arange(20) % 3
    if mapped:  # features cached on disk: read through the memmap in sorted order, returned in the batch's order
        np.save(tmp_path / "x.npy", x)
        st = TensorStream("s", np.load(tmp_path / "x.npy", mmap_mode="r"), y, batch_size=4)
        assert st._mapped
    else:
        st = TensorStream("s", x, y, batch_size=4)
    st.setup(SimpleNamespace(device=torch.device("cpu")), 0)
    batches = [np.array([5, 0, 19, 7]), np.array([3, 3, 11, 2])]
    got = list(st.loader(batches, ["train"], 0, 0, 0, 1))
    for b, want in zip(got, batches):
        assert torch.equal(b.x["train"], torch.from_numpy(x[want])) and torch.equal(b.y, torch.from_numpy(y[want]))
        assert b.index.tolist() == want.tolist() and b.global_size == 4
    two = list(st.loader(batches, ["train"], 0, 0, 1, 2))  # the second of two processes: its half of each batch
    assert [b.index.tolist() for b in two] == [[19, 7], [11, 2]]
