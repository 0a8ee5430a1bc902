"""ReMoS coverage counts and weight scores on a hand-made net, checked against hand computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transferkit.errors import TransferkitError
from transferkit.safe import choose_prune, neuron_coverage, remos_prune, remos_scores


def _net() -> nn.Sequential:
    """conv1: 2 -> 2 channels (identity), conv2: 2 -> 3 channels; 1x1 kernels, no bias, no activation."""
    net = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), nn.Conv2d(2, 3, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1., 0.], [0., 1.]]).view(2, 2, 1, 1))
        net[1].weight.copy_(torch.tensor([[1., 0.], [0., 1.], [-1., -1.]]).view(3, 2, 1, 1))
    return net


# three 1x1 samples with 2 channels
X = torch.tensor([[1., 0.], [0., 1.], [3., 1.]]).view(3, 2, 1, 1)


def test_coverage_counts_match_hand_computation():
    # per sample, min-max scale over the layer's whole tensor, covered when > 0.5:
    # conv1 in/out: [1,0] -> [1,0]; [0,1] -> [0,1]; [3,1] -> [1,0]        => counts [2, 1]
    # conv2 out: [1,0,-1] -> [1,.5,0] -> [1,0,0]; [0,1,-1] -> [.5,1,0] -> [0,1,0]; [3,1,-4] -> [1,5/7,0] -> [1,1,0]
    cov = neuron_coverage(_net(), [X[:2], X[2:]])
    assert list(cov) == ["0", "1"]
    assert cov["0"].inputs.tolist() == [2, 1] and cov["0"].outputs.tolist() == [2, 1]
    assert cov["1"].inputs.tolist() == [2, 1] and cov["1"].outputs.tolist() == [2, 2, 0]
    assert cov["1"].samples == 3


def test_scores_are_coverage_rank_minus_magnitude_rank():
    net = _net()
    scores = remos_scores(net, neuron_coverage(net, [X]))
    # pair coverage in[i] + out[o], listed input-major: conv1 (4,3,3,2), conv2 (4,4,2,3,3,1); stable ascending ranks
    # give conv1 [[7,4],[3,1]], conv2 [[8,5],[9,6],[2,0]] (out x in). |w| = conv1 [1,0,0,1], conv2 [1,0,0,1,1,1]:
    # magnitude ranks conv1 [[4,0],[1,5]], conv2 [[6,2],[3,7],[8,9]].
    assert scores["0"].view(2, 2).tolist() == [[3, 4], [2, -4]]
    assert scores["1"].view(3, 2).tolist() == [[2, 3], [6, -1], [-6, -9]]


def test_prune_zeroes_the_lowest_scores():
    net = _net()
    report = remos_prune(net, neuron_coverage(net, [X]), prune=0.3)
    # the three lowest scores: -9, -6 (conv2's never-covered, large output channel 2) and -4 (conv1 w[1,1])
    assert report.pruned == 3 and report.total == 10 and report.per_layer == {"0": 1, "1": 2}
    assert net[0].weight.view(2, 2).tolist() == [[1, 0], [0, 0]]
    assert net[1].weight.view(3, 2).tolist() == [[1, 0], [0, 1], [0, 0]]


def test_depthwise_weights_use_their_own_input_channel():
    net = nn.Sequential(nn.Conv2d(2, 2, 1, groups=2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([2., 1.]).view(2, 1, 1, 1))
    x = torch.tensor([[1., 0.]]).view(1, 2, 1, 1)  # in covered [1,0]; out [2,0] -> covered [1,0]
    cov = neuron_coverage(net, [x])
    scores = remos_scores(net, cov)
    # pair coverage: channel 0: 1+1 = 2, channel 1: 0+0 = 0 -> coverage ranks [1, 0]; magnitude ranks [1, 0]
    assert scores["0"].view(-1).tolist() == [0, 0]


def test_bad_input_is_a_clear_error():
    with pytest.raises(TransferkitError, match="is not a share in"):
        remos_prune(_net(), neuron_coverage(_net(), [X]), prune=1.5)
    with pytest.raises(TransferkitError, match="no Conv2d or Linear"):
        neuron_coverage(nn.ReLU(), [torch.zeros(1, 2)])


def test_linear_units_are_neurons_of_1x1_kernels():
    net = nn.Sequential(nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1., 0.], [0., 3.]]))
    x = torch.tensor([[1., 0.], [0., 1.]])  # in covered [1,0], [0,1]; out [1,0] -> [1,0], [0,3] -> [0,1]
    cov = neuron_coverage(net, [x])
    assert cov["0"].inputs.tolist() == [1, 1] and cov["0"].outputs.tolist() == [1, 1]
    report = remos_prune(net, cov, prune=0.25)
    # equal coverage: coverage ranks 0..3 in input-major order -> w[0,0]=0, w[1,0]=1, w[0,1]=2, w[1,1]=3;
    # magnitude ranks |w| = [1,0,0,3] -> [2,0,1,3]; scores [[-2, 2], [0, 0]]: w[0,0] goes
    assert report.pruned == 1 and net[0].weight.tolist() == [[0, 0], [0, 3]]


def test_choose_prune_is_the_one_standard_error_rule():
    # best 87.5% on 200 items: SE = sqrt(.875 * .125 / 200) = 0.023385, bar 0.851615
    acc = {0.0: 0.875, 0.1: 0.875, 0.2: 0.850, 0.3: 0.860}
    assert choose_prune(acc, 200) == 0.3  # the largest within the bar, even though 0.2 misses it
    assert choose_prune({**acc, 0.3: 0.851}, 200) == 0.1  # 0.851 < 0.851615: just outside
    assert choose_prune({**acc, 0.3: 0.852}, 200) == 0.3  # just inside
    # with 2000 items the SE shrinks to 0.74 points: only the ratios at 86.8% or better remain
    assert choose_prune(acc, 2000) == 0.1
    assert choose_prune({0.0: 0.9, 0.2: 0.5}, 200) == 0.0  # nothing pruned is close enough: plain fine-tuning
    with pytest.raises(TransferkitError, match="n_val=0"):
        choose_prune(acc, 0)
    with pytest.raises(TransferkitError, match="prune ratios in"):
        choose_prune({0.0: 0.9, 1.5: 0.8}, 200)
