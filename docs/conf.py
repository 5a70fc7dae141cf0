"""Sphinx configuration of iwae's documentation site.

The site is the repository's own markdown (README, ARCHITECTURE, the results and benchmark reports, the changelog),
read where it lies so that its links between files work as they do on a repository page, plus an API reference
generated from the docstrings. Build it from the repository's root (``pip install -e ".[docs]"``)::

    sphinx-build -W --keep-going -c docs . build/docs
"""

from __future__ import annotations

import iwae

project = "iwae"
author = "the iwae developers"
release = version = iwae.__version__
copyright = "2026, the iwae developers"

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.mathjax", "sphinx.ext.viewcode"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "docs/index"
# Only these files are pages; every other file of the repository is not read.
include_patterns = [
    "docs/*.md", "README.md", "ARCHITECTURE.md", "CHANGELOG.md",
    "results/*/README.md", "results/*/*.md", "results/*/*/report.md", "results/*/weights/*/README.md",
    "benchmarks/README.md", "benchmarks/device/README.md", "benchmarks/results/*.md",
]  # fmt: skip
exclude_patterns = ["build", ".venv", "**/runs/**", "docs/_redirect"]

myst_heading_anchors = 3  # README's "#section" links
myst_enable_extensions = ["dollarmath"]
# A report may skip a heading level, and the detailed reports are reached from their study's page rather than the
# table of contents; a broken link or cross-reference still fails the build.
suppress_warnings = ["myst.header", "toc.not_included"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"

html_theme = "furo"
html_extra_path = ["_redirect"]  # build/docs/index.html leads to the root page, docs/index.html
html_title = f"iwae {release}"
