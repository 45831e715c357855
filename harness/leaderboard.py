"""Leaderboard: the results store -> Markdown, CSV and one self-contained HTML page.

Rows are (model, method, quant) over the records whose status is ok; columns are
metrics (one per metric name x dataset/task tags), plus effective bits and the
change against the same model's 16-bit baseline (``method=none``). Failed runs
are listed with their error. The HTML page inlines plotly.js (works offline),
has a click-to-sort table and one Pareto chart per metric: effective bits vs
metric, one trace per method, the 16-bit baseline as a dashed reference line.
Generated, never hand-edited.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

import pandas as pd

from bitsweep.harness.results import Store

HIDDEN_METRICS = ("nll",)
LOWER_IS_BETTER = ("ppl", "nll", "loss", "word_perplexity", "byte_perplexity", "bits_per_byte", "qid")
ID_COLS = ["model", "method", "quant"]


def metric_column(row: dict) -> str:
    """Column label of a metric row from its name and tags."""
    tags = row.get("tags") or {}
    name = row["name"]
    if "task" in tags:
        label = f"{tags['task']}:{name}"
    elif "dataset" in tags:
        label = f"{name}:{tags['dataset']}/{tags.get('split', '')}"
    else:
        label = name
    if tags.get("chunks") and tags.get("of_chunks") and tags["chunks"] < tags["of_chunks"]:
        label += f" ({tags['chunks']}/{tags['of_chunks']} chunks)"
    return label


def lower_is_better(column: str) -> bool:
    base = column.split(":")[-1] if ":" in column and column.split(":")[0] not in LOWER_IS_BETTER else column.split(":")[0]
    return any(base.startswith(m) for m in LOWER_IS_BETTER)


def load_frames(store: Store) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(long metrics frame of ok records, frame of failed records)."""
    rows, failed = [], []
    for rec in store.records():
        ident = {"model": rec.get("model"), "method": rec.get("method_label") or rec.get("method"),
                 "quant": rec.get("quant_label"), "effective_bits": rec.get("effective_bits")}
        if rec.get("status") != "ok":
            failed.append({**ident, "evaluator": rec.get("evaluator"), "error": rec.get("error")})
            continue
        for m in rec.get("metrics", []):
            if m["name"] in HIDDEN_METRICS or m.get("value") is None:
                continue
            rows.append({**ident, "metric": metric_column(m), "value": m["value"],
                         "stderr": m.get("stderr")})
    cols = ID_COLS + ["effective_bits", "metric", "value", "stderr"]
    return pd.DataFrame(rows, columns=cols), pd.DataFrame(failed)


def wide_table(long: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, method, quant); metric values and stderrs as columns."""
    if long.empty:
        return pd.DataFrame(columns=ID_COLS + ["effective_bits"])
    bits = long.groupby(ID_COLS, dropna=False)["effective_bits"].first()
    cells = long.groupby(ID_COLS + ["metric"], dropna=False)[["value", "stderr"]].first()
    val = cells["value"].unstack("metric")
    err = cells["stderr"].unstack("metric")
    err.columns = [f"{c} stderr" for c in err.columns]
    wide = pd.concat([bits, val, err], axis=1).reset_index()
    wide["effective_bits"] = wide["effective_bits"].astype(float).round(3)
    order = {"none": 0}
    return wide.sort_values(["model", "effective_bits", "method"], ascending=[True, False, True],
                            key=lambda s: s.map(order).fillna(s) if s.name == "method" else s
                            ).reset_index(drop=True)


def metric_columns(wide: pd.DataFrame) -> list[str]:
    return [c for c in wide.columns if c not in ID_COLS + ["effective_bits"] and not c.endswith(" stderr")]


def baseline_deltas(wide: pd.DataFrame) -> pd.DataFrame:
    """Relative change (%) of each metric against the model's method=none row."""
    out = pd.DataFrame(index=wide.index)
    base = wide[wide["method"] == "none"].groupby("model").first()
    for col in metric_columns(wide):
        ref = wide["model"].map(base[col]) if col in base else None
        out[col] = None if ref is None else 100.0 * (wide[col] - ref) / ref
    return out


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) >= 1e4 else f"{v:.{digits}f}"
    return str(v)


def to_markdown(wide: pd.DataFrame, failed: pd.DataFrame, title: str) -> str:
    cols = metric_columns(wide)
    deltas = baseline_deltas(wide)
    head = ["model", "method", "quant", "eff. bits"] + cols
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in wide.iterrows():
        cells = [str(r["model"]), str(r["method"]), str(r["quant"]), _fmt(r["effective_bits"], 2)]
        for c in cols:
            cell = _fmt(r[c])
            d = deltas.at[i, c]
            if r["method"] != "none" and d is not None and not pd.isna(d):
                cell += f" ({d:+.1f}%)"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Percentages: change against the same model's 16-bit baseline (method=none). "
              "Effective bits count scales and zero points."]
    if not failed.empty:
        lines += ["", "## Failed runs", "", "| model | method | quant | evaluator | error |", "|---|---|---|---|---|"]
        for _, r in failed.iterrows():
            err = str(r["error"]).replace("|", "\\|").replace("\n", " ")[:200]
            lines.append(f"| {r['model']} | {r['method']} | {r['quant']} | {r['evaluator']} | {err} |")
    return "\n".join(lines) + "\n"


