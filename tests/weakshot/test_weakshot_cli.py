"""``transferkit weakshot``: wrong settings fail at once with one line naming the flag."""

from __future__ import annotations

from tests.test_cli import assert_user_error, tk


def test_weakshot_refuses_both_kinds_of_noise_and_bad_values(tmp_path):
    assert_user_error(tk("weakshot", "clipart", "--noise", "0.3", "--noisy-labels", "web", "--out", tmp_path / "a"),
                      "--noisy-labels", "--noise", "not both")
    assert_user_error(tk("weakshot", "clipart", "--noise", "1.5"), "--noise must be in [0, 1); got 1.5")
    assert_user_error(tk("weakshot", "clipart", "--noise", "0.3", "--methods", "plain,simtrasn", "--out",
                         tmp_path / "b"), "unknown weak-shot method 'simtrasn'", "simtrans")
    assert_user_error(tk("weakshot", "clipart", "--noise", "0.3", "--noise-kind", "swap", "--out", tmp_path / "c"),
                      "--noise-kind must be one of flip, outlier, mixed")
    assert_user_error(tk("weakshot", "clipart", "--noise", "0.3", "--base", "animals_birds,dragons", "--out",
                         tmp_path / "d"), "base class(es) ['dragons'] are not in the data")
    assert_user_error(tk("weakshot", "clipart", "--noise", "0.3", "--sim-blend", "1.2"),
                      "--sim-blend must be in [0, 1]; got 1.2")
    assert_user_error(tk("weakshot", "clipart", "--noise", "0.3", "--drop", "1"), "--drop must be in [0, 1); got 1")
    assert_user_error(tk("weakshot", "clipart", "--noise", "0.3", "--drop-rule", "median"),
                      "--drop-rule must be one of lowest, confusable, mixture, claimed (got 'median')")
    # a rule without a share to apply it to would be ignored: refused instead
    assert_user_error(tk("weakshot", "clipart", "--noise", "0.3", "--drop", "0", "--drop-rule", "confusable"),
                      "--drop-rule confusable picks which of the --drop share", "--drop 0 leaves none out")
    assert_user_error(tk("weakshot", "clipart", "--noise", "0.3", "--drop", "0", "--drop-rule", "claimed"),
                      "--drop-rule claimed picks which of the --drop share", "--drop 0 leaves none out")
    assert_user_error(tk("weakshot", "clipart", "--noise", "0.3", "--graph-on", "logits"),
                      "--graph-on must be one of features, outputs (got 'logits')")
