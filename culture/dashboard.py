"""A static HTML dashboard of SAE features (``culture-interp sae features``).

:func:`write_dashboard` writes into a folder:

* ``index.html`` -- one self-contained page (inline CSS, pictures embedded as
  base64 PNG, no script, nothing fetched): the run's settings, a summary table
  of the features, the steering results when there are any, then one section
  per feature: frequency per task (bars), direct logit effect per token
  (colour swatches), the positions where it fires most, and the picture of
  those quizzes;
* ``feature_<id>.png`` -- the same pictures, beside it;
* ``report.json`` -- the numbers.

Open ``index.html`` in any browser.

:func:`write_family_page` writes the cross-model page of ``culture-interp
universality compare --dashboard``: for each family of SAE features matched
across the models, its member feature in every model side by side on the
same quizzes (activations drawn on the grids), with their correlations and
firing rates.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

from culture.quiz import COLOR_NAMES, COLOR_RGB

__all__ = ["write_dashboard", "render_html", "write_family_page", "render_family_page"]

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;
color:#222;background:#fafafa;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;margin:0 0 8px}h3{font-size:14px;margin:14px 0 6px}
.sub{color:#666;margin-top:0}
table{border-collapse:collapse;font-size:13px;margin:6px 0 12px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#eee}
td.l,th.l{text-align:left}
section.feature{background:#fff;border:1px solid #ddd;border-radius:6px;padding:14px 18px;margin:18px 0}
.bar{display:inline-block;height:11px;background:#6b5bd6;vertical-align:middle}
.barbox{display:inline-block;width:240px;background:#eee;margin-right:6px}
.sw{display:inline-block;width:14px;height:14px;border:1px solid #555;vertical-align:middle;margin-right:3px}
.eff{display:inline-block;margin:2px 8px 2px 0;font-size:12px;white-space:nowrap}
.pos{color:#0a7a2a}.neg{color:#b0221b}
img.quizzes{max-width:100%;border:1px solid #ccc;margin-top:6px}
.members{display:grid;grid-template-columns:repeat(auto-fit,minmax(220px,1fr));gap:14px}.member img{width:100%}
.legend{font-size:12px;color:#555}
code{background:#f0f0f0;padding:0 3px}
a{color:#3b2db3}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, int):
        return str(x)
    return f"{x:.4g}"


def _swatch(colour: str) -> str:
    if colour in COLOR_NAMES:
        r, g, b = COLOR_RGB[COLOR_NAMES.index(colour)]
        return f'<span class="sw" style="background:rgb({r},{g},{b})" title="{_e(colour)}"></span>'
    return ""


def _png_b64(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _meta_table(meta: dict) -> str:
    rows = "".join(f'<tr><th class="l">{_e(k)}</th><td class="l">{_e(v)}</td></tr>' for k, v in meta.items()
                   if v is not None)
    return f"<table>{rows}</table>"


def _summary_table(features: list[dict]) -> str:
    head = ("<tr><th>feature</th><th>token freq</th><th>quiz freq</th><th>mean act</th><th>max act</th>"
            '<th class="l">most frequent in</th><th class="l">promotes</th><th class="l">suppresses</th></tr>')
    rows = []
    for f in features:
        tasks = sorted(((v.get("token_frequency") or 0.0, k) for k, v in f["by_task"].items()), reverse=True)
        top_task = f"{tasks[0][1]} ({_pct(tasks[0][0])})" if tasks and tasks[0][0] > 0 else "-"
        promotes = " ".join(_swatch(c) + _e(c) for c, _ in f.get("promotes") or []) or "-"
        suppresses = " ".join(_swatch(c) + _e(c) for c, _ in f.get("suppresses") or []) or "-"
        rows.append(f'<tr><td><a href="#f-{f["id"]}">{f["id"]}</a></td><td>{_pct(f["token_frequency"])}</td>'
                    f'<td>{_pct(f["quiz_frequency"])}</td><td>{_num(f["mean_activation"])}</td>'
                    f'<td>{_num(f["max_activation"])}</td><td class="l">{_e(top_task)}</td>'
                    f'<td class="l">{promotes}</td><td class="l">{suppresses}</td></tr>')
    return f"<table>{head}{''.join(rows)}</table>"


def _steering(steering: dict) -> str:
    head = ('<tr><th class="l">task</th><th>n</th><th>accuracy clean</th><th>accuracy steered</th>'
            "<th>loss clean</th><th>loss steered</th><th>quizzes changed</th></tr>")
    rows = "".join(
        f'<tr><td class="l">{_e(g)}</td><td>{v["n"]}</td><td>{_pct(v["accuracy_clean"])}</td>'
        f'<td>{_pct(v["accuracy_steered"])}</td><td>{_num(v["loss_clean"])}</td><td>{_num(v["loss_steered"])}</td>'
        f'<td>{v["changed"]}</td></tr>' for g, v in steering["by_group"].items())
    specs = ", ".join(f"<code>{_e(s)}</code>" for s in steering["specs"])
    return (f"<h2>Steering: {specs}</h2><p class='legend'>{_e(steering.get('method', ''))}; "
            "greedy accuracy and loss on the predicted cells, teacher-forced.</p>"
            f"<table>{head}{rows}</table>")


def _feature_section(f: dict, image_b64: str | None, image_name: str | None) -> str:
    parts = [f'<section class="feature" id="f-{f["id"]}"><h2>Feature {f["id"]}</h2>',
             f'<p class="sub">fires on {_pct(f["token_frequency"])} of positions, in {_pct(f["quiz_frequency"])} of '
             f'quizzes; mean activation {_num(f["mean_activation"])}, max {_num(f["max_activation"])}</p>']
    # frequency per task
    freqs = [(k, v.get("token_frequency"), v.get("quiz_frequency")) for k, v in f["by_task"].items()]
    top = max([x or 0.0 for _, x, _ in freqs] + [1e-12])
    rows = "".join(
        f'<tr><td class="l">{_e(k)}</td><td class="l"><span class="barbox"><span class="bar" '
        f'style="width:{240 * (t or 0.0) / top:.0f}px"></span></span>{_pct(t)}</td><td>{_pct(q)}</td></tr>'
        for k, t, q in freqs)
    parts.append('<h3>Activation frequency per task</h3><table><tr><th class="l">task</th>'
                 f'<th class="l">positions</th><th>quizzes</th></tr>{rows}</table>')
    # logit effects
    eff = f.get("logit_effect")
    if eff:
        items = []
        for name, v in sorted(eff.items(), key=lambda kv: -kv[1]):
            cls = "pos" if v > 0 else "neg"
            items.append(f'<span class="eff">{_swatch(name)}{_e(name)} <b class="{cls}">{v:+.3g}</b></span>')
        parts.append("<h3>Direct logit effect per unit of activation (W_dec @ W_U)</h3><div>" + "".join(items)
                     + "</div>")
    else:
        parts.append("<h3>Direct logit effect</h3><p class='legend'>not available at this hook</p>")
    # examples
    ex = f.get("examples") or []
    if ex:
        rows = "".join(
            f'<tr><td>{e["quiz_index"]}</td><td class="l">{_e(e["task"])}</td><td>{_num(e["activation"])}</td>'
            f'<td>{e["position"]}</td><td class="l">{_e(e["reads"])}</td><td class="l">{_e(e["predicts"])}</td></tr>'
            for e in ex)
        parts.append('<h3>Where it fires most</h3><table><tr><th>quiz</th><th class="l">task</th><th>activation</th>'
                     f'<th>position</th><th class="l">reads</th><th class="l">predicts</th></tr>{rows}</table>')
    else:
        parts.append("<p class='legend'>never fired on these quizzes</p>")
    if image_b64:
        alt = f"top quizzes of feature {f['id']}"
        link = f' (<a href="{_e(image_name)}">{_e(image_name)}</a>)' if image_name else ""
        parts.append(f'<p class="legend">Dots: positions where the feature fires at 5% of its maximum or more '
                     f'(size ~ activation), on the cell read there; thick black box: the cell read at the maximum; '
                     f'magenta box: the cell predicted there{link}.</p>'
                     f'<img class="quizzes" alt="{_e(alt)}" src="data:image/png;base64,{image_b64}">')
    parts.append("</section>")
    return "".join(parts)


def render_html(report: dict, images_b64: dict[int, str] | None = None, meta: dict | None = None,
                image_names: dict[int, str] | None = None, title: str = "SAE features") -> str:
    """The dashboard page for a feature report dict (FeatureReport.to_dict())."""
    images_b64 = images_b64 or {}
    image_names = image_names or {}
    features = report.get("features", [])
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="sub">hook <code>{_e(report.get("hook_name"))}</code>, {report.get("d_sae")} features; '
            f"{len(features)} shown</p>"]
    if meta:
        body.append(_meta_table(meta))
    body.append("<h2>Features</h2>" + _summary_table(features))
    if report.get("steering"):
        body.append(_steering(report["steering"]))
    for f in features:
        body.append(_feature_section(f, images_b64.get(f["id"]), image_names.get(f["id"])))
    settings = report.get("settings") or {}
    if settings:
        body.append("<h3>Settings</h3>" + _meta_table(settings))
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")


def write_dashboard(out_dir: str | os.PathLike, report: dict, images: dict | None = None, meta: dict | None = None,
                    title: str = "SAE features") -> Path:
    """Write index.html, feature_<id>.png and report.json into ``out_dir``
    (each file atomically); returns the path of index.html. ``images``:
    {feature id: PIL image}."""
    from culture.io import atomic_path, atomic_write_json, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    b64, names = {}, {}
    for fid, img in (images or {}).items():
        if img is None:
            continue
        name = f"feature_{fid}.png"
        with atomic_path(out / name, suffix=".png") as tmp:
            img.save(tmp, format="PNG")
        b64[fid] = _png_b64(img)
        names[fid] = name
    atomic_write_json(out / "report.json", {"meta": meta or {}, **report})
    page = render_html(report, b64, meta, names, title)
    atomic_write_text(out / "index.html", page)
    return out / "index.html"



# ------------------------------------------------------- cross-model families


def _family_section(k: int, fam: dict, images: dict[str, str], legend: str) -> str:
    members = fam["members"]
    corr = fam["corr"]
    head = "".join(f"<th>{_e(m)}</th>" for m in members)
    cells = "".join(f"<td>{members[m]}</td>" for m in members)
    corr_cells = "".join(f"<td>{'anchor' if m not in corr else _num(corr[m])}</td>" for m in members)
    rate_rows = []
    cats = sorted({c for r in fam["member_rates"].values() for c in r})
    for c in cats:
        rate_rows.append(f'<tr><td class="l">{_e(c)}</td>'
                         + "".join(f"<td>{_pct(fam['member_rates'].get(m, {}).get(c))}</td>" for m in members)
                         + f"<td>{_pct(fam['rates'][c]['value'])} [{_pct(fam['rates'][c]['ci95'][0])}, "
                           f"{_pct(fam['rates'][c]['ci95'][1])}]</td></tr>" if c in fam["rates"] else "")
    parts = [f'<section class="feature" id="family-{k}"><h2>Family {k}</h2>',
             f'<p class="sub">weakest correlation with the anchor {_num(fam["min_corr"])}; '
             f'{"consistent" if fam["consistent"] else "not consistent"} across every pair of models</p>',
             f'<table><tr><th class="l"></th>{head}</tr><tr><th class="l">feature</th>{cells}</tr>'
             f'<tr><th class="l">corr with anchor</th>{corr_cells}</tr></table>',
             f'<h3>Firing rate per category</h3><table><tr><th class="l">category</th>{head}<th>family mean '
             f'[95%]</th></tr>{"".join(rate_rows)}</table>']
    if images:
        parts.append(f'<p class="legend">{_e(legend)}</p><div class="members">')
        for m, b64 in images.items():
            parts.append(f'<div class="member"><h3>SAE {_e(m)}: feature {members[m]}</h3>'
                         f'<img class="quizzes" alt="family {k}, SAE {_e(m)}" src="data:image/png;base64,{b64}">'
                         "</div>")
        parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


def render_family_page(report, images: dict[int, dict[str, str]], max_families: int) -> str:
    """The cross-model feature page for a UniversalityReport with SAEs."""
    sae = report.sae
    fams = report.family_rows(max_families)
    title = "SAE feature families across models"
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="sub">{len(sae.families)} families: features of SAE {_e(sae.labels[sae.anchor])} whose '
            f"one-to-one partner (Hungarian matching of activation correlations) exceeds {sae.threshold:g} in "
            f"the SAE of every other model; {sae.null_families} on shuffled quizzes (the floor); control "
            f"{_e(sae.control)}; {report.settings.get('tokens', 0):,} tokens</p>"]
    rows = report.sae_rows()
    head = ('<tr><th class="l">pair</th><th class="l">kind</th><th>alive</th><th>1-to-1 share above</th>'
            "<th>floor</th><th>median corr</th><th>floor</th><th>SVCCA</th><th>floor</th></tr>")
    body.append("<h2>Pairs of SAEs</h2><table>" + head + "".join(
        f'<tr><td class="l">{_e(r["pair"])}</td><td class="l">{_e(r["kind"])}</td><td>{_e(r["alive"])}</td>'
        f'<td>{_pct(r["share_above"])}</td><td>{_pct(r["null_share_above"])}</td>'
        f'<td>{_num(r["median_matched_corr"])}</td><td>{_num(r["null_median_matched_corr"])}</td>'
        f'<td>{_num(r["svcca"])}</td><td>{_num(r["svcca_floor"])}</td></tr>' for r in rows) + "</table>")
    if not fams:
        body.append("<p>No family: no feature of the anchor SAE matches above the threshold in every model.</p>")
    legend = ("The same quizzes in every column (where the anchor's feature fires most); dots: positions where "
              "that model's feature fires at 5% of its maximum or more (size ~ activation), on the cell read "
              "there; thick black box: the cell read at the maximum; magenta box: the cell predicted there.")
    for fam in fams:
        body.append(_family_section(fam["family"], fam, images.get(fam["family"], {}), legend))
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")


def family_images(report, max_families: int = 12, quizzes: int = 3, cell_px: int = 10) -> dict[int, dict[str, object]]:
    """{family: {SAE label: PIL image}}: each member's activations on the
    quizzes (of the report's examples) where the anchor's member fires most."""
    from culture.sae.features import feature_examples_image

    sae = report.sae
    ex = sae.examples or {}
    if not ex:
        return {}
    out = {}
    for fam in report.family_rows(max_families):
        k = fam["family"]
        members = sae.families[k].members
        if (k, sae.anchor) not in ex["acts"]:
            continue
        anchor_acts = ex["acts"][(k, sae.anchor)]
        top = anchor_acts.max(1).values.argsort(descending=True)[:quizzes]
        top = top[anchor_acts[top].max(1).values > 0]
        if not len(top):
            continue
        q = ex["quizzes"][top]
        imgs = {}
        for e, f in members.items():
            acts = ex["acts"][(k, e)][top]
            titles = [f"quiz {int(i)}" for i in top]
            imgs[sae.labels[e]] = feature_examples_image(q, acts, titles, cell_px=cell_px)[0]
        out[k] = imgs
    return out


def write_family_page(out_dir: str | os.PathLike, report, max_families: int = 12) -> Path:
    """Write ``index.html`` (self-contained) and ``families.json`` into
    ``out_dir`` for a :class:`~culture.universality.UniversalityReport` with
    SAEs; returns the page's path."""
    from culture.errors import CultureError
    from culture.io import atomic_write_json, atomic_write_text

    if report.sae is None:
        raise CultureError("the report has no SAE comparison: nothing to show on the feature page")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = {k: {m: _png_b64(img) for m, img in per.items()} for k, per in family_images(report, max_families).items()}
    atomic_write_json(out / "families.json", {"pairs": report.sae_rows(), "families": report.family_rows()})
    page = render_family_page(report, images, max_families)
    atomic_write_text(out / "index.html", page)
    return out / "index.html"
