r"""MkDocs hook: display math `$$...$$` written inside a paragraph, as the docstrings do.

`pymdownx.arithmatex` reads `$$...$$` as display math only when it is a paragraph of its
own; inside running text it would take the inner `$...$` as inline math and leave the
outer dollars as text. This adds an inline pattern, run before arithmatex's, that turns
`$$...$$` anywhere in a paragraph into arithmatex's generic display output `\[...\]`
(which MathJax typesets as a display). The hook appends the extension in `on_config`, so
both the pages and mkdocstrings' rendering of the docstrings use it.
"""

import xml.etree.ElementTree as etree

from markdown import Markdown
from markdown.extensions import Extension
from markdown.inlinepatterns import InlineProcessor
from markdown.util import AtomicString


# `$$`, then escaped characters or anything but a backslash or a dollar, then `$$`.
_DISPLAY_MATH = r"(?<!\\)\$\$((?:\\.|[^\\$])+?)\$\$"


class _DisplayMathPattern(InlineProcessor):
    def handleMatch(self, m, data):  # noqa: N802 (Python-Markdown's name)
        element = etree.Element("span", {"class": "arithmatex"})
        element.text = AtomicString(rf"\[{m.group(1)}\]")
        return element, m.start(0), m.end(0)


class DisplayMathExtension(Extension):
    def extendMarkdown(self, md: Markdown) -> None:  # noqa: N802 (Python-Markdown's name)
        # Above arithmatex's inline pattern (189.9) and the backslash escapes (180).
        md.inlinePatterns.register(_DisplayMathPattern(_DISPLAY_MATH, md), "display-math", 190)


def on_config(config):
    config.markdown_extensions.append(DisplayMathExtension())
    return config
