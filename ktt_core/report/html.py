"""HTML building blocks of the report: escaping, number formats, tables, cards and the page.

Everything that comes from data passes through :func:`esc` (``html.escape``): texts and
class names are the users', and a product titled ``<script>alert(1)</script>`` must show
as that text. Only :class:`Markup` (HTML this package wrote itself) is inserted as is.

The page carries its own CSS and two scripts, no more: the first (in ``<head>``) records
script errors in ``window.__kttErrors``; the last makes tables sortable and the class table
filterable, then sets ``data-ready="1"`` and ``data-errors`` on ``<body>`` so a headless
browser can tell that the page works.
"""
from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

import numpy as np


class Markup(str):
    """HTML written by the report itself: inserted without escaping."""


def esc(value) -> str:
    """Text from data, safe in element content and in quoted attributes."""
    return value if isinstance(value, Markup) else html.escape(str(value), quote=True)


def number(value, digits: int = 3) -> str:
    """A score with ``digits`` decimals; a count as an integer; missing (None, NaN) as a dash."""
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    value = float(value)
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def percent(value, digits: int = 1) -> str:
    if value is None or math.isnan(float(value)):
        return "–"
    return f"{100 * float(value):.{digits}f}%"


def cell(value, numeric: bool) -> str:
    """One ``<td>``: numbers formatted, text escaped; a numeric column's cells (numbers and
    preformatted ones such as "12.5%") right-aligned."""
    text = value if isinstance(value, Markup) else esc(value) if isinstance(value, str) else number(value)
    return f'<td class="n">{text}</td>' if numeric else f"<td>{text}</td>"


def table(headers: Sequence[str], rows: Iterable[Sequence], table_id: str = "", sortable: bool = True,
          numeric: Sequence[bool] | None = None, row_classes: Sequence[str] | None = None,
          scroll: bool = False) -> Markup:
    """A table with a header row; ``sortable`` ones sort by a click on a header.

    ``numeric`` marks the columns of numbers, right-aligned (default: guessed from the first row).
    """
    rows = [list(r) for r in rows]
    if numeric is None:
        numeric = [not isinstance(v, str) for v in rows[0]] if rows else [False] * len(headers)
    head = "".join(f'<th{" class=n" if n else ""} scope="col">{esc(h)}</th>' for h, n in zip(headers, numeric))
    body = []
    for i, row in enumerate(rows):
        css = f' class="{esc(row_classes[i])}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{css}>{''.join(cell(v, n) for v, n in zip(row, numeric))}</tr>")
    attrs = (f' id="{esc(table_id)}"' if table_id else "") + (' class="sortable"' if sortable else "")
    out = f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    # A wide table scrolls inside its box rather than widening the page.
    return Markup(f'<div class="{"scroll" if scroll else "hscroll"}">{out}</div>')


def cards(items: Iterable[tuple[str, str, str]], small: bool = False) -> Markup:
    """Big numbers: (label, value, note) each."""
    out = "".join(f'<div class="card"><div class="v">{esc(value)}</div><div class="k">{esc(label)}</div>'
                  + (f'<div class="sub">{esc(note)}</div>' if note else "") + "</div>"
                  for label, value, note in items)
    return Markup(f'<div class="cards{" small" if small else ""}">{out}</div>')


def paragraph(text: str, css: str = "") -> Markup:
    return Markup(f'<p{f" class={css}" if css else ""}>{esc(text)}</p>')


def empty(text: str) -> Markup:
    """The sentence a section shows instead of data it does not have."""
    return paragraph(text, "empty")


def section(section_id: str, title: str, *parts: str) -> Markup:
    return Markup(f'<section id="{section_id}"><h2>{esc(title)}</h2>{"".join(parts)}</section>')


def figure(svg: str, caption: str = "") -> Markup:
    """A chart (SVG written by :mod:`ktt_core.report.charts`) with an optional caption."""
    return Markup(f"<figure>{svg}" + (f"<figcaption>{esc(caption)}</figcaption>" if caption else "")
                  + "</figure>")


def page(title: str, header: str, nav: Sequence[tuple[str, str]], sections: Sequence[str]) -> str:
    """The whole document: head with CSS and the error recorder, nav, sections, main script."""
    links = "".join(f'<li><a href="#{esc(anchor)}">{esc(name)}</a></li>' for anchor, name in nav)
    return ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><script>{ERROR_RECORDER}</script><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>"
            f'<body><header>{header}</header><nav><ul>{links}</ul></nav>'
            f'<main>{"".join(sections)}</main><script>{SCRIPT}</script></body></html>\n')


# Errors of any script on the page, for a headless browser to read from <body data-errors>.
ERROR_RECORDER = ("window.__kttErrors=[];window.addEventListener('error',"
                  "e=>window.__kttErrors.push(String(e.message)))")

