"""Sphinx configuration: ``make docs`` builds HTML and the man pages.

The build is strict (``-W --keep-going`` and ``nitpicky``): every
cross-reference must resolve.  Names from other projects (Twisted, the
standard library, pycryptodome) are not linked, as linking them would need
their inventories from the network at build time; ``nitpick_ignore_regex``
lists them instead.
"""

import configparser
import os
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(DOCS, "_ext"))

project = "keyexchanged"
author = "the keyexchanged authors"
copyright = "the keyexchanged authors"
_metadata = configparser.ConfigParser()
_metadata.read(os.path.join(ROOT, "setup.cfg"))
release = version = _metadata["metadata"]["version"]

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "kxdocs",
    "kxoptions",
    "kxinterfaces",
]

exclude_patterns = ["_build", "spec/vectors", "examples"]
root_doc = "index"
nitpicky = True
# Other projects' names in signatures and docstrings: not ours to check.
nitpick_ignore_regex = [
    (r"py:.*", r"(twisted|zope|Crypto|cryptography|OpenSSL|prometheus_client)\..*"),
    (r"py:.*", r"(os|time|typing|collections\.abc|argparse|pathlib|ipaddress|enum)\..*"),
    (
        r"py:class",
        r"(bytes|str|int|float|bool|None|dict|list|tuple|set|frozenset|object|"
        r"bytearray|memoryview|callable|Exception|ValueError|OSError|"
        r"Deferred|Failure|IReactorTime|IStreamClientEndpoint|Factory|"
        r"Protocol|ClientFactory|optional|iterable|mapping)",
    ),
    (r"py:exc", r"(ValueError|OSError|TypeError|Exception|KeyError)"),
]

autodoc_member_order = "bysource"
autodoc_typehints = "description"


html_theme = "alabaster"
html_title = "keyexchanged"
html_static_path = []
html_theme_options = {"description": "An RSA key-exchange daemon, on Twisted"}

# (source, name, description, authors, section)
man_pages = [
    ("man/keyexchange", "keyexchange", "the keyexchanged client and tools", [author], 1),
    (
        "man/twistd-keyexchange",
        "twistd-keyexchange",
        "the keyexchanged daemon's options (twistd keyexchange)",
        [author],
        8,
    ),
]
man_show_urls = False
