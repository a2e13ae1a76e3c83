"""The `neurolens` command: one subcommand per module in neurolens/commands/."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = ("run", "sweep", "scan", "neuron", "query", "report", "models", "concepts", "selfcheck")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (exit 2), like every other user error."""

    def error(self, message: str):  # type: ignore[override]
        sub = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        hint = f" (see `neurolens {sub + ' ' if sub else ''}--help`)"
        self.exit(2, f"neurolens: error: {sub + ': ' if sub else ''}{message}{hint}\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="neurolens", description=(
        "Find the neurons that encode a concept, score them, prove them by ablation, report them."))
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"neurolens.commands.{name}").add_parser(sub)
    return p




def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    from neurolens.errors import NeuroLensError, first_line

    try:
        return int(importlib.import_module(f"neurolens.commands.{args.command}").run(args) or 0)
    except NeuroLensError as e:  # the one place a user's error becomes one line and exit 2
        print(f"neurolens: error: {first_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("neurolens: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # disk full, permissions: the user's environment, not a bug
        print(f"neurolens: error: {e.strerror or e}{': ' + str(e.filename) if e.filename else ''}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