# Sorting: numbers (a trailing % allowed) before text, missing values ("–") last in both
# directions; ties keep their order. Filtering: rows whose text contains the query.
SCRIPT = """
try{(function(){
var each=function(list,f){Array.prototype.forEach.call(list,f)};
function key(td){var t=td?td.textContent.trim():'';
 if(/^[-+]?\\d*\\.?\\d+(e[-+]?\\d+)?%?$/i.test(t))return[0,parseFloat(t)];
 return t===''||t==='\\u2013'?[2,'']:[1,t.toLowerCase()]}
each(document.querySelectorAll('table.sortable'),function(table){
 var heads=table.tHead.rows[0].cells;
 each(heads,function(th,col){th.tabIndex=0;
  var sort=function(){var dir=th.getAttribute('aria-sort')==='ascending'?'descending':'ascending',
   sign=dir==='ascending'?1:-1,body=table.tBodies[0];
   each(heads,function(h){h.removeAttribute('aria-sort')});th.setAttribute('aria-sort',dir);
   Array.prototype.map.call(body.rows,function(r,i){return[key(r.cells[col]),i,r]})
   .sort(function(a,b){return a[0][0]-b[0][0]||sign*(a[0][1]<b[0][1]?-1:a[0][1]>b[0][1]?1:0)||a[1]-b[1]})
   .forEach(function(x){body.appendChild(x[2])})};
  th.addEventListener('click',sort);
  th.addEventListener('keydown',function(e){if(e.key==='Enter')sort()})})});
each(document.querySelectorAll('input[data-filter]'),function(box){
 var table=document.getElementById(box.getAttribute('data-filter')),
  count=document.getElementById(box.id+'-count');
 box.addEventListener('input',function(){var q=box.value.trim().toLowerCase(),shown=0,rows=table.tBodies[0].rows;
  each(rows,function(r){var hit=!q||r.textContent.toLowerCase().indexOf(q)>=0;r.hidden=!hit;if(hit)shown++});
  if(count)count.textContent=shown+' of '+rows.length+' rows'})});
})()}catch(e){window.__kttErrors.push(String(e))}
document.body.dataset.ready="1";document.body.dataset.errors=String(window.__kttErrors.length);
""".strip()

CSS = """
:root{--fg:#1c2230;--muted:#5d6678;--line:#e2e6ec;--zebra:#f6f8fa;--head:#eef2f6;--accent:#1f77b4}
*{box-sizing:border-box}
html{scroll-behavior:smooth}
body{margin:0;color:var(--fg);background:#f7f8fa;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,"Noto Sans","Liberation Sans",sans-serif}
header,main,nav ul{max-width:1200px;margin:0 auto;padding-left:20px;padding-right:20px}
header{padding-top:22px;padding-bottom:10px}
header h1{margin:0 0 4px;font-size:26px}
header .meta{color:var(--muted);margin:0}
nav{position:sticky;top:0;z-index:10;background:rgba(255,255,255,.96);border-bottom:1px solid var(--line);
box-shadow:0 1px 3px rgba(0,0,0,.04)}
nav ul{display:flex;flex-wrap:wrap;gap:4px 20px;list-style:none;padding-top:8px;padding-bottom:8px;margin:0 auto}
nav a{color:var(--accent);text-decoration:none;font-weight:500}
nav a:hover{text-decoration:underline}
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:16px 22px 20px;margin:20px 0;
scroll-margin-top:52px}
h2{margin:0 0 10px;font-size:20px}
h3{margin:18px 0 6px;font-size:16px}
p{margin:6px 0}
ul.facts{margin:8px 0 14px;padding-left:20px}
.empty,.note{color:var(--muted)}
.empty{font-style:italic}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:12px;margin:12px 0}
.card{border:1px solid var(--line);border-radius:8px;padding:10px 14px;background:#fbfcfd}
.card .v{font-size:30px;font-weight:650;line-height:1.15;font-variant-numeric:tabular-nums}
.card .k{color:var(--muted);font-size:13px}
.card .sub{color:var(--muted);font-size:12px}
.cards.small{grid-template-columns:repeat(auto-fill,minmax(140px,1fr))}
.cards.small .v{font-size:20px}
table{border-collapse:collapse;font-size:13.5px;margin:0}
.hscroll{overflow-x:auto;margin:6px 0 12px}
th,td{padding:5px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:var(--head);font-weight:600;vertical-align:bottom}
.n{text-align:right}
td.n{font-variant-numeric:tabular-nums;white-space:nowrap}
tbody tr:nth-child(even){background:var(--zebra)}
tbody tr:hover{background:#eaf1f9}
tr.me td{font-weight:650;background:#e6f0fa}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th::after{content:" \\2195";opacity:.3}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2";opacity:1}
table.sortable th[aria-sort=descending]::after{content:" \\25BC";opacity:1}
.scroll{max-height:600px;overflow:auto;border:1px solid var(--line);border-radius:6px;margin:6px 0 12px}
.scroll table{width:100%}
.scroll th{position:sticky;top:0;z-index:1}
span.text{display:block;min-width:240px;max-width:520px;overflow-wrap:anywhere}
.badge{display:inline-block;padding:0 8px;border-radius:10px;font-size:12px;white-space:nowrap}
.badge.sibling{background:#e2f3e2;color:#1f6a1f}
.badge.cross{background:#fde4e4;color:#9a1d1d}
.badge.top{background:#eceff3;color:#3d4553}
.filter{font:inherit;padding:5px 9px;border:1px solid #c8ced8;border-radius:6px;width:320px;max-width:100%}
.count{color:var(--muted);margin-left:10px;font-size:13px}
.charts{display:flex;flex-wrap:wrap;gap:10px 18px}
.charts figure{flex:1 1 300px;max-width:400px}
figure{margin:6px 0}
figcaption{color:var(--muted);font-size:13px}
svg.chart{width:100%;height:auto;display:block}
.wide{max-width:1000px}
.peers{max-width:820px}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:0 28px}
""".replace("\n", "")