def pareto_figure(wide: pd.DataFrame, column: str):
    import plotly.graph_objects as go

    fig = go.Figure()
    for (model, method), grp in wide.dropna(subset=[column]).groupby(["model", "method"]):
        if method == "none":
            continue
        grp = grp.sort_values("effective_bits")
        name = method if wide["model"].nunique() == 1 else f"{method} ({model})"
        fig.add_trace(go.Scatter(x=grp["effective_bits"], y=grp[column], mode="lines+markers",
                                 name=name, text=grp["quant"],
                                 hovertemplate="%{text}<br>bits=%{x:.3f}<br>" + column + "=%{y:.4g}"))
    for model, grp in wide[wide["method"] == "none"].dropna(subset=[column]).groupby("model"):
        fig.add_hline(y=float(grp[column].iloc[0]), line_dash="dash",
                      annotation_text=f"16-bit baseline ({model})")
    log_y = lower_is_better(column) and (wide[column].max() / max(wide[column].min(), 1e-9) > 5)
    fig.update_layout(title=f"Effective bits vs {column}", xaxis_title="effective bits per weight",
                      yaxis_title=column + (" (lower is better)" if lower_is_better(column) else " (higher is better)"),
                      yaxis_type="log" if log_y else "linear", template="plotly_white", height=480)
    return fig


_SORT_JS = """
document.querySelectorAll('table.lb th').forEach(function(th, i){
  th.style.cursor='pointer';
  th.addEventListener('click', function(){
    var tb=th.closest('table').tBodies[0], rows=Array.from(tb.rows), asc=th.dataset.asc!=='1';
    th.dataset.asc=asc?'1':'0';
    rows.sort(function(a,b){
      var x=a.cells[i].dataset.v, y=b.cells[i].dataset.v, fx=parseFloat(x), fy=parseFloat(y);
      var c=(!isNaN(fx)&&!isNaN(fy))?fx-fy:String(x).localeCompare(String(y));
      return asc?c:-c;});
    rows.forEach(function(r){tb.appendChild(r);});
  });
});
"""


def to_html(wide: pd.DataFrame, failed: pd.DataFrame, title: str) -> str:
    import plotly.io as pio

    cols = metric_columns(wide)
    head = ["model", "method", "quant", "effective_bits"] + cols
    th = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = []
    for _, r in wide.iterrows():
        tds = []
        for c in head:
            v = r[c]
            shown = _fmt(v) if c in cols else (_fmt(v, 3) if c == "effective_bits" else html.escape(str(v)))
            err = r.get(f"{c} stderr") if c in cols else None
            if err is not None and not pd.isna(err):
                shown += f" <small>&plusmn;{_fmt(err, 2)}</small>"
            sv = "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
            tds.append(f'<td data-v="{html.escape(str(sv))}">{shown}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    charts = []
    for k, c in enumerate(cols):
        charts.append(pio.to_html(pareto_figure(wide, c), full_html=False,
                                  include_plotlyjs="inline" if k == 0 else False,
                                  div_id=f"chart{k}"))
    fail_html = ""
    if not failed.empty:
        items = "".join(f"<li><b>{html.escape(str(r['method']))} {html.escape(str(r['quant']))}</b> "
                        f"({html.escape(str(r['evaluator']))}): {html.escape(str(r['error']))[:300]}</li>"
                        for _, r in failed.iterrows())
        fail_html = f"<h2>Failed runs</h2><ul>{items}</ul>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;}}table.lb{{border-collapse:collapse;}}
table.lb td,table.lb th{{border:1px solid #ccc;padding:4px 8px;text-align:right;}}
table.lb th{{background:#f3f3f3;}}table.lb td:nth-child(-n+3){{text-align:left;}}</style>
</head><body><h1>{html.escape(title)}</h1>
<p>Click a column header to sort. Effective bits count scales and zero points.</p>
<table class="lb"><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>
{fail_html}
<h2>Pareto charts</h2>
{''.join(charts)}
<script>{_SORT_JS}</script>
</body></html>
"""


def build_leaderboard(store_dir: str | Path, out_dir: str | Path, title: str = "bitsweep leaderboard") -> dict:
    """Write leaderboard.{md,csv,html} under ``out_dir``; returns paths and the markdown."""
    long, failed = load_frames(Store(store_dir))
    wide = wide_table(long)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(wide, failed, title)
    (out / "leaderboard.md").write_text(md)
    wide.to_csv(out / "leaderboard.csv", index=False)
    (out / "leaderboard.html").write_text(to_html(wide, failed, title))
    summary = {"rows": len(wide), "failed": len(failed), "columns": metric_columns(wide)}
    (out / "leaderboard.json").write_text(json.dumps(summary, indent=1))
    return {"markdown": md, "dir": str(out), **summary}
