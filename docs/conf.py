"""Sphinx configuration for the trioflow documentation.

Build with ``nox -s docs`` or::

    sphinx-build -W --keep-going -b html docs docs/_build/html

Only Sphinx built-ins are used (autodoc, napoleon, viewcode; the alabaster
theme ships with Sphinx), and nothing is fetched from the network: there is
no intersphinx.
"""

from __future__ import annotations

import os
import sys

# Document the source tree next to this directory, whether or not trioflow
# is installed in the environment that runs Sphinx.
sys.path.insert(0, os.path.abspath(".."))

import trioflow  # noqa: E402

project = "trioflow"
author = "the trioflow developers"
copyright = "the trioflow developers"
release = trioflow.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []

# -- autodoc / napoleon ------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": False}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- HTML ----------------------------------------------------------------------

html_theme = "alabaster"
html_title = f"trioflow {release}"
html_theme_options = {
    "description": "A distributed task scheduler for Python, built on Trio",
    "fixed_sidebar": True,
    "show_powered_by": False,
    "sidebar_collapse": False,
    "page_width": "1100px",
    "sidebar_width": "230px",
}
html_sidebars = {
    "**": ["about.html", "navigation.html", "relations.html", "searchbox.html"],
}
html_show_sourcelink = False

pygments_style = "sphinx"


# -- docstring fix-ups -----------------------------------------------------------


def _reindent_literal_after_summary(app, what, name, obj, options, lines):
    """Keep the literal block of a docstring shaped ``Summary::`` + code.

    ``inspect.cleandoc`` removes the indentation common to every line after
    the first; when the only such lines are a literal block, the block loses
    the indentation that makes it a block.  Put it back.
    """
    if len(lines) > 2 and lines[0].rstrip().endswith("::") and not lines[1].strip():
        body = [line for line in lines[2:] if line.strip()]
        if body and not body[0].startswith((" ", "\t")):
            lines[2:] = ["    " + line if line.strip() else line for line in lines[2:]]


def setup(app):
    app.connect("autodoc-process-docstring", _reindent_literal_after_summary)
