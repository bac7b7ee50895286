"""Help that teaches (issue #19.5): every subcommand has a one-line summary in ``segtme --help``,
a description and at least one example in its own ``--help``; every example names a real flag."""

from __future__ import annotations

import argparse
import re

import pytest

from segtme.cli import build_parser


def _subcommands():
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    return p, [(name, sp, helps.get(name)) for name, sp in sub.choices.items()]


def test_every_subcommand_has_a_summary_a_description_and_an_example():
    p, cmds = _subcommands()
    assert len(cmds) >= 8
    top = p.format_help()
    for name, sp, summary in cmds:
        assert summary and "\n" not in summary and len(summary) < 130, name
        assert name in top
        assert sp.description and len(sp.description) > 30, name
        text = sp.format_help()
        parts = re.split(r"\nexamples?:\n", text, maxsplit=1)
        assert len(parts) == 2, f"segtme {name} --help has no example"
        examples = [ln.strip() for ln in parts[1].splitlines() if ln.strip().startswith("segtme ")]
        own = [ex for ex in examples if ex.split()[1] == name]
        assert own, f"segtme {name} --help has no example of itself"
        flags = {o for a in sp._actions for o in a.option_strings}
        for ex in own:
            for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", ex.split("#")[0]):
                assert flag in flags, f"example {ex!r} uses unknown flag {flag}"


@pytest.mark.parametrize("argv", [["--help"], ["analyze", "--help"], ["eval", "--help"]])
def test_help_exits_cleanly(argv, capsys):
    from segtme.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0 and "usage: segtme" in capsys.readouterr().out
