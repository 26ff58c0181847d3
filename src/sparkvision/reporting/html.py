"""HTML building blocks of the report: escaping, tables, inlined images, sections and the
page itself. The page is one self-contained HTML5 file: inline CSS, images as ``data:``
URIs, no script, font or any other external reference."""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

CSS = """
:root { --fg: #1b1f24; --muted: #5f6b7a; --line: #d8dee4; --bg: #ffffff; --alt: #f6f8fa;
        --accent: #0b5cad; --bad: #c62828; --good: #2e7d32; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: var(--bg);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial,
       sans-serif; }
header, main, footer { max-width: 1180px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 18px; border-bottom: 1px solid var(--line); }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 28px 0 10px; padding-bottom: 4px;
     border-bottom: 2px solid var(--accent); }
h3 { font-size: 16px; margin: 20px 0 8px; }
h4 { font-size: 14px; margin: 14px 0 6px; color: var(--muted); }
nav ul { list-style: none; padding: 0; margin: 8px 0 12px; display: flex; flex-wrap: wrap;
         gap: 6px 16px; }
nav a, a { color: var(--accent); text-decoration: none; }
.muted { color: var(--muted); }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left;
         vertical-align: top; }
th { background: var(--alt); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fbfcfd; }
table.kv th { width: 14em; }
.bad { color: var(--bad); font-weight: 600; }
.good { color: var(--good); }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 8px 0 16px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px;
        min-width: 150px; background: var(--alt); }
.card .value { font-size: 22px; font-weight: 600; }
.card .label { color: var(--muted); font-size: 12px; }
figure { margin: 8px 0 16px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 12px; }
.thumbs { display: flex; flex-wrap: wrap; gap: 10px; margin: 6px 0 14px; }
.thumbs figure { margin: 0; width: 132px; }
.thumbs img { width: 128px; image-rendering: pixelated; }
.thumbs figcaption { line-height: 1.25; }
code { background: var(--alt); padding: 0 3px; border-radius: 3px; }
footer { color: var(--muted); font-size: 12px; padding: 24px 20px; }
"""


class Markup(str):
    """Text that is already HTML (built here from escaped parts): never escaped again."""


def esc(value: Any) -> str:
    """``value`` as escaped HTML text (quotes included)."""
    return value if isinstance(value, Markup) else html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A value as escaped cell text: floats to ``digits`` decimals (two from 10 on, one
    from 100 on, three significant digits below 0.01), None as an en dash,
    lists comma-joined, dicts as JSON."""
    if isinstance(value, Markup):
        return value
    if value is None:
        return "–"
    if isinstance(value, bool):
        return esc(str(value).lower())
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return esc(str(value))
        if abs(value) >= 100:
            return esc(f"{value:.1f}")
        if abs(value) >= 10:
            return esc(f"{value:.2f}")
        if value == 0 or abs(value) >= 0.01:
            return esc(f"{value:.{digits}f}")
        return esc(f"{value:.3g}")
    if isinstance(value, list | tuple):
        return esc(", ".join(str(v) for v in value))
    if isinstance(value, dict):
        return esc(json.dumps(value, ensure_ascii=False, default=str))
    return esc(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], caption: str = "") -> Markup:
    """A table; numbers are right-aligned, every cell is escaped (unless Markup)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{fmt(v)}</td>' if _is_number(v) else f"<td>{fmt(v)}</td>"
            for v in row
        )
        body.append(f"<tr>{cells}</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return Markup(f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead>'
                  f'<tbody>{"".join(body)}</tbody></table></div>')


def kv_table(pairs: Iterable[tuple[str, Any]]) -> Markup:
    """A two-column name/value table (pairs whose value is ``...`` are left out)."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{fmt(v)}</td></tr>" for k, v in pairs
                   if v is not ...)
    return Markup(f'<div class="scroll"><table class="kv"><tbody>{rows}</tbody></table></div>')


def cards(items: Iterable[tuple[str, Any]]) -> Markup:
    """Headline numbers as a row of boxes (label under a big value)."""
    boxes = "".join(f'<div class="card"><div class="value">{fmt(v)}</div>'
                    f'<div class="label">{esc(k)}</div></div>' for k, v in items)
    return Markup(f'<div class="cards">{boxes}</div>')


def image(png: bytes, alt: str, caption: str = "") -> Markup:
    """A figure whose image is the PNG inlined as a ``data:`` URI."""
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return Markup(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}">'
                  f"{cap}</figure>")


def thumbs(items: Iterable[tuple[bytes, str, str, str]]) -> Markup:
    """Small figures side by side: (PNG, alt text, caption, caption class) each, the PNGs
    inlined as ``data:`` URIs."""
    figures = []
    for png, alt, caption, cls in items:
        data = base64.b64encode(png).decode("ascii")
        attr = f' class="{esc(cls)}"' if cls else ""
        figures.append(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}">'
                       f"<figcaption{attr}>{esc(caption)}</figcaption></figure>")
    return Markup(f'<div class="thumbs">{"".join(figures)}</div>')


def heading(level: int, text: str, note: str = "") -> Markup:
    """``<hN>`` with an optional muted note after the text."""
    extra = f' <span class="muted">{esc(note)}</span>' if note else ""
    return Markup(f"<h{level}>{esc(text)}{extra}</h{level}>")


def paragraph(text: str, cls: str = "") -> Markup:
    attr = f' class="{esc(cls)}"' if cls else ""
    return Markup(f"<p{attr}>{esc(text)}</p>")


def span(text: Any, cls: str) -> Markup:
    return Markup(f'<span class="{esc(cls)}">{fmt(text)}</span>')


@dataclass(frozen=True)
class Section:
    """One ``<section id=…>`` of the report: its id, ``<h2>`` title and HTML body."""

    id: str
    title: str
    body: str

    def render(self) -> str:
        return (f'<section id="{esc(self.id)}">\n<h2>{esc(self.title)}</h2>\n{self.body}\n'
                "</section>")


def page(title: str, subtitle: str, sections: Sequence[Section], footer: str) -> str:
    """The whole HTML5 document: a header with a table of contents, then the sections."""
    nav = "".join(f'<li><a href="#{esc(s.id)}">{esc(s.title)}</a></li>' for s in sections)
    body = "\n".join(s.render() for s in sections)
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{esc(title)}</h1><p class=\"muted\">{esc(subtitle)}</p>"
        f"<nav><ul>{nav}</ul></nav></header>\n<main>\n{body}\n</main>\n"
        f"<footer>{esc(footer)}</footer>\n</body>\n</html>\n"
    )
