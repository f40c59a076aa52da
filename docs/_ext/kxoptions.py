"""Man pages from the option definitions themselves: one copy, no drift.

Two directives render, where they stand, every option a parser accepts:

``.. argparse-options:: keyexchanged.cli:build_parser``
    an :mod:`argparse` parser (from a function returning it), each
    subcommand in its own section, recursively;
``.. twisted-options:: keyexchanged.tap:Options``
    a :class:`twisted.python.usage.Options` class (``twistd keyexchange``).

Each option becomes a Sphinx ``option`` (so ``:option:`` references to it
are checked), in HTML and in the ``man`` builder's pages alike.

Neither library offers a public way to list what a parser holds, so this
reads what both have kept for a long time (argparse's ``_actions``, the
``longOpt``/``docs``/``synonyms`` of usage.Options): the generated pages
cannot list an option the code lacks, nor miss one it has
(``tests/test_docs.py`` checks the latter).

The rendering (:func:`argparse_rst`, :func:`twisted_options_rst`) is plain
text in, reStructuredText out, with no Sphinx in it.
"""

from __future__ import annotations

import argparse
import importlib
import re

#: Section underlines below the page's own ``=`` title and ``-`` sections.
SUBSECTIONS = "~^\"'"


def load(reference: str):
    """``"package.module:name"`` → that object."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def escape(text: str) -> str:
    """Plain help text as reStructuredText that shows the same characters."""
    text = text.replace("\\", "\\\\")
    text = re.sub(r"([*`|])", r"\\\1", text)
    text = re.sub(r"(\w):(?=\S)", r"\1\\:", text)  # "tcp:51424" is no URI
    return re.sub(r"_(?=\W|$)", r"\\_", text)


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help:
        return ""
    # The same expansion of %(default)s and friends that --help prints.
    return parser._get_formatter()._expand_help(action)


def _signature(action: argparse.Action) -> str:
    """What ``.. option::`` gets: every spelling, each with its argument."""
    if not action.option_strings:
        return action.metavar or action.dest
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    metavar = action.metavar or action.dest.upper()
    if isinstance(metavar, tuple):
        metavar = " ".join(metavar)
    if action.nargs == "?":
        metavar = f"[{metavar}]"
    elif action.nargs in ("*", "+"):
        metavar = f"{metavar} ..."
    return ", ".join(f"{option} {metavar}" for option in action.option_strings)


def _subcommands(parser: argparse.ArgumentParser):
    """``(help, subparser)`` for each subcommand, in --help's order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, subparser in action.choices.items():
                yield helps.get(name) or "", subparser


def argparse_rst(parser: argparse.ArgumentParser, level: int = 0) -> list[str]:
    """reStructuredText lines for ``parser``: its usage and options, then a
    section for each subcommand (at ``SUBSECTIONS[level]``) and so on down."""
    lines = []
    if level == 0 and parser.description:
        lines += [escape(parser.description), ""]
    lines += ["::", ""]
    lines += ["   " + line for line in parser.format_usage().strip().splitlines()]
    lines += ["", f".. program:: {parser.prog}", ""]
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        lines += [f".. option:: {_signature(action)}", ""]
        help_text = _help(parser, action)
        if help_text:
            lines += ["   " + escape(help_text), ""]
    for help_text, subparser in _subcommands(parser):
        title = subparser.prog
        lines += [title, SUBSECTIONS[level] * len(title), ""]
        text = subparser.description or help_text
        if text:
            lines += [escape(text), ""]
        lines += argparse_rst(subparser, level + 1)
    return lines


def twisted_options_rst(options_class, program: str) -> list[str]:
    """reStructuredText lines for a :class:`twisted.python.usage.Options`
    class run as ``program``: its synopsis and every option, in the order
    ``--help`` lists them."""
    options = options_class()
    shorts = {}
    for name, canonical in options.synonyms.items():
        if len(name) == 1:
            shorts[canonical] = name
    lines = ["::", "", f"   {program} {options.synopsis}", ""]
    if options.longdesc:
        lines += [escape(" ".join(options.longdesc.split())), ""]
    lines += [f".. program:: {program}", ""]
    for long_option in options.longOpt:
        name = long_option.rstrip("=")
        argument = " " + name.upper().replace("-", "_") if long_option.endswith("=") else ""
        spellings = [f"--{name}{argument}"]
        if name in shorts:
            spellings.insert(0, f"-{shorts[name]}{argument}")
        lines += [f".. option:: {', '.join(spellings)}", ""]
        doc = options.docs.get(name)
        if doc:
            lines += ["   " + escape(" ".join(doc.split())), ""]
    return lines


def setup(app):
    from docutils.statemachine import StringList
    from sphinx.util.docutils import SphinxDirective
    from sphinx.util.nodes import nested_parse_with_titles

    class _Rendered(SphinxDirective):
        required_arguments = 1
        optional_arguments = 1

        def lines(self) -> list[str]:
            raise NotImplementedError

        def run(self):
            source = self.get_source_info()[0]
            content = StringList(self.lines(), source=source)
            container = _section_container()
            nested_parse_with_titles(self.state, content, container)
            return container.children

    def _section_container():
        from docutils import nodes

        return nodes.section()

    class ArgparseOptions(_Rendered):
        def lines(self):
            return argparse_rst(load(self.arguments[0])())

    class TwistedOptions(_Rendered):
        """``.. twisted-options:: module:Options program name``"""

        final_argument_whitespace = True

        def lines(self):
            return twisted_options_rst(load(self.arguments[0]), self.arguments[1])

    app.add_directive("argparse-options", ArgparseOptions)
    app.add_directive("twisted-options", TwistedOptions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
