"""A static HTML viewer for the trajectories of a run folder (``vgym view RUN``).

Contents: :func:`find_trajectory_files`, :func:`render_page`, :func:`build_view`.

:func:`build_view` finds every ``*.jsonl`` of trajectory records under a run folder (as written by
:func:`vgym.rollout.trajectory.save_trajectories`), and writes one self-contained ``view.html``: inline CSS
and a small vanilla script, no CDN and no network (a Content-Security-Policy forbids every fetch except
images, and every script except the page's own). Images are referenced by relative path, so the page works
from the run folder.

The page shows a summary line, filters (task, run file, tool, reward range, only failures, only tool errors,
text search), a counter "showing X of N episodes", and one card per episode: task, sample id, reward and its
parts, the question, the gold answer ("gold: ..."; "not recorded" for records written before trajectories
kept it), what the model answered ("answered: ..." or "no answer", with why the episode ended) and its score,
each turn's model text, tool calls (arguments, ok/error, result images) and the env's reply; the last turn
repeats the answer and the score it earned. ``vgym view`` on a ``vgym eval`` run folder shows the
trajectories the run saved (``failures/`` or ``trajectories/``); its ``episodes.jsonl`` is the run's log, not
trajectories, and is passed over quietly.
Every string from a record is HTML-escaped: model text is untrusted. Filters can be preset from the URL query
or hash, e.g. ``view.html#task=visual_search&failures``; keys ``task``, ``source``, ``tool``, ``min``,
``max``, ``failures``, ``errors``, ``q``. Changing a filter writes the hash, so a filtered view can be shared.

Stable hooks (tests and scripts rely on them): ``#vgym-summary``, ``#vgym-counter`` (with ``#vgym-shown`` and
``#vgym-total``), filter controls ``#f-task`` ``#f-source`` ``#f-tool`` ``#f-min`` ``#f-max`` ``#f-failures``
``#f-errors`` ``#f-q``; cards ``article.episode`` with ``data-task``, ``data-source``, ``data-reward``,
``data-failure``, ``data-tool-error``, ``data-tools`` (a JSON list), hidden by the ``hidden`` attribute; turn
texts ``pre.turn-text``; ``.question``, ``code.gold``, ``code.answer`` (or ``span.answer.none``) and
``.score`` in ``p.verdict``; images ``img[data-kind=prompt|tool]`` (``data-loaded="1"`` once the browser
loaded it).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from vgym.env import IMAGE_BUDGET_ERROR
from vgym.errors import VgymError

__all__ = ["TrajectoryFile", "find_trajectory_files", "render_page", "build_view"]

logger = logging.getLogger(__name__)

_REQUIRED_KEYS = ("sample_id", "task", "reward", "turns")
"""Keys every trajectory record has (see :meth:`vgym.rollout.trajectory.Trajectory.record`)."""


@dataclass
class TrajectoryFile:
    """One JSONL file of trajectory records."""

    path: Path
    """The ``.jsonl`` file; record image paths are relative to its folder."""
    records: list[dict[str, Any]]
    """Its records, in file order."""


def find_trajectory_files(run: Path) -> list[TrajectoryFile]:
    """Every ``*.jsonl`` under ``run`` (recursively, sorted by path) whose lines are all trajectory records.

    Files that are not (unparsable lines, records without ``sample_id``/``task``/``reward``/``turns``, or no
    records at all) are skipped with a logged warning that names the file and the first bad line.

    Raises:
        FileNotFoundError: if ``run`` is not a folder.
    """
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {str(run)!r} does not exist or is not a folder")
    found: list[TrajectoryFile] = []
    for path in sorted(run.rglob("*.jsonl")):
        if _is_eval_log(path):
            logger.debug("skipping %s: a vgym eval run's episode log", path)
            continue
        records, problem = _read_records(path)
        if problem is not None:
            logger.warning("skipping %s: %s", path, problem)
            continue
        found.append(TrajectoryFile(path, records))
    return found


def _is_eval_log(path: Path) -> bool:
    """Whether ``path`` is the ``episodes.jsonl`` of a ``vgym eval`` run folder (beside its
    ``config.json``)."""
    return path.name == "episodes.jsonl" and (path.parent / "config.json").is_file()


def _read_records(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The file's records, or ``([], why it is not a trajectory file)``."""
    records: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return [], f"cannot read it ({type(exc).__name__}: {exc})"
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            return [], f"line {number} is not JSON ({exc})"
        missing = (
            [k for k in _REQUIRED_KEYS if k not in record]
            if isinstance(record, dict)
            else list(_REQUIRED_KEYS)
        )
        if missing or not isinstance(record["turns"], list):
            return [], f"line {number} is not a trajectory record (missing {missing or ['turns as a list']})"
        records.append(record)
    if not records:
        return [], "no records"
    return records, None


