"""A one-page report of any network: one self-contained HTML file (CSS, JavaScript, SVG and images inline; it loads
nothing from anywhere).

It holds the totals of :func:`convatlas.analysis.summary`, the stages and blocks with their branches, the growth of
the receptive field and the parameters and MACs per stage (:mod:`convatlas.atlas.diagram`), the receptive fields on
a picture next to the effective field (:mod:`convatlas.atlas.field`), and the per-layer table, sortable by any column
and collapsible by depth.

>>> from convatlas.atlas import write_report
>>> write_report(model, (3, 224, 224), "report.html")
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from convatlas.analysis import Summary, summary
from convatlas.analysis.erf import MAX_SAMPLES
from convatlas.atlas.diagram import rf_chart, shape_text, si, stage_bars, stage_diagram
from convatlas.atlas.network import Network, network

TOTALS = (
    ("total-params", "parameters", "total_params"),
    ("trainable-params", "trainable", "trainable_params"),
    ("total-macs", "MACs", "total_macs"),
    ("total-other-ops", "other ops", "total_other_ops"),
    ("activation-bytes", "activation memory (bytes)", "activation_bytes"),
    ("param-bytes", "parameter memory (bytes)", "param_bytes"),
)


@dataclass
class Report:
    """What :func:`build_report` made: the page and what it was computed from."""

    html: str
    summary: Summary
    network: Network
    field_png: bytes | None
    notes: list[str]

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        from convatlas.files import atomic_write_text, check_output_file

        check_output_file(path, "out", overwrite=overwrite)
        return atomic_write_text(path, self.html)


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def build_report(
    model: nn.Module,
    input_size,
    *,
    title: str | None = None,
    erf_samples: int = 8,
    image=None,
    seed: int = 0,
) -> Report:
    """Analyse ``model`` and lay the results out as one HTML page.

    Args:
        model: any ``nn.Module`` taking one tensor.
        input_size: the input without the batch dimension, ``(C, H, W)``, ``(C, L)`` or ``(T,)``.
        title: the page's title; by default the model's class name.
        erf_samples: random inputs of the effective receptive field (0: no receptive-field picture). The picture is
            drawn for image models (``(C, H, W)`` with 1 or 3 channels).
        image: the picture the fields are drawn on (see :func:`convatlas.atlas.field.load_image`).
        seed: seed of the effective field's inputs.

    Returns:
        A :class:`Report`; ``report.save(path)`` writes it.
    """
    if isinstance(erf_samples, bool) or not isinstance(erf_samples, int) or not 0 <= erf_samples <= MAX_SAMPLES:
        raise ValueError(f"erf_samples must be an int in 0..{MAX_SAMPLES}, got {erf_samples!r}")
    table = summary(model, input_size)
    net = network(model, input_size)
    notes = list(table.notes)
    field_png = None
    size = tuple(table.input_size)
    if erf_samples and len(size) == 3 and size[0] in (1, 3):
        from convatlas.atlas.field import field_figure, load_image

        image = load_image(image)  # a picture that cannot be read is the caller's error, not a note on the page
        try:
            field_png = field_figure(model, size, image=image, samples=erf_samples, seed=seed, net=net).png
        except ValueError as err:
            notes.append(f"no receptive-field picture: {err}")
    elif erf_samples:
        notes.append(f"no receptive-field picture: it is drawn for image inputs (C, H, W) with 1 or 3 channels, "
                     f"not {'x'.join(map(str, size))}")  # fmt: skip
    page = _page(title or table.model, table, net, field_png, notes)
    return Report(page, table, net, field_png, notes)


def write_report(model: nn.Module, input_size, path: str | Path, *, overwrite: bool = False, **options) -> Report:
    """:func:`build_report` and save it to ``path`` (checked first; replaced only with ``overwrite``)."""
    from convatlas.files import check_output_file

    check_output_file(path, "out", overwrite=overwrite)
    report = build_report(model, input_size, **options)
    report.save(path, overwrite=True)
    return report


# ------------------------------------------------------------------------------------------------------------------
# The page


def _totals(table: Summary, net: Network) -> str:
    cells = []
    for key, label, attr in TOTALS:
        value = getattr(table, attr)
        shown = f"{value:,}" if "bytes" not in key else _bytes(value)
        cells.append(
            f'<div class="total"><span class="label">{_e(label)}</span>'
            f'<span class="value" id="{key}" data-value="{value}">{_e(shown)}</span></div>'
        )
    last = next((s for s in reversed(net.stages) if s.jump is not None), None)
    if last is not None and last.rf is not None:
        rf = "x".join(map(str, last.rf))
        cells.append(
            f'<div class="total"><span class="label">receptive field of the last feature map</span>'
            f'<span class="value" id="receptive-field">{_e(rf)}</span></div>'
        )
    return '<div class="totals">' + "".join(cells) + "</div>"


def _bytes(value: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value} B"


def _table(table: Summary) -> str:
    heads = [
        ("layer", "text"),
        ("type", "text"),
        ("output shape", "text"),
        ("params", "num"),
        ("MACs", "num"),
        ("other ops", "num"),
        ("receptive field", "num"),
        ("jump", "num"),
        ("start", "num"),
        ("activation", "num"),
    ]
    head = "".join(f'<th data-kind="{kind}" title="sort by {name}">{_e(name)}</th>' for name, kind in heads)
    paths = [row.path for row in table.rows]
    parents = {p.rpartition(".")[0] for p in paths}
    rows = []
    for i, row in enumerate(table.rows):
        has_children = row.path in parents
        toggle = (
            '<button class="toggle" aria-label="collapse">&#9662;</button>'
            if has_children
            else ('<span class="leaf"></span>')
        )
        name = row.path.rpartition(".")[2] if row.depth > 1 else row.path
        rf = max(row.rf_size) if row.rf_size else -1
        rf_text = "-" if row.rf_size is None else ("global" if row.rf_jump is None else "x".join(map(str, row.rf_size)))
        jump = max(row.rf_jump) if row.rf_jump else -1
        start = row.rf_start[0] if row.rf_start else 0
        cells = [
            (name, name, f' style="padding-left:{(row.depth - 1) * 14 + 4}px" title="{_e(row.path)}"', toggle),
            (row.type, row.type, "", ""),
            (shape_text(row.output_shape) if not isinstance(row.output_shape, list) else "several", "", "", ""),
            (f"{row.params:,}", row.params, "", ""),
            (si(row.macs) if row.macs else "--", row.macs, "", ""),
            (si(row.other_ops) if row.other_ops else "--", row.other_ops, "", ""),
            (rf_text, rf, "", ""),
            ("-" if row.rf_jump is None else "x".join(dict.fromkeys(f"{j:g}" for j in row.rf_jump)), jump, "", ""),
            ("-" if row.rf_start is None else ", ".join(dict.fromkeys(f"{s:g}" for s in row.rf_start)), start, "", ""),
            (_bytes(row.activation_bytes), row.activation_bytes, "", ""),
        ]
        tds = "".join(f'<td data-sort="{_e(sort)}"{attrs}>{pre}{_e(text)}</td>' for text, sort, attrs, pre in cells)
        rows.append(f'<tr data-index="{i}" data-depth="{row.depth}" data-path="{_e(row.path)}">{tds}</tr>')
    depth = max((r.depth for r in table.rows), default=1)
    options = "".join(f'<option value="{d}">{d}</option>' for d in range(1, depth + 1))
    controls = (
        f'<div class="controls"><label>show depth <select id="depth"><option value="all">all</option>{options}'
        '</select></label> <button id="tree-order">tree order</button> <button id="expand-all">expand all</button>'
        ' <span class="hint">click a column to sort; click &#9662; to fold a module</span></div>'
    )
    return f'{controls}<table id="layers"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


CSS = """
body { font-family: "DejaVu Sans", Verdana, Arial, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px 0; } h2 { font-size: 16px; margin: 28px 0 8px 0; border-bottom: 1px solid #ddd; }
.sub { color: #555; font-size: 13px; margin-bottom: 12px; }
.totals { display: flex; flex-wrap: wrap; gap: 10px; }
.total { border: 1px solid #c9d3e0; border-radius: 6px; padding: 8px 12px; background: #f7f9fc; min-width: 150px; }
.total .label { display: block; font-size: 11px; color: #555; } .total .value { font-size: 17px; font-weight: bold; }
.charts { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12px; }
th { background: #eef2f7; cursor: pointer; position: sticky; top: 0; padding: 4px 8px; text-align: left; }
th.asc::after { content: " \\25B4"; } th.desc::after { content: " \\25BE"; }
td { padding: 2px 8px; border-bottom: 1px solid #eee; white-space: nowrap; }
td:nth-child(n+4) { text-align: right; font-variant-numeric: tabular-nums; }
tr:hover td { background: #f5f8fc; }
.toggle { border: none; background: none; cursor: pointer; width: 16px; padding: 0; font-size: 11px; }
.leaf { display: inline-block; width: 16px; }
.controls { margin: 6px 0; font-size: 13px; } .hint { color: #777; font-size: 12px; }
.notes li { font-size: 12px; color: #555; }
img.field { max-width: 100%; border: 1px solid #ddd; }
"""

SCRIPT = """
(function () {
  "use strict";
  var table = document.getElementById("layers");
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var folded = {};
  var maxDepth = Infinity;
  function isHidden(row) {
    if (Number(row.dataset.depth) > maxDepth) { return true; }
    var path = row.dataset.path;
    for (var key in folded) {
      if (folded[key] && path.indexOf(key + ".") === 0) { return true; }
    }
    return false;
  }
  function refresh() {
    rows.forEach(function (row) { row.style.display = isHidden(row) ? "none" : ""; });
  }
  body.addEventListener("click", function (event) {
    var button = event.target.closest(".toggle");
    if (!button) { return; }
    var path = button.closest("tr").dataset.path;
    folded[path] = !folded[path];
    button.innerHTML = folded[path] ? "&#9656;" : "&#9662;";
    button.setAttribute("aria-label", folded[path] ? "expand" : "collapse");
    refresh();
  });
  document.getElementById("depth").addEventListener("change", function (event) {
    maxDepth = event.target.value === "all" ? Infinity : Number(event.target.value);
    refresh();
  });
  document.getElementById("expand-all").addEventListener("click", function () {
    folded = {};
    maxDepth = Infinity;
    document.getElementById("depth").value = "all";
    Array.prototype.forEach.call(body.querySelectorAll(".toggle"), function (b) { b.innerHTML = "&#9662;"; });
    refresh();
  });
  function order(rowsInOrder) { rowsInOrder.forEach(function (row) { body.appendChild(row); }); }
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  heads.forEach(function (th, column) {
    th.addEventListener("click", function () {
      var ascending = !th.classList.contains("asc");
      heads.forEach(function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(ascending ? "asc" : "desc");
      var numeric = th.dataset.kind === "num";
      var sorted = rows.slice().sort(function (a, b) {
        var x = a.cells[column].dataset.sort, y = b.cells[column].dataset.sort;
        var c = numeric ? Number(x) - Number(y) : x.localeCompare(y);
        if (c === 0) { c = Number(a.dataset.index) - Number(b.dataset.index); }
        return ascending ? c : -c;
      });
      order(sorted);
    });
  });
  document.getElementById("tree-order").addEventListener("click", function () {
    heads.forEach(function (h) { h.classList.remove("asc", "desc"); });
    order(rows);
  });
  refresh();
})();
"""


def _page(title: str, table: Summary, net: Network, field_png: bytes | None, notes: list[str]) -> str:
    from convatlas import __version__

    size = "x".join(map(str, table.input_size))
    field = ""
    if field_png is not None:
        data = base64.b64encode(field_png).decode("ascii")
        field = (
            "<h2>Receptive fields on a picture</h2>"
            '<p class="sub">Left: the theoretical field, per stage, of the output position nearest the centre of the '
            "input (the part inside the picture). Right: the effective receptive field of the last stage's position "
            "(Luo et al. 2016): the mean absolute input gradient over random inputs, through the model's current "
            "weights.</p>"
            f'<img class="field" id="field" alt="receptive fields on a picture" src="data:image/png;base64,{data}">'
        )
    note_items = "".join(f"<li>{_e(n)}</li>" for n in notes)
    notes_html = f'<h2>Notes</h2><ul class="notes">{note_items}</ul>' if notes else ""
    outside = (
        f" {si(net.outside_macs)} MACs run outside every block (functional code in a parent's forward)."
        if net.outside_macs
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="convatlas {_e(__version__)}">
<title>{_e(title)}: convatlas report</title>
<style>{CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
<div class="sub">{_e(table.model)}, input {_e(size)} (batch 1), analysed on {_e(table.device)} by convatlas
{_e(__version__)}. MACs count multiply-accumulates of convolutions and matrix products; other ops are the elements
written by every other operator.</div>
{_totals(table, net)}
<h2>Stages and blocks</h2>
<p class="sub">Each row is a stage: consecutive blocks whose outputs share one stride. A block shows its layers in call
order, the layers (or the block input, top dot) each one reads, and how its output is made (a red circle: paths merged
by the operator named; dashed: the identity path).{_e(outside)} Hover for shapes, parameters, MACs and fields.</p>
<div class="scroll" id="diagram">{stage_diagram(net)}</div>
<h2>Receptive field, parameters and MACs</h2>
<div class="charts" id="charts">{rf_chart(net)}<div>{stage_bars(net, "params")}{stage_bars(net, "macs")}</div></div>
{field}
<h2>Layers</h2>
<div class="scroll">{_table(table)}</div>
{notes_html}
<script>{SCRIPT}</script>
</body></html>
"""
