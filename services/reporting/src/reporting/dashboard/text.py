"""Text that cannot pretend: notes and names shown with their invisible characters made visible.

A note is free text from a ministry. Unicode's format characters (category Cf) change how text is shown
without being shown themselves: bidirectional overrides and isolates (U+202A–U+202E, U+2066–U+2069) can make
"承認済み 50%" display over stored text that says otherwise, and zero-width characters (U+200B–U+200D,
U+2060, U+FEFF) hide words from a search or split a number. `reveal` escapes the text and replaces each such
character by a visible, labelled mark (`⟦U+202E⟧`), so what a reader sees is what is stored; the element
around it is also isolated (`<bdi>`), so nothing leaks into the text after it.
"""

from __future__ import annotations

import unicodedata

from markupsafe import Markup, escape

#: Characters shown as marks besides category Cf: line and paragraph separators (they break a line unseen).
_ALSO = frozenset({"\u2028", "\u2029"})


def hidden(char: str) -> bool:
    """Whether `char` changes the display of text without being visible itself."""
    return unicodedata.category(char) == "Cf" or char in _ALSO


def reveal(text: str | None) -> Markup:
    """`text` escaped for HTML, its invisible format characters shown as marks, isolated from its neighbours."""
    if not text:
        return Markup("")
    parts: list[str] = []
    for char in text:
        if hidden(char):
            code = f"U+{ord(char):04X}"
            name = unicodedata.name(char, code)
            parts.append(f'<mark class="hidden-char" title="{escape(name)}">⟦{code}⟧</mark>')
        else:
            parts.append(str(escape(char)))
    return Markup('<bdi dir="auto">' + "".join(parts) + "</bdi>")