def build_view(run: Path, out: Path | None = None, *, max_episodes: int = 2000) -> Path:
    """Write the viewer page for the trajectories under ``run``; opens nothing.

    Args:
        run: the run folder, searched recursively for trajectory ``*.jsonl`` files.
        out: the page to write; None means ``<run>/view.html``. Images are referenced relative to its folder.
        max_episodes: most episode cards on the page (files in path order, records in file order); the summary
            says when episodes were left out.

    Returns:
        The path of the page.

    Raises:
        FileNotFoundError: if ``run`` is not a folder.
        VgymError: if no trajectory file is found under ``run``.
        ValueError: if ``max_episodes`` < 1.
    """
    if max_episodes < 1:
        raise ValueError(f"max_episodes must be >= 1, got {max_episodes}")
    run = Path(run)
    files = find_trajectory_files(run)
    if not files and _is_eval_log(run / "episodes.jsonl"):
        raise VgymError(f"{str(run)!r} is a vgym eval run that saved no trajectory (every episode passed "
                        "with --save-trajectories failures, the default, or it ran with none); run the eval "
                        "again with --save-trajectories all and a new --out folder to see every episode")
    if not files:
        raise VgymError(f"no trajectory *.jsonl under {str(run)!r}; runs write them with save_trajectories "
                        "(e.g. <run>/<arm>/eval_test.jsonl)")
    out = Path(out) if out is not None else run / "view.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    total = sum(len(f.records) for f in files)
    if total > max_episodes:
        logger.warning("%d episodes under %s; the page shows the first %d", total, run, max_episodes)
    out.write_text(
        render_page(files, out.parent, title=f"vgym · {run.resolve().name}", max_episodes=max_episodes),
        encoding="utf-8",
    )
    return out


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _is_failure(record: dict[str, Any]) -> bool:
    """Accuracy below 1 (from ``reward_parts``); without an accuracy part, no answer or a reward <= 0."""
    parts = record.get("reward_parts") or {}
    if "accuracy" in parts:
        return _number(parts["accuracy"]) < 1.0
    return record.get("answer") is None or not _number(record["reward"]) > 0.0


def _calls(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for turn in record["turns"] if isinstance(turn, dict) for c in turn.get("tool_calls") or []
            if isinstance(c, dict)]


def _image_html(source: TrajectoryFile, record: dict[str, Any], index: int, base: Path, kind: str) -> str:
    """An ``<img>`` for image ``index`` of the record, or a note when it was not saved or is missing."""
    images = record.get("images") or []
    if not 0 <= index < len(images):  # e.g. the images of a tool call in a truncating last turn are not kept
        return f'<span class="missing" data-missing="{_esc(index)}">image {_esc(index)} not saved</span>'
    target = source.path.parent / str(images[index])
    if not target.is_file():
        return f'<span class="missing" data-missing="{_esc(index)}">missing {_esc(images[index])}</span>'
    href = quote(Path(os.path.relpath(target, base)).as_posix(), safe="/")
    return (f'<img data-kind="{kind}" data-index="{_esc(index)}" src="{_esc(href)}" loading="lazy" '
            f'alt="image {_esc(index)}" title="image {_esc(index)}">')


def _score(record: dict[str, Any]) -> str:
    """The episode's accuracy (its score), or ``-`` when the record has none."""
    parts = record.get("reward_parts") or {}
    return f"{_number(parts['accuracy']):.3f}" if "accuracy" in parts else "-"


