"""``.. zope-interface:: module.IName``: a zope.interface, documented from
its own docstrings.

autodoc reads classes, and an interface is not one (its attributes and
methods live in the interface, not on a class); this lists what the
interface declares, in the order it declares them, as a ``py:class`` with
its ``py:attribute`` and ``py:method`` members, so references to them
resolve.
"""

from __future__ import annotations

import inspect


def interface_rst(interface) -> list[str]:
    """reStructuredText lines documenting ``interface``."""
    lines = [
        f".. py:class:: {interface.__name__}",
        f"   :module: {interface.__module__}",
        "",
    ]
    lines += _indented(inspect.cleandoc(interface.__doc__ or ""), 3)
    for name, description in interface.namesAndDescriptions():
        signature = getattr(description, "getSignatureString", None)
        if signature is None:
            lines += [f"   .. py:attribute:: {name}", ""]
        else:
            lines += [f"   .. py:method:: {name}{signature()}", ""]
        lines += _indented(inspect.cleandoc(description.getDoc() or ""), 6)
    return lines


def _indented(text: str, width: int) -> list[str]:
    if not text:
        return []
    return [(" " * width + line).rstrip() for line in text.splitlines()] + [""]


def setup(app):
    from docutils.statemachine import StringList
    from kxoptions import load
    from sphinx.util.docutils import SphinxDirective

    class ZopeInterface(SphinxDirective):
        required_arguments = 1

        def run(self):
            module, _, name = self.arguments[0].rpartition(".")
            lines = interface_rst(load(f"{module}:{name}"))
            from docutils import nodes

            container = nodes.container()
            self.state.nested_parse(
                StringList(lines, source=self.get_source_info()[0]), self.content_offset, container
            )
            return container.children

    app.add_directive("zope-interface", ZopeInterface)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
