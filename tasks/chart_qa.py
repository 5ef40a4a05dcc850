"""Chart question answering: read a value, an extreme or a difference off a bar, line or pie chart.

Contents: :data:`TASK_NAME`, :data:`KINDS`, :data:`QUESTIONS`, :data:`CATEGORIES`, :data:`TOLERANCE`,
:class:`ChartSpec`, :class:`ChartQaConfig`, :class:`ChartQaTask`, :func:`render_chart`.

A chart of 3–6 categories (fruit names; pies hold at most 8, 5 or 4 wedges at difficulty 0, 1, 2) with random
integer values is drawn with matplotlib (Agg canvas on a :class:`~matplotlib.figure.Figure`, no pyplot state)
at 320×240 by default (median 24–33 ms per sample on one shared CPU core). Bar and line charts have a 0–100
y-axis with gridlines (0–100·s at difficulty 2); pie charts show shares in percent that sum to 100. Questions:

- ``value``: "What is the value of Pear?" (pie: its percentage) — a number;
- ``max`` / ``min``: "Which category has the largest value?" — a category name, scored by exact match;
- ``difference``: "How much larger is the value of Pear than that of Fig?" — a positive number.

Numbers are scored with ``numeric_reward(abs_tol=TOLERANCE[difficulty] · scale)``: 0.5 at difficulty 0
(printed integers, read exactly), 2 at difficulty 1 (values are multiples of 5 on a 10-unit grid, so any
reading within half a value step is right) and 5 at difficulty 2 (a quarter of the 20-unit gridline spacing).
A difference gets the same tolerance. Extremes (largest and smallest) lead the runner-up by at least
``2 · tol`` (and 1), and a difference is at least that large, so every question has one readable answer.

Difficulty:
    0 — every value is printed on its bar, point or wedge (readable with crop, or OCR).
    1 — no value labels: values (multiples of 5) are read off the axis gridlines, or estimated from pie
        angles.
    2 — as 1 with any integer value, gridlines every 20, and the axis scaled by 1, 10 or 100.

``metadata["texts"]`` lists every printed label (values, categories, axis ticks) with its pixel box, for the
oracle OCR backend; ``metadata["objects"]`` names each bar, point or wedge with its box;
``metadata["crop_box"]`` is the oracle's crop (the target marks with their labels, plus the y-axis when values
must be read off it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vgym.errors import InvalidConfigError
from vgym.rewards import exact_match_reward, numeric_reward
from vgym.task import Sample, Solution, Task, register_task, sample_seed

__all__ = [
    "TASK_NAME", "KINDS", "QUESTIONS", "CATEGORIES", "TOLERANCE", "ChartSpec", "ChartQaConfig", "ChartQaTask",
    "render_chart",
]

TASK_NAME = "chart_qa"

KINDS: tuple[str, ...] = ("bar", "line", "pie")
"""Chart kinds."""

QUESTIONS: tuple[str, ...] = ("value", "max", "min", "difference")
"""Question types; ``max`` and ``min`` are answered with a category name, the others with a number."""

CATEGORIES: tuple[str, ...] = (
    "Apple", "Banana", "Cherry", "Grape", "Lemon", "Mango", "Olive", "Peach",
    "Pear", "Plum", "Kiwi", "Lime", "Melon", "Fig", "Guava", "Papaya",
)
"""Category names (distinct after normalisation); a chart uses a random subset in random order."""

TOLERANCE: dict[int, float] = {0: 0.5, 1: 2.0, 2: 5.0}
"""Absolute tolerance of numeric answers per difficulty, in axis units before the difficulty-2 scale."""

_STEP = {0: 1, 1: 5, 2: 1}  # value quantum per difficulty
_GRID = {0: 10, 1: 10, 2: 20}  # gridline spacing per difficulty (before the scale)
_SCALES = (1, 10, 100)  # difficulty-2 axis scales
_AXIS_MAX = 100  # y-axis top (before the scale); values stay in [_STEP, 90] so labels fit above them
_MIN_SHARE = {0: 5, 1: 10, 2: 5}  # smallest pie share in percent
_PIE_MAX = {0: 8, 1: 5, 2: 4}
"""Most wedges per pie: shares sum to 100, so unique extremes with the margin get rare (and impossible past 6
at difficulties 1 and 2); at these caps at least 15% of draws are accepted (measured), so rejection stays
quick."""
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
"""Bar/line colours (one per chart) and pie wedge colours (one per wedge)."""


@dataclass(frozen=True)
class ChartSpec:
    """Everything that determines a sample: the chart and the question (a canonical, hashable description)."""

    kind: str
    """One of :data:`KINDS`."""
    names: tuple[str, ...]
    """Category names in drawing order."""
    values: tuple[int, ...]
    """Values in axis units (already scaled); pie values are percentages summing to 100."""
    question: str
    """One of :data:`QUESTIONS`."""
    targets: tuple[int, ...]
    """Indices of the categories the question names: one for ``value``, (larger, smaller) for ``difference``,
    the answer's index for ``max`` / ``min``."""
    scale: int
    """Axis scale (1 except at difficulty 2)."""
    colour: int
    """Index into the colour palette of the bars or line."""


