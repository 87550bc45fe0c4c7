"""The report as one self-contained HTML page: the same sections as the text report (replay.report.text), the
plots embedded as base64 PNG data URIs, inline CSS, no scripts and no links or sources outside the page, so
it opens anywhere without a network and can be mailed as one file.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any

from replay.report.text import Section, sections

__all__ = ["render_html"]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 70em;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { padding: 0.2em 0.7em; border-bottom: 1px solid #eee; vertical-align: top; }
th { background: #f4f4f4; text-align: left; }
td.r { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
p { margin: 0.3em 0; } p.note { color: #666; font-size: 0.9em; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
"""


def _table(s: Section) -> str:
    head, *rows = s.table
    out = ["<table>", "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        cells = []
        for c, cell in enumerate(row):
            right = not (c < len(s.align) and s.align[c] == "l")
            cells.append(f"<td class=\"r\">{escape(cell)}</td>" if right else f"<td>{escape(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _section(s: Section, first: bool) -> str:
    tag = "h1" if first else "h2"
    parts = [f"<{tag}>{escape(s.heading)}</{tag}>"]
    parts += [f"<p>{escape(line)}</p>" for line in s.lines]
    if s.table:
        parts.append(_table(s))
    parts += [f"<p class=\"note\">{escape(line)}</p>" for line in s.after]
    return "\n".join(parts)


def _figure(plot: Any) -> str:
    if plot.path is None:
        return f"<p class=\"note\">{escape(plot.title)}: not drawn: {escape(plot.note or '')}</p>"
    data = base64.b64encode(Path(plot.path).read_bytes()).decode("ascii")
    caption = escape(plot.title) + (f" ({escape(plot.note)})" if plot.note else "")
    return (f"<figure><img alt=\"{escape(plot.title)}\" src=\"data:image/png;base64,{data}\">"
            f"<figcaption>{caption}</figcaption></figure>")


def render_html(report: Any, plots: list[Any] | tuple[Any, ...] = ()) -> str:
    """The page for a ``Report`` and its written ``Plot``s (read from disk and embedded)."""
    body = [_section(s, i == 0) for i, s in enumerate(sections(report))]
    if plots:
        body.append("<h2>plots</h2>")
        body += [_figure(p) for p in plots]
    title = escape(f"replay report: {report.overview.get('path') or 'run'}")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(body)
            + "\n</body>\n</html>\n")
