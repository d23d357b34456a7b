"""The bad-input checker itself: it must fail on a traceback, a wrong status, a silent message and a changed file."""

import pytest

from cli_checks import expect_user_error, run_cli, unchanged


def test_expect_user_error_accepts_a_one_line_refusal():
    result = expect_user_error(["arith", "conv", "--length", "3", "--kernel", "7"], names=["conv_out", "7"])
    assert result.stdout == ""


def test_expect_user_error_rejects_success_and_unnamed_messages():
    with pytest.raises(AssertionError, match="exit status 0"):
        expect_user_error(["arith", "conv", "--length", "8", "--kernel", "3"])
    with pytest.raises(AssertionError, match="does not name"):
        expect_user_error(["arith", "conv", "--length", "3", "--kernel", "7"], names=["--nonexistent"])


def test_run_cli_maps_argparse_exit():
    assert run_cli(["no-such-command"]).code == 2


def test_unchanged_detects_changes(tmp_path):
    (tmp_path / "a").write_text("1")
    with pytest.raises(AssertionError, match="changed"), unchanged(tmp_path):
        (tmp_path / "a").write_text("2")
    with pytest.raises(AssertionError, match="changed"), unchanged(tmp_path):
        (tmp_path / "b").write_text("new")