@dataclass(frozen=True)
class ChartQaConfig:
    """Chart generation settings."""

    difficulty: int = 0
    """0: values printed on the marks; 1: read off a 10-unit grid (multiples of 5); 2: any integer, 20-unit
    grid, scaled axis (see the module docstring)."""
    width: int = 320
    """Image width in pixels (at least 40 per category)."""
    height: int = 240
    """Image height in pixels (at least 160)."""
    dpi: int = 80
    """Rendering resolution; fonts scale with it (8 pt is ~9 px at 80 dpi)."""
    font_size: float = 8.0
    """Font size of every label, in points."""
    min_categories: int = 3
    """Fewest categories per chart (at least 2: a difference needs two)."""
    max_categories: int = 6
    """Most categories per chart (at most 8; pies are further capped at 8, 5 or 4 wedges by difficulty)."""
    kinds: tuple[str, ...] = KINDS
    """Chart kinds to draw from, uniformly."""
    questions: tuple[str, ...] = QUESTIONS
    """Question types to draw from, uniformly; only ``max``/``min`` makes the answer set finite."""

    def __post_init__(self) -> None:
        if self.difficulty not in (0, 1, 2):
            raise InvalidConfigError(f"difficulty must be 0, 1 or 2, got {self.difficulty}")
        if not 2 <= self.min_categories <= self.max_categories <= 8:
            raise InvalidConfigError(
                "need 2 <= min_categories <= max_categories <= 8, got "
                f"min_categories={self.min_categories}, max_categories={self.max_categories}"
            )
        if self.width < 40 * self.max_categories or self.height < 160 or self.dpi < 30 or self.font_size <= 0:
            raise InvalidConfigError(
                "need width >= 40 * max_categories, height >= 160, dpi >= 30 and font_size > 0, got "
                f"width={self.width}, max_categories={self.max_categories}, height={self.height}, "
                f"dpi={self.dpi}, "
                f"font_size={self.font_size}"
            )
        for field_name, given, valid in (
            ("kinds", self.kinds, KINDS),
            ("questions", self.questions, QUESTIONS),
        ):
            if not given or len(set(given)) != len(given) or not set(given) <= set(valid):
                raise InvalidConfigError(f"{field_name} must be distinct names from {valid}, got {given!r}")