def _verdict(record: dict[str, Any]) -> str:
    """The question, the gold answer, what the model answered (or why it did not) and the score."""
    question = record.get("question")
    head = (f'<p class="question"><b>question</b> {_esc(question)}</p>' if question is not None else "")
    gold = record.get("gold_answer")
    gold_html = (f'<code class="gold">{_esc(gold)}</code>' if gold is not None
                 else '<span class="gold none">not recorded</span>')
    if record.get("answer") is not None:
        answered = f'answered <code class="answer">{_esc(record["answer"])}</code>'
    else:
        reason = record.get("truncated_reason")
        why = f" ({_esc(reason)})" if reason else ""
        answered = f'<span class="answer none">no answer{why}</span>'
    return (f'{head}<p class="verdict">gold {gold_html} · {answered} · score <span class="score">'
            f"{_score(record)}</span></p>")


def _card(number: int, source: TrajectoryFile, record: dict[str, Any], base: Path) -> str:
    calls = _calls(record)
    tool_images = [i for c in calls for i in c.get("image_indices") or [] if isinstance(i, int)]
    # The sample's own images come first: a tool image's index is at least their count (see
    # VisualToolEnv.step).
    n_prompt = min(tool_images) if tool_images else len(record.get("images") or [])
    rel_source = Path(os.path.relpath(source.path, base)).as_posix()
    reward = _number(record["reward"])
    parts = record.get("reward_parts") or {}
    parts_text = " · ".join(f"{_esc(k)} {_number(v):.3g}" for k, v in parts.items()) or "-"
    ended = (
        "answered" if record.get("terminated") else "truncated" if record.get("truncated") else "unfinished"
    )
    failure, tool_error = _is_failure(record), any(not c.get("ok") for c in calls)
    tools = sorted({str(c.get("name")) for c in calls})
    head = (
        f'<article class="episode{" failure" if failure else ""}" id="ep-{number}" '
        f'data-task="{_esc(record["task"])}"'
        f' data-source="{_esc(rel_source)}" data-reward="{reward!r}" data-failure="{int(failure)}"'
        f' data-tool-error="{int(tool_error)}" data-tools="{_esc(json.dumps(tools))}">'
        f'<header><b class="task">{_esc(record["task"])}</b> <code '
        f'class="sample-id">{_esc(record["sample_id"])}</code>'
        f' <span class="reward">reward {reward:.3f}</span> <span class="parts">({parts_text})</span>'
        f' <span class="ended">{ended}</span></header>'
        f"{_verdict(record)}"
        f'<p class="meta">group '
        f"{_esc(record.get('group_id', '-'))} · {_esc(record.get('num_tokens', '?'))} tokens "
        f'({_esc(record.get("num_policy_tokens", "?"))} policy) · <span '
        f'class="source">{_esc(rel_source)}</span></p>'
    )
    prompt = "".join(_image_html(source, record, i, base, "prompt") for i in range(n_prompt))
    body = [head, f'<div class="images prompt">{prompt}</div><ol class="turns">']
    n_turns = sum(isinstance(t, dict) for t in record["turns"])
    for k, turn in enumerate(t for t in record["turns"] if isinstance(t, dict)):
        body.append(
            f'<li class="turn" data-turn="{k}"><pre class="turn-text">{_esc(turn.get("text", ""))}</pre>'
        )
        for call in turn.get("tool_calls") or []:
            if not isinstance(call, dict):
                continue
            ok = bool(call.get("ok"))
            status = "ok" if ok else f'error: {_esc(call.get("error"))}'
            extra = f' · {_number(call.get("latency_s")) * 1000:.1f} ms'
            extra += f' · backend {_esc(call["backend"])}' if call.get("backend") is not None else ""
            extra += " · cache hit" if call.get("cache_hit") else ""
            images = "".join(
                _image_html(source, record, i, base, "tool")
                for i in call.get("image_indices") or []
                if isinstance(i, int)
            )
            body.append(
                f'<div class="call {"ok" if ok else "error"}" data-tool="{_esc(call.get("name"))}" '
                f'data-ok="{int(ok)}"><code class="call-name">{_esc(call.get("name"))}</code>'
                '<code '
                f'class="arguments">{_esc(json.dumps(call.get("arguments"), ensure_ascii=False))}</code>'
                f' <span class="status">{status}</span><span class="extra">{extra}</span>'
                f'<div class="images">{images}</div></div>'
            )
        if turn.get("observation"):
            body.append(f'<pre class="observation">{_esc(turn["observation"])}</pre>')
        if k == n_turns - 1 and record.get("answer") is not None:  # the answering turn: what it earned
            body.append(f'<p class="turn-result">answered <code>{_esc(record["answer"])}</code> · score '
                        f"{_score(record)}</p>")
        body.append("</li>")
    body.append("</ol></article>")
    return "".join(body)


