"""A static, self-contained HTML report of an inspection: one file, inline CSS and JS, no network.

The inspection JSON is embedded in the page and rendered by a small script: a searchable feature
list (by feature number, or by text of its top contexts and logit tokens) and, per feature, its
statistics, histogram, top contexts with each token shaded by the feature's activation (orange
positive, blue negative; the activating token outlined), logit effects and ablation results.
Open ``report.html#feature=12`` to land on feature 12.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from interp_sae.atomic import write_text_atomic

REPORT_FILE = "report.html"

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;display:flex;height:100vh;color:#222}
#side{width:260px;border-right:1px solid #ccc;display:flex;flex-direction:column}
#search{margin:8px;padding:6px;font-size:14px}
#list{overflow-y:auto;flex:1;margin:0;padding:0;list-style:none}
#list li{padding:3px 10px;cursor:pointer;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
#list li:hover{background:#eef}#list li.sel{background:#dde}
#list .freq{color:#888;font-size:12px}
#main{flex:1;overflow-y:auto;padding:12px 20px}
h1{font-size:18px;margin:4px 0}h2{font-size:15px;margin:16px 0 6px}
.meta{color:#555;font-size:13px}
table{border-collapse:collapse;font-size:13px}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
.ctx{font-family:ui-monospace,monospace;white-space:pre-wrap;margin:3px 0;padding:3px;border-bottom:1px solid #f0f0f0}
.ctx span.t{border-radius:2px}.ctx span.c{outline:2px solid #c00}
.score{color:#888;font-size:12px;display:inline-block;width:80px}
.cols{display:flex;gap:30px;flex-wrap:wrap}
svg .bar{fill:#e8862a}svg text{font-size:10px;fill:#555}
"""