class ChartQaTask(Task):
    """Answer a question about a rendered chart (see the module docstring)."""

    name = TASK_NAME
    config_cls = ChartQaConfig
    default_tools = ("crop", "ocr")
    config: ChartQaConfig

    def spec(self, split: str, index: int, seed: int) -> ChartSpec:
        """The chart and question of item ``index`` of ``split``: a pure function of the arguments and config.

        Raises:
            InvalidConfigError: for an unknown split or a negative seed or index.
        """
        cfg, d = self.config, self.config.difficulty
        rng = sample_seed(seed, split, index)
        kind = cfg.kinds[int(rng.integers(len(cfg.kinds)))]
        question = cfg.questions[int(rng.integers(len(cfg.questions)))]
        n = int(rng.integers(cfg.min_categories, cfg.max_categories + 1))
        n = min(n, _PIE_MAX[d]) if kind == "pie" else n
        names = tuple(str(CATEGORIES[i]) for i in rng.permutation(len(CATEGORIES))[:n])
        scale = int(_SCALES[int(rng.integers(len(_SCALES)))]) if d == 2 and kind != "pie" else 1
        step = _STEP[d]
        margin = max(step, math.ceil(2 * TOLERANCE[d] / step) * step)  # extremes and differences lead by this
        while True:  # rejection sampling: >= 15% of draws are accepted at every (kind, difficulty, n) allowed
            if kind == "pie":
                values = _pie_shares(rng, n, step, _MIN_SHARE[d])
            else:
                values = step * rng.integers(1, 90 // step + 1, n)
            order = np.argsort(values, kind="stable")
            if (
                values[order[-1]] - values[order[-2]] >= margin
                and values[order[1]] - values[order[0]] >= margin
            ):
                break
        if question == "value":
            targets: tuple[int, ...] = (int(rng.integers(n)),)
        elif question in ("max", "min"):
            targets = (int(order[-1] if question == "max" else order[0]),)
        else:
            pairs = [(a, b) for a in range(n) for b in range(n) if values[a] - values[b] >= margin]
            targets = tuple(int(v) for v in pairs[int(rng.integers(len(pairs)))])  # the extremes form a pair
        colour = int(rng.integers(len(_COLOURS)))
        return ChartSpec(kind, names, tuple(int(v) * scale for v in values), question, targets, scale, colour)

    def sample(self, split: str, index: int, seed: int) -> Sample:
        cfg = self.config
        spec = self.spec(split, index, seed)
        image, drawn = render_chart(spec, cfg)
        names, (t0, *rest) = spec.names, spec.targets
        pie = spec.kind == "pie"
        if spec.question == "value":
            question = (
                f"What percentage does {names[t0]} account for?"
                if pie
                else f"What is the value of {names[t0]}?"
            )
            answer = str(spec.values[t0])
        elif spec.question in ("max", "min"):
            word = "largest" if spec.question == "max" else "smallest"
            question = f"Which category has the {word} {'share' if pie else 'value'}?"
            answer = names[t0]
        else:
            t1 = rest[0]
            question = (
                f"How many percentage points larger is the share of {names[t0]} than that of {names[t1]}?"
                if pie
                else f"How much larger is the value of {names[t0]} than that of {names[t1]}?"
            )
            answer = str(spec.values[t0] - spec.values[t1])
        return Sample(
            id=f"{TASK_NAME}/{split}/{seed}/{index}",
            task=TASK_NAME,
            split=split,
            index=index,
            question=question,
            images=(image,),
            answer=answer,
            metadata={
                "kind": spec.kind,
                "names": list(names),
                "values": list(spec.values),
                "question_type": spec.question,
                "targets": list(spec.targets),
                "scale": spec.scale,
                "abs_tol": TOLERANCE[cfg.difficulty] * spec.scale,
                "axis_max": None if pie else _AXIS_MAX * spec.scale,
                "grid_step": None if pie else _GRID[cfg.difficulty] * spec.scale,
                **drawn,
            },
        )

    def score(self, sample: Sample, answer: str) -> float:
        if sample.metadata["question_type"] in ("max", "min"):
            return exact_match_reward(answer, sample.answer)
        return numeric_reward(answer, float(sample.answer), abs_tol=sample.metadata["abs_tol"])

    def answer_choices(self) -> tuple[str, ...] | None:
        """The category names when every question asks for an extreme; None when numbers can be answers."""
        return CATEGORIES if set(self.config.questions) <= {"max", "min"} else None

    def prompt(self, sample: Sample, tools_enabled: bool) -> str:
        if sample.metadata["question_type"] in ("max", "min"):
            return f"{sample.question} Answer with one category name: {', '.join(sample.metadata['names'])}."
        return f"{sample.question} Answer with a number only."

    def solution(self, sample: Sample, tools_enabled: bool) -> Solution:
        calls = (("crop", {"box": list(sample.metadata["crop_box"])}),) if tools_enabled else ()
        return Solution(tool_calls=calls, answer=sample.answer)


def _pie_shares(rng: np.random.Generator, n: int, step: int, min_share: int) -> np.ndarray:
    """``n`` random multiples of ``step`` percent, each at least ``min_share``, summing to 100."""
    base = -(-min_share // step)  # units of `step` every share gets
    spare = 100 // step - n * base
    cuts = np.sort(rng.integers(0, spare + 1, n - 1))
    return step * (base + np.diff(np.concatenate([[0], cuts, [spare]])))


def _pixel_box(bbox: Any, width: int, height: int) -> list[int]:
    """A matplotlib display bbox (pixels, origin bottom-left) as ``[x1, y1, x2, y2]`` image pixels (origin
    top-left, x2/y2 exclusive), widened to whole pixels and clipped to the image."""
    x1, x2 = max(0, math.floor(bbox.x0)), min(width, math.ceil(bbox.x1))
    y1, y2 = max(0, math.floor(height - bbox.y1)), min(height, math.ceil(height - bbox.y0))
    return [int(x1), int(y1), int(x2), int(y2)]


def _union(boxes: list[list[int]], pad: int, width: int, height: int) -> list[int]:
    """The smallest box holding ``boxes``, grown by ``pad`` pixels and clipped to the image."""
    return [max(0, min(b[0] for b in boxes) - pad), max(0, min(b[1] for b in boxes) - pad),
            min(width, max(b[2] for b in boxes) + pad), min(height, max(b[3] for b in boxes) + pad)]


def render_chart(spec: ChartSpec, config: ChartQaConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Draw ``spec`` and measure where everything landed.

    Args:
        spec: the chart (see :meth:`ChartQaTask.spec`).
        config: image size, dpi, font size and difficulty (value labels are printed only at difficulty 0).

    Returns:
        ``(image, drawn)``: the RGB uint8 (height, width, 3) chart and a JSON-serialisable dict with ``texts``
        (every label: ``{"text", "box", "role"}``, role "value", "category" or "tick"), ``objects`` (one
        ``{"name", "box"}`` per bar, point or wedge, in category order), ``plot_box`` (the axes with their
        labels) and ``crop_box`` (the oracle's crop); boxes are ``[x1, y1, x2, y2]`` pixels, x2/y2 exclusive.
    """
    w, h, d, fs = config.width, config.height, config.difficulty, config.font_size
    fig = Figure(figsize=(w / config.dpi, h / config.dpi), dpi=config.dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    n, xs = len(spec.names), np.arange(len(spec.names))
    labelled = d == 0
    value_texts: list[Any] = []
    if spec.kind == "pie":
        fig.subplots_adjust(left=0.2, right=0.8, bottom=0.1, top=0.9)
        wedges, cat_texts, *auto = ax.pie(
            spec.values,
            labels=spec.names,
            colors=_COLOURS[:n],
            startangle=90,
            counterclock=False,
            # autopct gets the float share (29 arrives as 28.99...), so round it; "%d" would print 28.
            textprops={"fontsize": fs},
            autopct=(lambda pct: f"{round(pct)}%") if labelled else None,
            pctdistance=0.7,
            wedgeprops={"edgecolor": "white", "linewidth": 1},
        )
        value_texts, marks, tick_texts = (auto[0] if auto else []), wedges, []
    else:
        fig.subplots_adjust(left=0.14, right=0.97, bottom=0.12, top=0.95)
        top, grid = _AXIS_MAX * spec.scale, _GRID[d] * spec.scale
        colour = _COLOURS[spec.colour]
        if spec.kind == "bar":
            marks = list(ax.bar(xs, spec.values, width=0.6, color=colour, zorder=2))
        else:
            ax.plot(xs, spec.values, color=colour, marker="o", markersize=5, zorder=2)
            ax.set_xlim(-0.5, n - 0.5)
            marks = []
        ax.set_ylim(0, top)
        ax.set_yticks(range(0, top + 1, grid))
        ax.set_xticks(xs, spec.names)
        ax.tick_params(labelsize=fs)
        ax.grid(axis="y", color="#cccccc", linewidth=0.8, zorder=0)
        ax.set_axisbelow(True)
        if labelled:
            pad = 0.02 * top if spec.kind == "bar" else 0.04 * top
            value_texts = [ax.text(x, v + pad, str(v), ha="center", va="bottom", fontsize=fs, zorder=3)
                           for x, v in zip(xs, spec.values)]
        cat_texts, tick_texts = ax.get_xticklabels(), ax.get_yticklabels()
    canvas.draw()
    renderer = canvas.get_renderer()
    image = np.asarray(canvas.buffer_rgba())[:, :, :3].copy()
    texts = [{"text": t.get_text(), "box": _pixel_box(t.get_window_extent(renderer), w, h), "role": role}
             for role, group in (("value", value_texts), ("category", cat_texts), ("tick", tick_texts))
             for t in group]
    if spec.kind == "line":  # a point's box: its marker (5 pt wide) around the data point
        radius = 2.5 * config.dpi / 72
        centres = [ax.transData.transform((x, v)) for x, v in zip(xs, spec.values)]
        objects = [[math.floor(cx - radius), math.floor(h - cy - radius), math.ceil(cx + radius),
                    math.ceil(h - cy + radius)] for cx, cy in centres]
    else:
        objects = [_pixel_box(m.get_window_extent(renderer), w, h) for m in marks]
    axes_box = _pixel_box(ax.bbox, w, h)
    fig.clear()  # no pyplot: nothing else holds the figure, so this frees its artists now
    cats = [t for t in texts if t["role"] == "category"]
    vals = [t for t in texts if t["role"] == "value"]
    plot_box = _union([axes_box, *objects, *(t["box"] for t in texts)], 2, w, h)
    if spec.question in ("max", "min"):
        crop_box = plot_box
    else:  # the target marks, their labels, and the y-axis when values must be read off it
        boxes = [objects[i] for i in spec.targets] + [cats[i]["box"] for i in spec.targets]
        boxes += [vals[i]["box"] for i in spec.targets] if vals else []
        if not labelled and spec.kind != "pie":
            boxes += [t["box"] for t in texts if t["role"] == "tick"]
            # the axis line, full height
            boxes.append([axes_box[0], axes_box[1], axes_box[0] + 1, axes_box[3]])
        crop_box = _union(boxes, 3, w, h)
    return image, {
        "texts": texts,
        "objects": [{"name": name, "box": box} for name, box in zip(spec.names, objects)],
        "plot_box": plot_box,
        "crop_box": crop_box,
        "labelled": labelled,
    }


register_task(ChartQaTask)