def render_page(files: Sequence[TrajectoryFile], base: Path, *, title: str = "vgym trajectories",
                max_episodes: int = 2000) -> str:
    """The viewer page as an HTML string.

    Args:
        files: the trajectory files to show, in order.
        base: the folder the page will be written to (image paths are made relative to it).
        title: the page title.
        max_episodes: most episode cards (later records are left out and the summary says so).

    Returns:
        A complete HTML document.
    """
    episodes = [(f, r) for f in files for r in f.records]
    total = len(episodes)
    shown = episodes[:max_episodes]
    rewards = [_number(r["reward"]) for _, r in shown]
    n_calls = sum(len(_calls(r)) for _, r in shown)
    n_errors = sum(not c.get("ok") for _, r in shown for c in _calls(r))
    n_budget = sum(c.get("error") == IMAGE_BUDGET_ERROR for _, r in shown for c in _calls(r))
    n_failures = sum(_is_failure(r) for _, r in shown)
    mean = sum(rewards) / len(rewards) if rewards else float("nan")
    left_out = (
        f" (first {len(shown)} of {total}; raise max_episodes to see all)" if total > len(shown) else ""
    )
    summary = (
        f"{len(shown)} episodes · mean reward {mean:.3f} · {n_calls} tool calls · {n_errors} tool errors "
        f"({n_budget} past the image budget) · "
        f"{n_failures} failures · {len(files)} file(s){left_out}"
    )
    tasks = sorted({str(r["task"]) for _, r in shown})
    sources = sorted({Path(os.path.relpath(f.path, base)).as_posix() for f, _ in shown})
    tools = sorted({str(c.get("name")) for _, r in shown for c in _calls(r)})

    def select(ident: str, label: str, values: list[str]) -> str:
        options = "".join(f'<option value="{_esc(v)}">{_esc(v)}</option>' for v in values)
        return f'<label>{label} <select id="{ident}"><option value="">all</option>{options}</select></label>'

    controls = (
        select("f-task", "task", tasks)
        + select("f-source", "file", sources)
        + select("f-tool", "tool", tools)
        + '<label>reward ≥ <input id="f-min" type="number" step="any"></label>'
        + '<label>≤ <input id="f-max" type="number" step="any"></label>'
        + '<label><input id="f-failures" type="checkbox"> only failures</label>'
        + '<label><input id="f-errors" type="checkbox"> only tool errors</label>'
        + '<label>search <input id="f-q" type="search"></label>'
    )
    cards = "\n".join(_card(i, f, r, base) for i, (f, r) in enumerate(shown))
    script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    csp = (f"default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
           f"script-src 'sha256-{script_hash}'")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_esc(title)}</title>'
        f"<style>{_CSS}</style></head><body>\n<h1>{_esc(title)}</h1>\n"
        f'<p id="vgym-summary">{_esc(summary)}</p>\n<form id="vgym-filters">{controls}</form>\n'
        f'<p id="vgym-counter">showing <span id="vgym-shown">{len(shown)}</span> of '
        f'<span id="vgym-total">{len(shown)}</span> episodes · mean reward <span id="vgym-shown-reward">'
        f"{mean:.3f}</span></p>\n<main>\n{cards}\n</main>\n<script>{_SCRIPT}</script>\n</body></html>\n"
    )


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1em;background:#fafafa;color:#222}
form{display:flex;flex-wrap:wrap;gap:.4em 1em;margin:.5em 0}input[type=number]{width:5em}
.episode{background:#fff;border:1px solid #ccc;border-left:5px solid #3a3;border-radius:4px;margin:.6em 0;
padding:.5em .8em}.episode.failure{border-left-color:#c33}.meta{color:#555;margin:.2em 0}
.turns{margin:.3em 0;padding-left:1.5em}pre{white-space:pre-wrap;word-break:break-word;margin:.2em 0}
.turn-text{background:#eef3ff;padding:.3em}.observation{background:#f3f3f3;padding:.3em;color:#444}
.call{margin:.2em 0}.call.error .status{color:#c33;font-weight:bold}.call.ok .status{color:#282}
.verdict{margin:.2em 0}.gold{color:#262}.answer.none{color:#a60}.turn-result{color:#555;margin:.2em 0}
.question{margin:.2em 0}.arguments{margin-left:.5em;color:#555}.extra{color:#777}
.images img{max-width:240px;max-height:240px;margin:2px;border:1px solid #999;vertical-align:top}
.missing{color:#a60;margin:0 .5em}
"""

_SCRIPT = """
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var cards = Array.prototype.slice.call(document.querySelectorAll("article.episode"));
  var keys = {task: "f-task", source: "f-source", tool: "f-tool", min: "f-min", max: "f-max", q: "f-q"};
  var flags = {failures: "f-failures", errors: "f-errors"};
  cards.forEach(function (c) {
    c.vgymText = c.textContent.toLowerCase();
    c.vgymTools = JSON.parse(c.dataset.tools);
  });
  document.querySelectorAll("img").forEach(function (img) {
    var mark = function () { if (img.naturalWidth > 0) { img.dataset.loaded = "1"; } };
    if (img.complete) { mark(); } else { img.addEventListener("load", mark); }
  });
  function bound(id) { var v = $(id).value; return v === "" ? null : parseFloat(v); }
  function apply() {
    var task = $("f-task").value, source = $("f-source").value, tool = $("f-tool").value;
    var lo = bound("f-min"), hi = bound("f-max"), q = $("f-q").value.trim().toLowerCase();
    var fail = $("f-failures").checked, err = $("f-errors").checked, n = 0, sum = 0;
    cards.forEach(function (c) {
      var r = parseFloat(c.dataset.reward);
      var ok = (!task || c.dataset.task === task) && (!source || c.dataset.source === source) &&
        (!tool || c.vgymTools.indexOf(tool) >= 0) && (lo === null || r >= lo) && (hi === null || r <= hi) &&
        (!fail || c.dataset.failure === "1") && (!err || c.dataset.toolError === "1") &&
        (!q || c.vgymText.indexOf(q) >= 0);
      c.hidden = !ok;
      if (ok) { n += 1; sum += r; }
    });
    $("vgym-shown").textContent = String(n);
    $("vgym-shown-reward").textContent = n ? (sum / n).toFixed(3) : "-";
  }
  function setSelect(el, value) {
    if (value && !Array.prototype.some.call(el.options, function (o) { return o.value === value; })) {
      var o = document.createElement("option"); o.value = value; o.textContent = value; el.appendChild(o);
    }
    el.value = value;
  }
  function readUrl() {
    var params = new URLSearchParams(location.search.slice(1));
    new URLSearchParams(location.hash.slice(1)).forEach(function (v, k) { params.set(k, v); });
    Object.keys(keys).forEach(function (k) {
      var el = $(keys[k]), v = params.get(k) || "";
      if (el.tagName === "SELECT") { setSelect(el, v); } else { el.value = v; }
    });
    Object.keys(flags).forEach(function (k) {
      $(flags[k]).checked = params.has(k) && params.get(k) !== "0";
    });
  }
  function writeUrl() {
    var params = new URLSearchParams();
    Object.keys(keys).forEach(function (k) { var v = $(keys[k]).value; if (v) { params.set(k, v); } });
    Object.keys(flags).forEach(function (k) { if ($(flags[k]).checked) { params.set(k, "1"); } });
    history.replaceState(null, "", "#" + params.toString());
  }
  document.querySelectorAll("#vgym-filters select, #vgym-filters input").forEach(function (el) {
    el.addEventListener("input", function () { apply(); writeUrl(); });
    el.addEventListener("change", function () { apply(); writeUrl(); });
  });
  $("vgym-filters").addEventListener("submit", function (e) { e.preventDefault(); });
  window.addEventListener("hashchange", function () { readUrl(); apply(); });
  readUrl();
  apply();
})();
"""