_JS = r"""
const data = JSON.parse(document.getElementById('inspection').textContent);
const list = document.getElementById('list'), main = document.getElementById('main');
const esc = s => String(s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
const fmt = v => v === null || v === undefined ? '–' : (Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(2) : (+v).toPrecision(4));
const pct = v => (100 * v).toFixed(100 * v >= 10 ? 0 : 100 * v >= 1 ? 1 : 2) + '%';
const shade = (a, m) => {
  if (a === null || !m) return '';
  const x = Math.min(1, Math.abs(a) / m);
  return a >= 0 ? `background:rgba(232,134,42,${x})` : `background:rgba(40,110,230,${x})`;
};
function tokensHtml(tokens, values, center, scale) {
  return tokens.map((t, i) => `<span class="t${i === center ? ' c' : ''}" style="${shade(values[i], scale)}" title="${esc(fmt(values[i]))}">${esc(t)}</span>`).join('');
}
function histogram(f) {
  const counts = f.histogram, edges = data.histogram_edges;
  let lo = counts.findIndex(c => c > 0), hi = counts.length - 1 - [...counts].reverse().findIndex(c => c > 0);
  if (lo < 0) return '<p class="meta">never fires</p>';
  const peak = Math.max(...counts), w = 14, h = 80, n = hi - lo + 1;
  let bars = '';
  for (let i = lo; i <= hi; i++) {
    const bh = Math.round(h * counts[i] / peak), x = (i - lo) * w;
    const range = `[${i ? fmt(edges[i - 1]) : '-∞'}, ${i < edges.length ? fmt(edges[i]) : '∞'})`;
    bars += `<rect class="bar" x="${x}" y="${h - bh}" width="${w - 2}" height="${bh}"><title>${range}: ${counts[i]}</title></rect>`;
  }
  const left = lo ? fmt(edges[lo - 1]) : '-∞', right = hi < edges.length ? fmt(edges[hi]) : '∞';
  return `<svg width="${Math.max(n * w, 120)}" height="${h + 14}">${bars}<text x="0" y="${h + 12}">${left}</text><text x="${Math.max(n * w, 120)}" y="${h + 12}" text-anchor="end">${right}</text></svg>`;
}
function logits(f) {
  if (!f.logits) return '<p class="meta">not computed (no model given)</p>';
  const rows = (xs) => xs.map(x => `<tr><td><code>${esc(JSON.stringify(x.token))}</code></td><td>${fmt(x.logit)}</td></tr>`).join('');
  return `<div class="cols"><table><tr><th>promoted</th><th>logit</th></tr>${rows(f.logits.promoted)}</table>` +
         `<table><tr><th>suppressed</th><th>logit</th></tr>${rows(f.logits.suppressed)}</table></div>`;
}
function ablation(f) {
  const a = f.ablation;
  if (!a) return '<p class="meta">not computed (inspect with --ablate ' + f.feature + ')</p>';
  let out = `<p class="meta">${a.mode}-ablation, error term ${a.with_error ? 'on' : 'off'}; mean Δ loss per token ${fmt(a.mean_delta_loss)} (tokens shaded by their Δ loss: orange up, blue down)</p>`;
  for (const s of a.sequences) {
    const delta = s.tokens.map(() => null);
    for (const p of s.predictions) delta[p.position + 1] = p.delta_loss;
    const scale = Math.max(1e-9, ...delta.map(v => Math.abs(v || 0)));
    out += `<div class="ctx">${tokensHtml(s.tokens, delta, -1, scale)}</div>`;
    const moved = s.most_moved.slice(0, 3).map(m => `<tr><td>${esc(JSON.stringify(m.token))} → ${esc(JSON.stringify(m.next_token))}</td><td>KL ${fmt(m.kl)}</td><td>rose: ${m.rose.slice(0, 3).map(r => esc(JSON.stringify(r.token))).join(' ')}</td><td>fell: ${m.fell.slice(0, 3).map(r => esc(JSON.stringify(r.token))).join(' ')}</td></tr>`).join('');
    out += `<table>${moved}</table>`;
  }
  return out;
}
function show(j) {
  const f = data.features[j];
  for (const li of list.children) li.classList.toggle('sel', +li.dataset.f === j);
  const scale = Math.max(...f.top_examples.flatMap(e => e.activations.map(v => Math.abs(v || 0))), 0);
  const ctx = f.top_examples.map(e => `<div class="ctx"><span class="score">${fmt(e.activation)}</span>${tokensHtml(e.tokens, e.activations, e.center, scale)}</div>`).join('');
  main.innerHTML = `<h1 id="feature-title">Feature ${j}</h1>
    <p class="meta">fires on ${pct(f.frequency)} of tokens (${f.fire_count}) · mean ${fmt(f.mean)} · mean when firing ${fmt(f.mean_when_firing)} · max ${fmt(f.max)} · min ${fmt(f.min)}</p>
    <h2>Activation histogram (firing tokens)</h2>${histogram(f)}
    <h2>Top contexts (ranked by ${esc(data.config.rank_by)})</h2><div id="contexts">${ctx || '<p class="meta">no firing token</p>'}</div>
    <h2>Logit effects</h2>${logits(f)}
    <h2>Ablation on its top contexts</h2>${ablation(f)}`;
  history.replaceState(null, '', '#feature=' + j);
}
const haystack = f => (f.top_examples.map(e => e.text).join(' ') + ' ' +
  (f.logits ? f.logits.promoted.map(x => x.token).join(' ') : '')).toLowerCase();
const hay = data.features.map(haystack);
list.innerHTML = data.features.map(f => `<li data-f="${f.feature}">#${f.feature} <span class="freq">${pct(f.frequency)}</span> ${esc((f.top_examples[0] || {tokens: []}).tokens[(f.top_examples[0] || {}).center] || '')}</li>`).join('');
list.onclick = e => { const li = e.target.closest('li'); if (li) show(+li.dataset.f); };
document.getElementById('search').oninput = e => {
  const q = e.target.value.trim().toLowerCase();
  for (const li of list.children) {
    const j = +li.dataset.f;
    li.style.display = !q || String(j) === q.replace('#', '') || hay[j].includes(q) ? '' : 'none';
  }
};
const asked = /feature=(\d+)/.exec(location.hash);
const first = data.features.findIndex(f => f.top_examples.length);
if (data.features.length) show(asked && +asked[1] < data.features.length ? +asked[1] : Math.max(first, 0));
"""


def render_report(results: dict[str, Any]) -> str:
    """The report page for an inspection (see module docstring)."""
    payload = json.dumps(results, ensure_ascii=False).replace("<", "\\u003c")  # so no text can close the script
    down = results.get("downstream")
    summary = (
        f"loss clean {down['clean_loss']:.4f}, spliced {down['spliced_loss']:.4f}, zero-ablated "
        f"{down['zero_ablated_loss']:.4f}; fraction of loss recovered {down['fraction_recovered']:.3f} "
        f"({down['predictions']} predictions, split {down['split']})"
        if down and down.get("fraction_recovered") is not None
        else "loss recovered: not computed (no model given)"
    )
    title = f"{results['architecture']} · {results['hook']} · {results['n_features']} features"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body><div id="side"><input id="search" placeholder="search features: number or text"><ul id="list"></ul></div>
<div id="main-wrap" style="flex:1;display:flex;flex-direction:column;overflow:hidden">
<div style="padding:8px 20px;border-bottom:1px solid #ccc"><b>{html.escape(title)}</b>
<span class="meta"> · {results["tokens"]:,} tokens of {html.escape(str(results["store"]))} · {html.escape(summary)}</span></div>
<div id="main"></div></div>
<script type="application/json" id="inspection">{payload}</script>
<script>{_JS}</script>
</body></html>
"""


def write_report(results: dict[str, Any], out_dir: str | Path) -> Path:
    """Write `out_dir/report.html` atomically; returns its path."""
    return write_text_atomic(Path(out_dir) / REPORT_FILE, render_report(results))
