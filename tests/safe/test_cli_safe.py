"""``fit --safe remos --prune``: refusals that need no training, in the CLI's words."""

from __future__ import annotations

from tests.test_cli import assert_user_error, tk


def test_safe_with_probe_is_refused():
    assert_user_error(tk("fit", "digits", "-b", "lenet", "--safe", "remos"), "--safe remos", "--strategy finetune")


def test_prune_without_safe_is_refused():
    assert_user_error(tk("fit", "digits", "-b", "lenet", "--strategy", "finetune", "--prune", "0.1"), "--safe remos")


def test_bad_prune_is_named_with_its_flag():
    assert_user_error(tk("fit", "digits", "-b", "lenet", "--strategy", "finetune", "--safe", "remos", "--prune", "2"),
                      "--prune 2.0 is not a share in (0, 1)")
    assert_user_error(tk("fit", "digits", "-b", "lenet", "--strategy", "finetune", "--safe", "bogus"),
                      "--safe bogus is not a safe-transfer method; use one of: remos")


def test_safe_with_auto_is_refused():
    assert_user_error(tk("fit", "digits", "-b", "lenet", "--strategy", "auto", "--safe", "remos"),
                      "--safe remos", "may choose the probe")
