"""Fenced code blocks in Markdown, and the `apiguard` command lines they show.

Shared by tests/test_readme.py (the README) and tests/test_docs_site.py (the site).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import click

from apiguard.cli import main
from apiguard.exceptions import AuthError

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
# `<!-- test: skip REASON -->` or `<!-- test: setup NAME ... -->` on the line before a fence.
DIRECTIVE = re.compile(r"<!--\s*test:\s*(\w+)\s*(.*?)\s*-->\s*\Z", re.DOTALL)
SNIPPET = re.compile(r'^--8<-- "([^"]+)"[ \t]*$', re.MULTILINE)


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, code, line, and the directive before it."""

    language: str
    code: str
    line: int
    directive: str | None = None
    argument: str = ""


def expand_snippets(text: str) -> str:
    """The page as the site shows it: `--8<-- "path"` lines replaced by the file
    (as scripts/docs_hooks.py does for the site)."""
    return SNIPPET.sub(lambda match: (ROOT / match[1]).read_text(), text)


def fenced_blocks(text: str) -> list[Block]:
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip()
        directive = DIRECTIVE.search(before.splitlines()[-1] if before else "")
        found.append(
            Block(
                language=match[1],
                code=match[2],
                line=text.count("\n", 0, match.start()) + 1,
                directive=directive[1] if directive else None,
                argument=directive[2] if directive else "",
            )
        )
    return found


def cli_lines(console_blocks: list[str]) -> list[list[str]]:
    """The words of each `$ apiguard ...` line, without comments and `[optional]` parts."""
    lines = []
    for console in console_blocks:
        for line in console.replace("\\\n", " ").splitlines():
            if line.startswith("$ apiguard "):
                words = shlex.split(line[2:].split("#")[0])
                lines.append([w for w in words if not w.startswith("[")])
    return lines


def unknown_cli_words(words: list[str]) -> set[str]:
    """The options a command line uses that its `apiguard` command does not have.

    Raises `LookupError` when the line stops at a group (`apiguard keys`) or names a
    command that does not exist.
    """
    command: click.Command = main
    args = words[1:]
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        name = args.pop(0)
        if name not in command.commands:
            raise LookupError(f"{' '.join(words)}: no command {name!r}")
        command = command.commands[name]
    if isinstance(command, click.Group) and not {"--help", "--version"} & set(args):
        raise LookupError(f"{' '.join(words)}: names no command")
    options = {opt for param in command.params for opt in param.opts}
    options |= {"--help", "--version"}
    return {arg.split("=")[0] for arg in args if arg.startswith("--")} - options


def refusal_classes() -> list[type[AuthError]]:
    """Every refusal apiguard raises: the subclasses of `AuthError` it defines."""
    found: list[type[AuthError]] = []
    pending: list[type[AuthError]] = [AuthError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__ == "apiguard.exceptions" and cls is not AuthError:
            found.append(cls)
    return found
