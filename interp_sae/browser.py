"""Feature views as HTML: one code for the report's pages and for notebooks.

    from interp_sae.browser import Browser
    browser = Browser("runs/demo/inspect")     # an `interp-sae inspect --out` folder
    browser.show_feature(12)                    # stats, histogram, contexts, quantiles, neighbours, logits
    browser.feature_table(sort_by="max")        # the feature list, sorted
    browser.show_text("The quick brown fox")    # which features fire on this text (loads the model)
    browser.show_steering(12, 8.0, "Once upon") # generation with feature 12 added, beside the plain one

Every view is an `HTMLView`: a string of HTML that notebooks display (it has `_repr_html_`) and
the report writes into its pages. Styles are scoped to `.isae`, so a notebook's own are untouched.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from interp_sae.errors import ConfigError

CSS = """
.isae{font:14px/1.4 system-ui,sans-serif;color:#222}
.isae h1{font-size:18px;margin:4px 0}.isae h2{font-size:15px;margin:16px 0 6px}
.isae .meta{color:#555;font-size:13px}
.isae table{border-collapse:collapse;font-size:13px}
.isae td,.isae th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
.isae .ctx{font-family:ui-monospace,monospace;white-space:pre-wrap;margin:3px 0;padding:3px;border-bottom:1px solid #f0f0f0}
.isae .ctx span{border-radius:2px}.isae .ctx span.c{outline:2px solid #c00}
.isae .score{color:#888;font-size:12px;display:inline-block;width:80px}
.isae .cols{display:flex;gap:30px;flex-wrap:wrap}
.isae svg .bar{fill:#e8862a}.isae svg text{font-size:10px;fill:#555}
.isae .gen{font-family:ui-monospace,monospace;white-space:pre-wrap;padding:6px;background:#f7f7f7;margin:4px 0}
""" + "".join(  # shading classes p1…p10 (orange, positive) and n1…n10 (blue, negative): short markup per token
    f".isae .{sign}{level}{{background:rgba({colour},{level / 10:.1f})}}"
    for sign, colour in (("p", "232,134,42"), ("n", "40,110,230"))
    for level in range(1, 11)
)

FeatureLink = Callable[[int], str]
"""Feature index → the href of its view (the report's pages link to each other)."""


class HTMLView(str):
    """HTML that renders in a notebook: `display(view)` or a cell's last expression."""

    def _repr_html_(self) -> str:
        return f'<style>{CSS}</style><div class="isae">{self}</div>'

    def __repr__(self) -> str:  # what a plain-text frontend shows instead of pages of markup
        return f"<HTMLView: {len(self):,} characters of HTML; display it in a notebook>"


def fmt(value: float | None) -> str:
    """A number in four significant digits (exponent form when very large or small); – for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3):
        return f"{value:.2e}"
    return f"{value:.4g}"


def pct(fraction: float) -> str:
    percent = 100 * fraction
    return f"{percent:.{0 if percent >= 10 else 1 if percent >= 1 else 2}f}%"


def _shade(value: float | None, scale: float) -> str:
    """The shading class of a value: its share of `scale` in tenths, p for positive, n for negative."""
    if value is None or not scale:
        return ""
    level = round(10 * min(1.0, abs(value) / scale))
    return f"{'p' if value >= 0 else 'n'}{level}" if level else ""


def tokens_html(tokens: Sequence[str], values: Sequence[float | None], center: int, scale: float) -> str:
    """Tokens shaded by their values (hover shows the value); token `center` outlined."""
    spans = []
    for i, (token, value) in enumerate(zip(tokens, values)):
        classes = " ".join(c for c in (_shade(value, scale), "c" if i == center else "") if c)
        attribute = f' class="{classes}"' if classes else ""
        spans.append(f'<span{attribute} title="{html.escape(fmt(value))}">{html.escape(token)}</span>')
    return "".join(spans)


def _scale(examples: Sequence[dict]) -> float:
    return max((abs(v) for e in examples for v in e["activations"] if v is not None), default=0.0)


def examples_html(examples: Sequence[dict], scale: float | None = None) -> str:
    """One line per example: its activation, then its context shaded by the feature."""
    scale = _scale(examples) if scale is None else scale
    return "".join(
        f'<div class="ctx"><span class="score">{fmt(e["activation"])}</span>'
        f"{tokens_html(e['tokens'], e['activations'], e['center'], scale)}</div>"
        for e in examples
    )


def histogram_svg(counts: Sequence[int], edges: Sequence[float]) -> str:
    """Bars for the occupied bins of a firing-activation histogram (bin i: edges[i−1] ≤ v < edges[i])."""
    used = [i for i, c in enumerate(counts) if c]
    if not used:
        return '<p class="meta">never fires</p>'
    lo, hi = used[0], used[-1]
    peak, width, height = max(counts), 14, 80

    def edge(i: int) -> str:
        return "-∞" if i < 0 else "∞" if i >= len(edges) else fmt(edges[i])

    bars = ""
    for i in range(lo, hi + 1):
        bar = round(height * counts[i] / peak)
        bars += (
            f'<rect class="bar" x="{(i - lo) * width}" y="{height - bar}" width="{width - 2}" height="{bar}">'
            f"<title>[{edge(i - 1)}, {edge(i)}): {counts[i]}</title></rect>"
        )
    total = max((hi - lo + 1) * width, 120)
    return (
        f'<svg width="{total}" height="{height + 14}">{bars}'
        f'<text x="0" y="{height + 12}">{edge(lo - 1)}</text>'
        f'<text x="{total}" y="{height + 12}" text-anchor="end">{edge(hi)}</text></svg>'
    )


def _token_table(rows: Sequence[dict], header: str, value_key: str) -> str:
    cells = "".join(
        f"<tr><td><code>{html.escape(json.dumps(r['token'], ensure_ascii=False))}</code></td>"
        f"<td>{fmt(r[value_key])}</td></tr>"
        for r in rows
    )
    return f"<table><tr><th>{header}</th><th>{value_key}</th></tr>{cells}</table>"


def logits_html(feature: dict) -> str:
    effects = feature.get("logits")
    if not effects:
        return '<p class="meta">not computed (no model given)</p>'
    promoted = _token_table(effects["promoted"], "promoted", "logit")
    suppressed = _token_table(effects["suppressed"], "suppressed", "logit")
    return f'<div class="cols">{promoted}{suppressed}</div>'


def ablation_html(feature: dict) -> str:
    result = feature.get("ablation")
    if not result:
        return f'<p class="meta">not computed (inspect with --ablate {feature["feature"]})</p>'
    out = (
        f'<p class="meta">{result["mode"]}-ablation, error term {"on" if result["with_error"] else "off"}; '
        f"mean Δ loss per token {fmt(result['mean_delta_loss'])} "
        "(tokens shaded by their Δ loss: orange up, blue down)</p>"
    )
    for sequence in result["sequences"]:
        delta: list[float | None] = [None] * len(sequence["tokens"])
        for p in sequence["predictions"]:
            delta[p["position"] + 1] = p["delta_loss"]
        scale = max([abs(v) for v in delta if v is not None] + [1e-9])
        out += f'<div class="ctx">{tokens_html(sequence["tokens"], delta, -1, scale)}</div>'
        moved = "".join(
            f"<tr><td>{html.escape(json.dumps(m['token']))} → {html.escape(json.dumps(m['next_token']))}</td>"
            f"<td>KL {fmt(m['kl'])}</td>"
            f"<td>rose: {' '.join(html.escape(json.dumps(r['token'])) for r in m['rose'][:3])}</td>"
            f"<td>fell: {' '.join(html.escape(json.dumps(r['token'])) for r in m['fell'][:3])}</td></tr>"
            for m in sequence["most_moved"][:3]
        )
        out += f"<table>{moved}</table>"
    return out


def _feature_ref(j: int, link: FeatureLink | None) -> str:
    return f'<a href="{html.escape(link(j))}">#{j}</a>' if link else f"#{j}"


def neighbours_html(feature: dict, link: FeatureLink | None) -> str:
    found = feature.get("neighbours")
    if not found:
        return '<p class="meta">not computed</p>'
    by_direction = "".join(
        f"<tr><td>{_feature_ref(n['feature'], link)}</td><td>{n['cosine']:.3f}</td></tr>" for n in found["decoder"]
    )
    by_firing = "".join(
        f"<tr><td>{_feature_ref(n['feature'], link)}</td><td>{pct(n['fraction'])}</td><td>{n['count']}</td></tr>"
        for n in found["cofiring"]
    )
    if not by_firing:
        by_firing = '<tr><td colspan="3" class="meta">fires with no other feature in the counted tokens</td></tr>'
    return (
        f'<div class="cols"><table id="neighbours-decoder"><tr><th>decoder direction</th><th>cosine</th></tr>'
        f"{by_direction}</table>"
        f'<table id="neighbours-cofiring"><tr><th>fires with it</th><th>P(it | this)</th><th>tokens</th></tr>'
        f"{by_firing}</table></div>"
        f'<p class="meta">co-firing counted over {found["cofiring_tokens"]:,} tokens</p>'
    )


def quantiles_html(feature: dict, scale: float) -> str:
    sections = feature.get("activation_quantiles") or []
    return "".join(
        f"<h2>{s['name'].capitalize()} activations ({fmt(s['range'][0])} … {fmt(s['range'][1])}), "
        f"sampled uniformly from its firing tokens</h2>"
        f'<div class="quantile" data-section="{s["name"]}">{examples_html(s["examples"], scale)}</div>'
        for s in sections
    )


def feature_html(results: dict[str, Any], j: int, link: FeatureLink | None = None) -> HTMLView:
    """Everything about feature `j` of an inspection; `link` makes its neighbours clickable."""
    if not 0 <= j < results["n_features"]:
        raise ConfigError(f"feature {j} does not exist: the dictionary has features 0 … {results['n_features'] - 1}")
    f = results["features"][j]
    scale = _scale(f["top_examples"])
    effect = f.get("loss_effect")
    loss_effect = "" if effect is None else f" · loss effect ≈ {fmt(effect)} per token if zero-ablated"
    return HTMLView(
        f'<h1 id="feature-title">Feature {j}</h1>'
        f'<p class="meta">fires on {pct(f["frequency"])} of tokens ({f["fire_count"]}) · mean {fmt(f["mean"])} · '
        f"mean when firing {fmt(f['mean_when_firing'])} · max {fmt(f['max'])} · min {fmt(f['min'])}{loss_effect}</p>"
        f"<h2>Activation histogram (firing tokens)</h2>{histogram_svg(f['histogram'], results['histogram_edges'])}"
        f"<h2>Top activations (ranked by {html.escape(results['config']['rank_by'])})</h2>"
        f'<div id="contexts">{examples_html(f["top_examples"], scale) or "<p class=meta>no firing token</p>"}</div>'
        f"{quantiles_html(f, scale)}"
        f"<h2>Neighbours</h2>{neighbours_html(f, link)}"
        f"<h2>Logit effects</h2>{logits_html(f)}"
        f"<h2>Ablation on its top contexts</h2>{ablation_html(f)}"
    )


def top_tokens(feature: dict, n: int = 5) -> list[str]:
    """The distinct tokens its top examples activate on, best first (what the feature list shows)."""
    seen: list[str] = []
    for example in feature["top_examples"]:
        token = example["tokens"][example["center"]]
        if token not in seen:
            seen.append(token)
    return seen[:n]


SORT_KEYS = ("feature", "frequency", "max", "loss_effect")


def feature_table(results: dict[str, Any], sort_by: str = "frequency", page: int = 0, size: int = 25) -> HTMLView:
    """One page of the feature list, sorted by `sort_by` (largest first; `feature`: by number)."""
    if sort_by not in SORT_KEYS:
        raise ConfigError(f"sort_by must be one of {SORT_KEYS}, got {sort_by!r}")

    def key(f: dict) -> float:
        value = f.get(sort_by)
        return -math.inf if value is None else value

    ordered = sorted(results["features"], key=key, reverse=sort_by != "feature")
    rows = "".join(
        f"<tr><td>#{f['feature']}</td><td>{pct(f['frequency'])}</td><td>{fmt(f['max'])}</td>"
        f"<td>{fmt(f.get('loss_effect'))}</td><td><code>{html.escape(' · '.join(top_tokens(f)))}</code></td></tr>"
        for f in ordered[page * size : (page + 1) * size]
    )
    return HTMLView(
        "<table><tr><th>feature</th><th>frequency</th><th>max</th><th>loss effect</th><th>top tokens</th></tr>"
        f"{rows}</table>"
    )


def text_html(found: dict[str, Any]) -> HTMLView:
    """A `features_on_text` result: the text shaded once per top feature, and per token its top features."""
    tokens = found["tokens"]
    lines = []
    for top in found["top_features"]:
        values = found["activations"][str(top["feature"])]
        scale = max((abs(v) for v in values), default=0.0)
        lines.append(
            f'<div class="ctx"><span class="score">#{top["feature"]} max {fmt(top["max"])}</span>'
            f"{tokens_html(tokens, values, top['max_position'], scale)}</div>"
        )
    per_token = "".join(
        f"<tr><td><code>{html.escape(json.dumps(t['token'], ensure_ascii=False))}</code></td><td>"
        + ", ".join(f"#{x['feature']} {fmt(x['activation'])}" for x in t["features"])
        + "</td></tr>"
        for t in found["per_token"]
    )
    return HTMLView(
        f'<p class="meta">{html.escape(found["architecture"])} at {html.escape(found["hook"])}, '
        f"ranked by {html.escape(found['rank_by'])}</p>"
        f"<h2>Features that fire most on the text</h2>{''.join(lines) or '<p class=meta>no feature fires</p>'}"
        f"<h2>Per token</h2><table><tr><th>token</th><th>top features</th></tr>{per_token}</table>"
    )


def steering_html(result: dict[str, Any]) -> HTMLView:
    """A `steer` result: the plain and the steered generation, one above the other."""
    changes = ", ".join(
        f"#{i['feature']} {'=' if result['mode'] == 'clamp' else '+'} {i['value']:g}" for i in result["interventions"]
    )
    prompt = html.escape(result["prompt"])
    return HTMLView(
        f'<p class="meta">{result["mode"]} at {html.escape(result["hook"])}: {html.escape(changes)}; '
        f"{'sampled, temperature ' + str(result['temperature']) if result['sample'] else 'greedy'}, "
        f"seed {result['seed']}</p>"
        f'<h2>Plain</h2><div class="gen"><b>{prompt}</b>{html.escape(result["plain"]["text"])}</div>'
        f'<h2>Steered</h2><div class="gen"><b>{prompt}</b>{html.escape(result["steered"]["text"])}</div>'
    )


class Browser:
    """An inspection, browsed: its feature views, and (loading the model and dictionary it
    records, on first use) features on your text and steering."""

    def __init__(
        self, inspection: str | Path | dict[str, Any], *, dictionary: Any = None, lm: Any = None, device: str = "auto"
    ):
        from interp_sae.inspector import read_inspection

        self.results = inspection if isinstance(inspection, dict) else read_inspection(inspection)
        self._dictionary, self._lm, self.device = dictionary, lm, device

    @property
    def lm(self) -> Any:
        if self._lm is None:
            from activation_cache import load_model

            if not self.results.get("model"):
                raise ConfigError("the inspection records no model: pass lm=load_model(...) to Browser")
            self._lm = load_model(self.results["model"], device=self.device)
        return self._lm

    @property
    def dictionary(self) -> Any:
        if self._dictionary is None:
            from dictionaries import load_dictionary

            if not self.results.get("dictionary"):
                raise ConfigError("the inspection records no dictionary path: pass dictionary=... to Browser")
            self._dictionary = load_dictionary(self.results["dictionary"])
        return self._dictionary.to(self.lm.device)

    def show_feature(self, j: int) -> HTMLView:
        return feature_html(self.results, j)

    def feature_table(self, sort_by: str = "frequency", page: int = 0, size: int = 25) -> HTMLView:
        return feature_table(self.results, sort_by, page, size)

    def show_text(self, text: str, top_n: int = 5) -> HTMLView:
        from interp_sae.text_features import features_on_text

        return text_html(features_on_text(self.lm, self.dictionary, text, hook=self.results["hook"], top_n=top_n))

    def show_steering(self, feature: int, strength: float, prompt: str, **options: Any) -> HTMLView:
        """`options` go to interp_sae.steering.steer (mode, max_new_tokens, sample, temperature, seed...)."""
        from interp_sae.steering import Intervention, steer

        result = steer(
            self.lm, self.dictionary, prompt, [Intervention(feature, strength)], hook=self.results["hook"], **options
        )
        return steering_html(result)
