"""The documentation: the man pages list every option the parsers accept,
the Sphinx extensions in docs/_ext do what the build relies on, and the
README's shell examples for keys, certificates and ticket keys run."""

import argparse
import atexit
import contextlib
import importlib.util
import io
import os
import re
import shutil
import stat
import subprocess
import tempfile
from typing import ClassVar

from twisted.trial import unittest

from keyexchanged import cli, keys
from keyexchanged.cli import build_parser
from keyexchanged.interfaces import IApplication
from keyexchanged.tap import Options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
EXTENSIONS = os.path.join(DOCS, "_ext")


def extension(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXTENSIONS, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def every_parser(parser):
    """``parser`` and every subcommand's parser under it, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                yield from every_parser(subparser)


def cli_options():
    """``{(program, option)}``: every option string and positional
    argument of every ``keyexchange`` parser that ``--help`` shows."""
    found = set()
    for parser in every_parser(build_parser()):
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:
                continue
            if isinstance(action, argparse._SubParsersAction):
                continue
            names = action.option_strings or [action.metavar or action.dest]
            found.update((parser.prog, name) for name in names)
    return found


def daemon_options():
    """Every ``--long`` and ``-s`` option of ``twistd keyexchange``."""
    options = Options()
    found = {"--" + name.rstrip("=") for name in options.longOpt}
    found.update("-" + name for name in options.synonyms if len(name) == 1)
    return found


def rendered_options(lines):
    """``{(program, option)}`` of the ``.. option::`` entries in ``lines``."""
    found = set()
    program = None
    for line in lines:
        if line.startswith(".. program:: "):
            program = line[len(".. program:: ") :]
        elif line.startswith(".. option:: "):
            for spelling in line[len(".. option:: ") :].split(", "):
                found.add((program, spelling.split()[0]))
    return found


class ArgparsePagesTests(unittest.TestCase):
    """keyexchange(1) is rendered from build_parser() itself."""

    def setUp(self):
        self.lines = extension("kxoptions").argparse_rst(build_parser())

    def test_every_option(self):
        self.assertEqual(rendered_options(self.lines) - {("keyexchange", None)}, cli_options())

    def test_every_option_counted(self):
        """The parsers have the options the README promises (the walk above
        found something to compare)."""
        options = cli_options()
        for expected in [
            ("keyexchange connect", "--fingerprint"),
            ("keyexchange connect", "--ticket-cache"),
            ("keyexchange ca issue", "--ip"),
            ("keyexchange keygen", "--bits"),
        ]:
            self.assertIn(expected, options)

    def test_every_subcommand_a_section(self):
        """A title, underlined, for each subcommand; one level down for an
        action of a subcommand (``ca init``)."""
        underlines = {}
        for title, underline in zip(self.lines, self.lines[1:]):
            if underline and len(underline) == len(title) and len(set(underline)) == 1:
                underlines[title] = underline[0]
        expected = {
            parser.prog: "~" if parser.prog.count(" ") == 1 else "^"
            for parser in every_parser(build_parser())
            if parser.prog != "keyexchange"
        }
        self.assertEqual(underlines, expected)

    def test_help_text(self):
        """Each option's help, with its default expanded as --help does."""
        text = "\n".join(self.lines)
        self.assertIn("modulus size: a multiple of 8 from 2048 to 8192 (default: 3072)", text)

    def test_suppressed_option_left_out(self):
        parser = argparse.ArgumentParser(prog="p")
        parser.add_argument("--shown", help="shown")
        parser.add_argument("--hidden", help=argparse.SUPPRESS)
        lines = extension("kxoptions").argparse_rst(parser)
        self.assertEqual(rendered_options(lines), {("p", "-h"), ("p", "--help"), ("p", "--shown")})


class TwistedOptionsPageTests(unittest.TestCase):
    """twistd-keyexchange(8) is rendered from tap.Options itself."""

    def setUp(self):
        self.lines = extension("kxoptions").twisted_options_rst(Options, "twistd keyexchange")

    def test_every_option(self):
        rendered = rendered_options(self.lines)
        self.assertEqual({program for program, _ in rendered}, {"twistd keyexchange"})
        self.assertEqual({option for _, option in rendered}, daemon_options())

    def test_every_setting(self):
        """Each setting of config.py, the daemon's options' source."""
        from keyexchanged.config import SETTINGS

        rendered = {option for _, option in rendered_options(self.lines)}
        for setting in SETTINGS:
            self.assertIn("--" + setting.name, rendered)

    def test_value_named(self):
        self.assertIn(".. option:: -c CONFIG, --config CONFIG", self.lines)
        self.assertIn(".. option:: --no-forward-secrecy", self.lines)


class EscapeTests(unittest.TestCase):
    def test_markup_shown_as_typed(self):
        escape = extension("kxoptions").escape
        self.assertEqual(escape("*a* `b` |c| d_ e\\f"), "\\*a\\* \\`b\\` \\|c\\| d\\_ e\\\\f")

    def test_no_uri(self):
        self.assertEqual(extension("kxoptions").escape("tcp:51424"), "tcp\\:51424")


_man_build = None


def man_pages():
    """(exit status, output directory) of one ``sphinx-build -b man`` of
    docs/, run once per test process: each page's test reads its own page
    from it.

    Only docs/man/ is read (``include_patterns``, with its index as the root
    document): the pages are the same bytes as from the whole tree, which
    make docs builds, at a third of the cost (no autodoc of the API pages).
    """
    global _man_build
    if _man_build is None:
        from sphinx.cmd.build import build_main

        output = tempfile.mkdtemp(prefix="keyexchanged-man-")
        atexit.register(shutil.rmtree, output, True)
        # Warnings are make docs's to report; here only the pages matter.
        only_man = ["-D", "root_doc=man/index", "-D", "include_patterns=man/**"]
        _man_build = build_main(["-b", "man", "-q", "-E", *only_man, DOCS, output]), output
    return _man_build


class ManPageBuildTests(unittest.TestCase):
    """Sphinx's man builder writes every option into the pages."""

    def setUp(self):
        if importlib.util.find_spec("sphinx") is None:
            raise unittest.SkipTest("Sphinx is not installed: make docs installs it")
        code, self.output = man_pages()
        self.assertEqual(code, 0)

    def options_in_page(self, name, program):
        """``{(program, option)}`` of the option entries (``.B`` lines after
        ``.TP``) in the man page ``name``, each under its ``.SS`` section's
        program (``program`` before the first)."""
        with open(os.path.join(self.output, name), encoding="utf-8") as file:
            lines = file.read().replace("\\-", "-").splitlines()
        found = set()
        for previous, line in zip(lines, lines[1:]):
            if line.startswith(".SS "):
                program = line[len(".SS ") :]
            elif previous == ".TP" and line.startswith(".B "):
                for spelling in line[len(".B ") :].split(", "):
                    found.add((program, spelling.split()[0]))
        return found

    def test_keyexchange(self):
        self.assertTrue(cli_options() <= self.options_in_page("keyexchange.1", "keyexchange"))

    def test_twistd_keyexchange(self):
        program = "twistd keyexchange"
        found = self.options_in_page("twistd-keyexchange.8", program)
        self.assertTrue({(program, option) for option in daemon_options()} <= found)


class LinkPathsTests(unittest.TestCase):
    """kxdocs: paths in the .rst files become checked references."""

    def setUp(self):
        self.kxdocs = extension("kxdocs")
        self.root = self.mktemp()
        os.makedirs(os.path.join(self.root, "docs", "spec"))
        os.makedirs(os.path.join(self.root, "benchmarks"))
        for path in ["docs/trust.rst", "docs/spec/kx1.rst", "benchmarks/README.rst", "README.rst"]:
            with open(os.path.join(self.root, path), "w") as file:
                file.write("x\n")
        self.warnings = []

    def link(self, text, directory):
        return self.kxdocs.link_paths(text, directory, self.warnings.append, self.root)

    def test_literal_path(self):
        self.assertEqual(
            self.link("see ``docs/trust.rst`` now", ""), "see :doc:`docs/trust.rst </trust>` now"
        )

    def test_link(self):
        self.assertEqual(
            self.link("`the spec <spec/kx1.rst>`_", "docs"), ":doc:`the spec </spec/kx1>`"
        )

    def test_included_file(self):
        self.assertEqual(
            self.link("``benchmarks/README.rst``", ""),
            ":doc:`benchmarks/README.rst </benchmarks>`",
        )

    def test_missing_file_warns(self):
        text = "see ``docs/gone.rst``"
        self.assertEqual(self.link(text, ""), text)
        self.assertEqual(self.warnings, ["'docs/gone.rst' names no .rst file in the repository"])

    def test_other_literals_kept(self):
        text = "``--listen``, ``setup.rst`` and ``keyexchanged/keys.py``"
        self.assertEqual(self.link(text, ""), text)
        self.assertEqual(self.warnings, [])

    def test_image_from_the_readme(self):
        self.assertEqual(
            self.link(".. image:: docs/benchmarks.png\n   :alt: x", ""),
            ".. image:: /benchmarks.png\n   :alt: x",
        )


class ResolveTests(unittest.TestCase):
    """kxdocs: a docstring's reference finds the one documented name."""

    names: ClassVar[set] = {
        "keyexchanged.rsa.PrivateKey",
        "keyexchanged.knownhosts.KnownHosts.load",
        "keyexchanged.errors.UntrustedKey",
        "keyexchanged.a.Thing",
        "keyexchanged.b.Thing",
    }

    def resolve(self, target, context=""):
        return extension("kxdocs").resolve(target, self.names, context)

    def test_private_module(self):
        self.assertEqual(
            self.resolve("keyexchanged.rsa._keys.PrivateKey"), "keyexchanged.rsa.PrivateKey"
        )

    def test_short_name(self):
        self.assertEqual(self.resolve("UntrustedKey"), "keyexchanged.errors.UntrustedKey")

    def test_in_context(self):
        self.assertEqual(self.resolve("Thing", "keyexchanged.b"), "keyexchanged.b.Thing")

    def test_ambiguous(self):
        self.assertIsNone(self.resolve("Thing"))

    def test_unknown(self):
        self.assertIsNone(self.resolve("load_config"))


class InterfacePageTests(unittest.TestCase):
    def test_every_declared_name(self):
        lines = extension("kxinterfaces").interface_rst(IApplication)
        self.assertIn(".. py:class:: IApplication", lines)
        for name in IApplication.names():
            self.assertTrue(
                any(re.match(rf"   \.\. py:(attribute|method):: {name}\b", line) for line in lines),
                name,
            )
        self.assertIn("   .. py:method:: makeFactory(settings, reactor)", lines)


#: The README's commands this test runs, by what they begin with.
RUN = ("keygen", "fingerprint", "ca init", "ca issue", "ticket-keys new", "ticket-keys rotate")
_COMMAND = re.compile(r"^\s+(keyexchange (?:%s) .*?)\s*(?:#.*)?$" % "|".join(RUN), re.MULTILINE)


def readme_commands():
    """The README's ``keyexchange`` commands of :data:`RUN`, in order, and
    its ``openssl`` pipeline that prints the same fingerprint."""
    with open(os.path.join(ROOT, "README.rst"), encoding="utf-8") as file:
        text = file.read()
    commands = _COMMAND.findall(text)
    pipeline = re.search(r"^\s+(openssl pkey .*\\\n.*)$", text, re.MULTILINE)
    return commands, pipeline.group(1).replace("\\\n", " ") if pipeline else None


class ReadmeShellExamplesTests(unittest.TestCase):
    """The README's commands for keys, certificates and ticket keys run as
    written, in order, in a scratch directory.  One change: the ticket-key
    file of ``/etc/keyexchanged/`` goes to ``etc/`` there, as a test may not
    write to /etc.  (The commands that need a server, ``connect``,
    ``tunnel`` and ``twistd``, are not run here: docs/examples.rst says
    which tests run them.)  Each runs through the command's ``main`` in this
    process, its output captured: the command line is the README's, and
    tests/test_cli.py's RealKeygenTests run the command as a process."""

    timeout = 300

    def run_command(self, command):
        command = command.replace("/etc/keyexchanged/", "etc/")
        argv = command.split()
        self.assertEqual(argv[0], "keyexchange")
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            status = cli.main(argv[1:])
        self.assertEqual((status, stderr.getvalue()), (0, ""), command)
        return stdout.getvalue()

    def path(self, name):
        return os.path.join(self.directory, name)

    def test_commands(self):
        commands, pipeline = readme_commands()
        self.assertEqual(
            sorted({next(r for r in RUN if c.startswith("keyexchange " + r)) for c in commands}),
            sorted(RUN),
        )
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.path("etc"))
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.directory)  # the README's paths are relative
        printed = {}
        for command in commands:
            printed[command] = self.run_command(command)

        mode = stat.S_IMODE(os.stat(self.path("server.key")).st_mode)
        self.assertEqual(mode, 0o600)
        fingerprint = keys.fingerprint(keys.load_public_key(self.path("server.key.pub")))
        shown = [out for command, out in printed.items() if " fingerprint " in command]
        self.assertEqual([out.strip() for out in shown], [fingerprint])
        for name in ["ca/ca.key", "ca/ca.pem", "server.crt"]:
            self.assertTrue(os.path.isfile(self.path(name)), name)
        with open(self.path("etc/ticket.keys")) as file:
            ticket_keys = [line for line in file if not line.startswith("#")]
        self.assertEqual(len(ticket_keys), 2)  # new, then rotate

        if pipeline is None or shutil.which("openssl") is None:
            raise unittest.SkipTest("no openssl: the fingerprint pipeline was not run")
        result = subprocess.run(
            pipeline, shell=True, cwd=self.directory, capture_output=True, text=True, timeout=60
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual("SHA256:" + result.stdout.strip(), fingerprint)
