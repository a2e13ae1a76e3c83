"""Every flag of every subcommand says what it does in `--help`."""
from __future__ import annotations

import argparse

from neurolens.cli import COMMANDS, build_parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_flag_has_help():
    subs = _subparsers(build_parser())
    assert set(subs) == set(COMMANDS)
    missing = [f"{name} {a.option_strings or a.dest}"
               for name, p in subs.items() for a in p._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert not missing, missing


def test_help_says_what_the_numbers_become():
    run = _subparsers(build_parser())["run"]
    helps = {s: a.help for a in run._actions for s in a.option_strings}
    for how in ("mean", "max", "last", "concept"):
        assert f"{how} = " in helps["--pooling"], how
    assert "sqrt(max(selectivity,0)" in helps["--no-importance"]
    assert "float16" in helps["--dtype"] and "ablat" in helps["--top-k"]
    assert "random" in helps["--seed"] and "forward pass" in helps["--batch-size"]
    text = run.format_help()
    assert "concept word" in text and "no HTML report" in text
