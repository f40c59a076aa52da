"""Read the project's .rst files as Sphinx pages without rewriting them.

The README and the pages in docs/ are written to be read as files too (on
a forge, in a terminal), so they name each other by path:
````docs/trust.rst````, `` `docs/spec/kx1.rst <docs/spec/kx1.rst>`_ ``,
``.. image:: docs/benchmarks.png``.  As each file is read (and as the
README is included in the index), those become cross-references to the
page, so the build checks them: a path to an .rst file that does not exist
is a warning, and ``make docs`` fails on warnings.

:func:`link_paths` is the whole rewrite; it has no Sphinx in it, so that
the tests can run it alone.
"""

from __future__ import annotations

import os
import re

DOCS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(DOCS)

#: .rst files outside docs/ that a page includes whole: their page.
INCLUDED = {"README.rst": "index", "benchmarks/README.rst": "benchmarks"}

_LITERAL = re.compile(r"``([\w./-]+\.rst)``")
_LINK = re.compile(r"`([^`<>]+?)\s*<([\w./-]+\.rst)>`_(?!_)")
_IMAGE = re.compile(r"^(\s*\.\. (?:image|figure):: )(\S+)$", re.MULTILINE)


def page_of(path: str, directory: str, root: str = ROOT) -> str | None:
    """The page (docname, from docs/) of the .rst file ``path`` named in a
    file in ``directory`` (both relative to the repository), or ``None``
    when there is no such file.  A path is tried from the repository first,
    as the README and docs/ write them, then from ``directory``."""
    for candidate in (path, os.path.join(directory, path)):
        candidate = os.path.normpath(candidate).replace(os.sep, "/")
        if not os.path.isfile(os.path.join(root, candidate)):
            continue
        if candidate in INCLUDED:
            return INCLUDED[candidate]
        if candidate.startswith("docs/"):
            return candidate[len("docs/") : -len(".rst")]
    return None


def link_paths(text: str, directory: str, warn=None, root: str = ROOT) -> str:
    """``text`` (the content of an .rst file in ``directory``, relative to
    the repository) with the paths of .rst files made into ``:doc:``
    references, and image paths made relative to docs/.  ``warn(message)``
    is told of each path that names no file."""

    def missing(path):
        if warn is not None:
            warn(f"{path!r} names no .rst file in the repository")

    def literal(match):
        path = match.group(1)
        page = page_of(path, directory, root)
        if page is None:
            if "/" in path:
                missing(path)
            return match.group(0)
        return f":doc:`{path} </{page}>`"

    def link(match):
        title, path = match.group(1), match.group(2)
        page = page_of(os.path.join(directory, path), directory, root) or page_of(
            path, directory, root
        )
        if page is None:
            missing(path)
            return match.group(0)
        return f":doc:`{title} </{page}>`"

    def image(match):
        path = os.path.normpath(os.path.join(root, directory, match.group(2)))
        return match.group(1) + "/" + os.path.relpath(path, os.path.join(root, "docs"))

    text = _LINK.sub(link, text)
    text = _LITERAL.sub(literal, text)
    return _IMAGE.sub(image, text)


def _private_parts_dropped(target: str) -> str:
    """``keyexchanged.rsa._keys.PrivateKey`` → ``keyexchanged.rsa.PrivateKey``:
    where a package's private module defines a name, the package exports it."""
    return re.sub(r"\._[a-z]\w*(?=\.)", "", target)


def resolve(target: str, names, context: str = "") -> str | None:
    """The one documented name (of ``names``) that a Python reference to
    ``target`` made in ``context`` (``module.Class``) means, or ``None``.

    Docstrings name things as their module sees them (``UntrustedKey``,
    ``knownhosts.default_path``), and annotations by where they are
    defined (a private module); the pages document each under the public
    module a program imports it from.  One match, or one within
    ``context``, resolves; more than one does not (the build warns).
    """
    public = _private_parts_dropped(target)
    if public in names:
        return public
    matches = sorted({name for name in names if name.endswith("." + public)})
    if len(matches) > 1 and context:
        inside = [name for name in matches if name.startswith(context + ".")]
        matches = inside or matches
    return matches[0] if len(matches) == 1 else None


def _directory_of(app, docname):
    path = os.path.relpath(os.path.dirname(app.env.doc2path(docname)), ROOT)
    return "" if path == "." else path


def setup(app):
    from sphinx.util import logging

    logger = logging.getLogger(__name__)

    def source_read(app, docname, source):
        source[0] = link_paths(
            source[0],
            _directory_of(app, docname),
            lambda message: logger.warning(message, location=docname),
        )

    def include_read(app, relative_path, parent_docname, content):
        path = os.path.relpath(os.path.join(app.srcdir, relative_path), ROOT)
        content[0] = link_paths(
            content[0],
            os.path.dirname(path),
            lambda message: logger.warning(message, location=str(path)),
        )

    def missing_reference(app, env, node, contnode):
        if node.get("refdomain") != "py":
            return None
        from sphinx.util.nodes import make_refnode

        domain = env.get_domain("py")
        context = ".".join(filter(None, (node.get("py:module"), node.get("py:class"))))
        names = dict(domain.objects)
        names.update({name: entry for name, entry in domain.modules.items()})
        name = resolve(node["reftarget"], names, context)
        if name is None:
            return None
        entry = names[name]
        return make_refnode(
            app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, name
        )

    app.connect("source-read", source_read)
    app.connect("missing-reference", missing_reference)
    app.connect("include-read", include_read)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
