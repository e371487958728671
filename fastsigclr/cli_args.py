"""Reading the command line beyond argparse: option values that begin with '-', and the closest
options for a mistyped one."""

from __future__ import annotations

import argparse
import os

from fastsigclr.config import defer_to_node


class ArgumentParser(argparse.ArgumentParser):
    """argparse's, whose usage errors (the same command line on every process of a torchrun node)
    one process per node says (``config.defer_to_node``); one still running after the wait says
    it, naming its rank."""

    def error(self, message: str):
        """One line, naming where the options are listed, instead of argparse's usage block (29
        lines for `train`) above the error."""
        if "--help` lists the options" not in message:
            message += f" (`{self.prog} --help` lists the options)"
        rank = f"rank {os.environ.get('RANK', '?')}: " if defer_to_node() else ""
        self.exit(2, f"{self.prog}: error: {rank}{message}\n")


def _value_options(parser: argparse.ArgumentParser) -> tuple[set[str], set[str]]:
    """(flags that take exactly one value, every flag) of ``parser`` and all its subcommands."""
    takes_value, flags = set(), set()
    for action in parser._actions:
        flags.update(action.option_strings)
        if action.option_strings and action.nargs is None and action.const is None:
            takes_value.update(action.option_strings)
        for sub in getattr(action, "choices", None) or {}:
            if isinstance(action.choices, dict):
                more = _value_options(action.choices[sub])
                takes_value |= more[0]
                flags |= more[1]
    return takes_value, flags


def join_dash_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--bias -inf`` and ``--proj-dims -1,5`` as ``--bias=-inf``: argparse reads a value that
    begins with '-' (and is not a plain negative number) as an option and stops with "expected one
    argument"; joined, the value reaches the config's validation and its one-line error."""
    takes_value, flags = _value_options(parser)
    joined: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        dash_value = nxt is not None and nxt.startswith("-") and nxt.split("=")[0] not in flags
        if token in takes_value and dash_value:
            joined.append(f"{token}={nxt}")
            i += 2
            continue
        joined.append(token)
        i += 1
    return joined


def did_you_mean(leaf: argparse.ArgumentParser, unknown: list[str]) -> str:
    """``unrecognized arguments`` with the closest option of the command for each typo (difflib)."""
    import difflib

    flags = [f for action in leaf._actions for f in action.option_strings if f.startswith("--")]
    typos = [token.split("=")[0] for token in unknown if token.startswith("-")]
    close = [match for typo in typos for match in difflib.get_close_matches(typo, flags, n=1, cutoff=0.6)]
    hint = f"; did you mean {' or '.join(dict.fromkeys(close))}?" if close else ""
    return f"unrecognized arguments: {' '.join(unknown)}{hint} (`{leaf.prog} --help` lists the options)"
