"""Text for people's terminals: what a document, EIF or file says is shown, never obeyed.

A document's `module_id`, an EIF's metadata (`ImageName`, unmeasured), a file name or an error
message quoting any of them is chosen by whoever made the input. Written raw to a terminal, an
escape sequence in it can erase lines and draw a fake "OK"; read as rich markup, brackets restyle
the report. `visible` turns every control character (C0, DEL, C1), every invisible format character
(bidi overrides, zero-width joiners) and line or paragraph separators into a `repr`-style escape
(`\\x1b`, `\\u202e`, `\\n`), and `markup_safe` additionally escapes rich markup.

`TerminalConsole` applies the same rule to every string it renders, as a second line of defence
(newlines and tabs of the tool's own layout are kept there): exit codes and `--json` do not depend
on any of this.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

__all__ = ["TerminalConsole", "markup_safe", "visible"]

# Categories shown as escapes: controls, format characters (bidi, zero-width), line and paragraph
# separators, surrogates, private use and unassigned code points (a terminal may draw anything).
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if ch == "\n":
        return "\\n"
    if ch == "\r":
        return "\\r"
    if ch == "\t":
        return "\\t"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def visible(value: object, *, keep: str = "") -> str:
    """`str(value)` with every hidden or controlling character written as a visible escape.

    Args:
        value: anything; its `str()` is what is shown.
        keep: characters to leave as they are (the console keeps its own newlines and tabs).
    """
    text = str(value)
    out: list[str] = []
    for ch in text:
        # Backslashes stay single: messages already quote bytes with repr, and text that spells
        # out an escape is inert anyway.
        if ch not in keep and unicodedata.category(ch) in _HIDDEN:
            out.append(_escape_char(ch))
        else:
            out.append(ch)
    return "".join(out)


def markup_safe(value: object) -> str:
    """`visible(value)` with rich markup escaped: for untrusted text inside a markup string."""
    return escape(visible(value))


class TerminalConsole(Console):
    """A rich Console whose every rendered string has its control characters made visible.

    Our own markup never contains control characters, so sanitising before markup parsing keeps
    the styling and removes only what an input smuggled in.
    """

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(visible(text, keep="\n\t"), **kwargs)
