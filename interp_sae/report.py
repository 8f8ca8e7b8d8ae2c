"""A static HTML report of an inspection: an index page and one small page per feature, no network.

- ``report.html``: the feature list (number, frequency, max activation, loss effect, top tokens),
  searchable by feature number or by top token / promoted logit token, sortable by clicking a
  column header, shown beside the selected feature's page. Only the list's summary is embedded,
  and only the first rows that match are drawn, so it opens quickly however wide the dictionary.
  The state lives in the address: ``report.html#feature=12&q=dog&sort=-max``.
- ``features/<j>.html``: everything about feature j, rendered by interp_sae.browser (the
  notebook views are the same code); neighbours link to their pages.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from interp_sae.atomic import fsync_folder, write_text_atomic
from interp_sae.browser import CSS, feature_html, top_tokens

REPORT_FILE = "report.html"
FEATURES_FOLDER = "features"
_SHOWN_ROWS = 500  # rows of the list drawn at once; "more" draws the next ones

_INDEX_CSS = """
body{margin:0;display:flex;height:100vh}
#side{width:520px;border-right:1px solid #ccc;display:flex;flex-direction:column}
#search{margin:8px;padding:6px;font-size:14px}
#list-wrap{overflow-y:auto;flex:1}
#list{width:100%}#list th{cursor:pointer;position:sticky;top:0;background:#fff;user-select:none}
#list th.sorted::after{content:attr(data-arrow)}
#list tbody tr{cursor:pointer}#list tbody tr:hover{background:#eef}#list tbody tr.sel{background:#dde}
#list td.tok{max-width:190px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;font-family:ui-monospace,monospace}
#more{margin:6px 8px}
#main-wrap{flex:1;display:flex;flex-direction:column}
#head{padding:8px 20px;border-bottom:1px solid #ccc}
#page{flex:1;border:0;width:100%}
"""

_INDEX_JS = r"""
const rows = JSON.parse(document.getElementById('summary').textContent);  // [j, freq, max, loss, tokens, haystack]
const COLUMNS = {feature: 0, frequency: 1, max: 2, loss_effect: 3};
const body = document.querySelector('#list tbody'), search = document.getElementById('search');
const page = document.getElementById('page'), more = document.getElementById('more');
const fmt = v => v === null ? '–' : (Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(2) : (+v).toPrecision(4));
const pct = v => (100 * v).toFixed(100 * v >= 10 ? 0 : 100 * v >= 1 ? 1 : 2) + '%';
const esc = s => String(s).replace(/[&<>"]/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c]));
let state = {feature: null, q: '', sort: '-frequency'}, shown = 0, matching = [];

function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  state = {feature: p.has('feature') ? +p.get('feature') : state.feature, q: p.get('q') || '', sort: p.get('sort') || '-frequency'};
}
function writeHash() {
  const p = new URLSearchParams();
  if (state.feature !== null) p.set('feature', state.feature);
  if (state.q) p.set('q', state.q);
  p.set('sort', state.sort);
  history.replaceState(null, '', '#' + p.toString());
}
function matches(row, q) {
  if (!q) return true;
  const number = q.replace(/^#/, '');
  return /^\d+$/.test(number) ? String(row[0]) === number : row[5].includes(q);
}
function order() {
  const desc = state.sort.startsWith('-'), col = COLUMNS[state.sort.replace('-', '')];
  const key = r => r[col] === null ? -Infinity : r[col];
  matching = rows.filter(r => matches(r, state.q.toLowerCase()));
  matching.sort((a, b) => (desc ? key(b) - key(a) : key(a) - key(b)) || a[0] - b[0]);
  for (const th of document.querySelectorAll('#list th[data-sort]')) {
    const on = th.dataset.sort === state.sort.replace('-', '');
    th.classList.toggle('sorted', on);
    th.dataset.arrow = on ? (desc ? ' ▼' : ' ▲') : '';
  }
  body.innerHTML = ''; shown = 0; drawMore();
}
function drawMore() {
  const next = matching.slice(shown, shown + __SHOWN_ROWS__);
  body.insertAdjacentHTML('beforeend', next.map(r => `<tr data-f="${r[0]}"${r[0] === state.feature ? ' class="sel"' : ''}><td>#${r[0]}</td><td>${pct(r[1])}</td><td>${fmt(r[2])}</td><td>${fmt(r[3])}</td><td class="tok" title="${esc(r[4])}">${esc(r[4])}</td></tr>`).join(''));
  shown += next.length;
  more.hidden = shown >= matching.length;
  more.textContent = `show ${Math.min(__SHOWN_ROWS__, matching.length - shown)} more of ${matching.length - shown}`;
  document.getElementById('count').textContent = `${matching.length} of ${rows.length} features`;
}
function select(j, load = true) {
  state.feature = j; writeHash();
  for (const tr of body.children) tr.classList.toggle('sel', +tr.dataset.f === j);
  if (load) page.src = `__FEATURES__/${j}.html`;
}
search.oninput = () => { state.q = search.value.trim(); writeHash(); order(); };
document.querySelector('#list thead').onclick = e => {
  const th = e.target.closest('th[data-sort]');
  if (!th) return;
  const name = th.dataset.sort;
  state.sort = state.sort === '-' + name ? name : '-' + name;  // first click: largest first; again: flip
  writeHash(); order();
};
body.onclick = e => { const tr = e.target.closest('tr'); if (tr) select(+tr.dataset.f); };
more.onclick = drawMore;
window.addEventListener('message', e => { if (e.data && Number.isInteger(e.data.feature)) select(e.data.feature, false); });
readHash();
search.value = state.q;
order();
const firing = rows.find(r => r[1] > 0);
if (state.feature === null && rows.length) state.feature = (firing || rows[0])[0];
if (state.feature !== null) select(state.feature);
"""

_FEATURE_JS = """
if (window.parent !== window) window.parent.postMessage({feature: __FEATURE__}, '*');  // keep the list in step
"""


def _summary_row(feature: dict) -> list[Any]:
    tokens = top_tokens(feature)
    promoted = [x["token"] for x in (feature.get("logits") or {}).get("promoted", [])]
    haystack = " ".join(tokens + promoted).lower()
    return [
        feature["feature"],
        feature["frequency"],
        feature["max"],
        feature.get("loss_effect"),
        " · ".join(tokens),
        haystack,
    ]


def _json_for_script(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c")  # so no text can close the script


def _summary_line(results: dict[str, Any]) -> str:
    down = results.get("downstream")
    if down and down.get("fraction_recovered") is not None:
        return (
            f"loss clean {down['clean_loss']:.4f}, spliced {down['spliced_loss']:.4f}, zero-ablated "
            f"{down['zero_ablated_loss']:.4f}; fraction of loss recovered {down['fraction_recovered']:.3f} "
            f"({down['predictions']} predictions, split {down['split']})"
        )
    return "loss recovered: not computed (no model given)"


def _left_out(results: dict[str, Any]) -> str:
    """How many vectors over the dictionary's norm cap were left out (files before it: none said)."""
    if not results.get("tokens_left_out"):
        return ""
    return f" ({results['tokens_left_out']:,} longer than the training norm cap {results['max_norm']:.4g} left out)"


def _title(results: dict[str, Any]) -> str:
    return f"{results['architecture']} · {results['hook']} · {results['n_features']} features"


def render_index(results: dict[str, Any]) -> str:
    """The report's index page (see module docstring)."""
    title = html.escape(_title(results))
    columns = "".join(
        f'<th data-sort="{key}">{label}</th>'
        for key, label in (("feature", "#"), ("frequency", "freq"), ("max", "max"), ("loss_effect", "loss effect"))
    )
    script = _INDEX_JS.replace("__SHOWN_ROWS__", str(_SHOWN_ROWS)).replace("__FEATURES__", FEATURES_FOLDER)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{CSS}{_INDEX_CSS}</style></head>
<body class="isae"><div id="side"><input id="search" placeholder="search: feature number, or a top or promoted token">
<div class="meta" style="margin:0 8px" id="count"></div>
<div id="list-wrap"><table id="list"><thead><tr>{columns}<th>top tokens</th></tr></thead><tbody></tbody></table>
<button id="more" hidden></button></div></div>
<div id="main-wrap"><div id="head"><b>{title}</b>
<span class="meta"> · {results["tokens"]:,} tokens of {html.escape(str(results["store"]))}{_left_out(results)} ·
{html.escape(_summary_line(results))}. Loss effect: estimated Δ loss per token if the feature is zero-ablated.</span></div>
<iframe id="page" title="feature"></iframe></div>
<script type="application/json" id="summary">{_json_for_script([_summary_row(f) for f in results["features"]])}</script>
<script>{script}</script>
</body></html>
"""


def render_feature_page(results: dict[str, Any], j: int) -> str:
    """The page of feature `j`: its browser view, with links to its neighbours, the list and j ± 1."""
    last = results["n_features"] - 1
    nav = " · ".join(
        [f'<a href="../{REPORT_FILE}#feature={j}" target="_top">feature list</a>']
        + ([f'<a href="{j - 1}.html">← #{j - 1}</a>'] if j > 0 else [])
        + ([f'<a href="{j + 1}.html">#{j + 1} →</a>'] if j < last else [])
    )
    view = feature_html(results, j, link=lambda k: f"{k}.html")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Feature {j} · {html.escape(_title(results))}</title>
<style>{CSS}body{{margin:12px 20px}}</style></head>
<body class="isae"><p class="meta">{nav}</p>{view}<script>{_FEATURE_JS.replace("__FEATURE__", str(j))}</script></body></html>
"""


def write_report(results: dict[str, Any], out_dir: str | Path) -> Path:
    """Write `out_dir/features/<j>.html` and then `out_dir/report.html`; returns the index.

    The pages go to a fresh folder that replaces the old one whole (one fsync, not one per page:
    a wide dictionary has tens of thousands), so a reader never sees a mix of two reports."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{FEATURES_FOLDER}.", suffix=".tmp"))
    fresh.chmod(0o755)  # mkdtemp's folder is private; a report is for reading
    for j in range(results["n_features"]):
        (fresh / f"{j}.html").write_text(render_feature_page(results, j), encoding="utf-8")
    os.sync()
    pages, stale = out_dir / FEATURES_FOLDER, out_dir / f".{FEATURES_FOLDER}.old"
    shutil.rmtree(stale, ignore_errors=True)
    if pages.exists():
        pages.rename(stale)
    fresh.rename(pages)
    fsync_folder(out_dir)
    shutil.rmtree(stale, ignore_errors=True)
    return write_text_atomic(out_dir / REPORT_FILE, render_index(results))
