"""Video question answering: count, order and at-time questions about short synthetic clips.

Contents: :data:`TASK_NAME`, :data:`QUESTIONS`, :data:`AT_TIME_OPTIONS`, :class:`VideoQaConfig`,
:class:`VideoQaTask`.

Clips come from the shape-scene renderer of :mod:`vgym.data.shape_scenes`, as video_grounding's do, and their
plans are built with its :class:`~vgym.data.shape_scenes.Scene` (coloured shapes on a dark background, 224×168
at 10 fps, 6/8/10 s by difficulty; an ``appear`` event shows an object only during its interval, a ``flash``
turns the background a colour). Three question kinds, each with an exact answer drawn uniformly *before* the
clip is built:

- ``count``: "How many times does the screen flash green?" / "How many times does the red ball appear?" — an
  integer 0..m (m = overview_frames - 1), scored by :func:`vgym.rewards.numeric_reward`;
- ``order``: "Which happens first: (A) the red ball appears, (B) the screen flashes white?" — A or B;
- ``at_time``: "What colour is the screen at 3.4 s? (A) green (B) white (C) purple (D) pink (E) no flash".
  The two multiple-choice kinds are scored by :func:`vgym.rewards.multiple_choice_reward`.

Timing (:func:`vgym.data.clips.overview_timeline`). The model sees ``overview_frames`` (n) evenly spaced
frames, the ones video_grounding shows. Every event lies strictly between two of them, in a *gap*, so the
overview shows only the background and the static objects, whatever the events are. Each of the n - 1 inner
gaps has a *slot*: an interval around the gap's probe frames (at k·D/n s). Count and order subjects happen
only in slots, at most one per slot (a slot may instead hold a look-alike: another flash colour, or another
colour of the counted shape in its cell), and nowhere else. The oracle's one call
``sample_frames(D/(2n), D - D/(2n), n - 1)`` returns probe frames, so it sees each subject event once,
separated by overview frames in which nothing shows: counts and order follow from its frames. ``at_time`` asks
about a frame inside a slot in any gap (never an overview frame); the slot holds a flash or nothing, and the
oracle calls ``get_frame`` there. Distractor flashes keep a frame away from slots and from each other;
distractor appearances go anywhere in gaps. 4 overview frames + 3 tool frames fit well within the env's
default budget of 20 images.

Tool necessity: a plan is its slot-free part (query, distractors, statics) plus a *state* that fills the slots
(the slots holding the subject, which option comes first, the flash colour at the asked time). Changing the
state changes nothing outside the slots, so :meth:`VideoQaTask.counterfactuals` (one state per other answer)
shows byte-identical overview frames; the answers of a sample and its counterfactuals are the whole answer
set, so a policy without tools is right at most 1/n (count), 1/2 (order) or 1/5 (at_time) of the time. Clips
are named by their plan.

Difficulty (clip seconds / event length in frames at 10 fps / distractor events / static objects / look-alike
rate):
    0 — 6 s / 8–14 / 1 / 1 / 0.25;  1 — 8 s / 4–10 / 3 / 2 / 0.5;  2 — 10 s / 2–5 / 5 / 2 / 0.75.
"""

from __future__ import annotations

import copy
import string
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from vgym.data.clips import clip_path, ensure_clip, overview_timeline
from vgym.data.shape_scenes import COLOURS, FLASH_COLOURS, Scene, render_frame
from vgym.errors import InvalidConfigError
from vgym.rewards import multiple_choice_reward, numeric_reward
from vgym.task import Sample, Solution, Task, register_task, sample_seed
from vgym.tasks.video_grounding import VideoGroundingConfig

__all__ = ["TASK_NAME", "QUESTIONS", "AT_TIME_OPTIONS", "VideoQaConfig", "VideoQaTask"]

TASK_NAME = "video_qa"

QUESTIONS: tuple[str, ...] = ("count", "order", "at_time")
"""Question kinds; with ``question=None`` each sample's kind is uniform over these."""

AT_TIME_OPTIONS: tuple[str, ...] = (*FLASH_COLOURS, "no flash")
"""Options of ``at_time`` questions, lettered A.. in this order."""

# difficulty: (seconds, (shortest, longest) event in frames at 10 fps, distractors, statics, look-alikes)
_LEVELS = {
    0: (6, (8, 14), 1, 1, 0.25),
    1: (8, (4, 10), 3, 2, 0.5),
    2: (10, (2, 5), 5, 2, 0.75),
}
_RENDER_VERSION = 1  # bump when plans or pictures change, so cached clips are rewritten under new names


@dataclass(frozen=True)
class VideoQaConfig:
    """Clip and question settings."""

    difficulty: int = 0
    """0, 1 or 2: longer clips, shorter events, more distractors and look-alikes (see the module
    docstring)."""
    question: str | None = None
    """"count", "order" or "at_time"; None draws the kind uniformly per sample."""
    fps: int = 10
    """Frames per second, 2 to 60."""
    width: int = 224
    """Frame width in pixels (a multiple of 4, 96 to 640)."""
    height: int = 168
    """Frame height in pixels: 3/4 of ``width``."""
    overview_frames: int = 4
    """Frames of the clip in ``Sample.images``: 3 or 4 (n). Counts go up to n - 1 and order needs two slots;
    with 4 the oracle's 3 frames bring the episode to 7 of the env's default 20 images."""
    clip_dir: str | None = None
    """Folder of the cached mp4 clips; None means ``<tempfile.gettempdir()>/vgym-clips``. Not part of the
    names."""

    def __post_init__(self) -> None:
        if self.difficulty not in _LEVELS:
            raise InvalidConfigError(f"difficulty must be 0, 1 or 2, got {self.difficulty!r}")
        if self.question is not None and self.question not in QUESTIONS:
            raise InvalidConfigError(
                f"question must be one of {QUESTIONS} or None (a mix), got {self.question!r}"
            )
        if not isinstance(self.fps, int) or not 2 <= self.fps <= 60:
            raise InvalidConfigError(f"fps must be an int from 2 to 60 (10 by default), got {self.fps!r}")
        if self.overview_frames not in (3, 4):
            raise InvalidConfigError(
                "overview_frames must be 3 or 4 (the oracle probes the gaps between them), "
                f"got {self.overview_frames!r}"
            )
        self.render_config  # noqa: B018  (validates width and height)

    @property
    def render_config(self) -> VideoGroundingConfig:
        """The renderer's config (size and fps).

        Raises:
            InvalidConfigError: for a width/height pair video_grounding cannot draw.
        """
        return VideoGroundingConfig(fps=self.fps, width=self.width, height=self.height)

    @property
    def num_frames(self) -> int:
        """Frames in the clip."""
        return _LEVELS[self.difficulty][0] * self.fps

    @property
    def event_frames(self) -> tuple[int, int]:
        """Shortest and longest event in frames (the difficulty's range at 10 fps, scaled to ``fps``)."""
        low, high = _LEVELS[self.difficulty][1]
        return max(1, round(low * self.fps / 10)), max(1, round(high * self.fps / 10))


# Each kind: a planner (query without slot contents, and the sample's state), the slot contents of a state,
# and the
# states of the counterfactuals. A state is the list of slots holding the subject (count), the option shown
# first (order: 0 or 1) or the flash colour in the slot (at_time: a colour or None).


def _plan_count(scene: Scene) -> tuple[dict[str, Any], Any]:
    rng, slots, subject = scene.rng, scene.inner_slots(), scene.subject()
    pool = (
        scene.flash_colours if subject["kind"] == "flash" else [c for c in COLOURS if c != subject["colour"]]
    )
    # Each slot's look-alike (another flash colour, or another colour of the subject's shape in its cell), or
    # None.
    alternatives = [str(scene.pick(pool)) if rng.random() < scene.look_alike else None for _ in slots]
    # the answer, uniform
    on = sorted(rng.permutation(len(slots))[: int(rng.integers(len(slots) + 1))].tolist())
    return {"kind": "count", "subject": subject, "slots": slots, "alternatives": alternatives}, on


def _count_contents(query: dict[str, Any], on: list[int]) -> list[tuple[dict[str, Any], int]]:
    colours = [query["subject"]["colour"] if g in on else alt for g, alt in enumerate(query["alternatives"])]
    return [({**query["subject"], "colour": c}, g) for g, c in enumerate(colours) if c is not None]


def _count_others(query: dict[str, Any], on: list[int]) -> list[Any]:
    """One state per other count: the first free slots filled, or the last filled ones emptied."""
    off = [g for g in range(len(query["slots"])) if g not in on]
    return [sorted(on + off[: a - len(on)]) if a > len(on) else on[:a]
            for a in range(len(query["slots"]) + 1) if a != len(on)]


def _plan_order(scene: Scene) -> tuple[dict[str, Any], Any]:
    rng, slots = scene.rng, scene.inner_slots()
    options = [scene.subject(), scene.subject()]
    pair = sorted(rng.permutation(len(slots))[:2].tolist())
    for g, slot in enumerate(slots):  # a distractor in the unused slot, with the difficulty's rate
        if g not in pair and rng.random() < scene.look_alike:
            if rng.random() < 0.5:
                scene.flash(slot, scene.pick(scene.flash_colours))
            else:
                scene.appear(slot)
    return {"kind": "order", "options": options, "slots": slots, "pair": pair}, int(rng.integers(2))


def _order_contents(query: dict[str, Any], first: int) -> list[tuple[dict[str, Any], int]]:
    return list(zip([query["options"][first], query["options"][1 - first]], query["pair"]))


def _plan_at_time(scene: Scene) -> tuple[dict[str, Any], Any]:
    slot = scene.slot(scene.pick(scene.timeline.gaps), [])
    frame = int(scene.rng.integers(slot[0], slot[1]))
    colour = scene.pick([*FLASH_COLOURS, None])  # the answer, uniform over the options
    return {"kind": "at_time", "frame": frame, "slots": [slot]}, colour


def _at_time_contents(query: dict[str, Any], colour: str | None) -> list[tuple[dict[str, Any], int]]:
    return [] if colour is None else [({"kind": "flash", "colour": colour}, 0)]


_KINDS: dict[
    str, tuple[Callable[[Scene], tuple[dict[str, Any], Any]], Callable[..., list], Callable[..., list]]
] = {
    "count": (_plan_count, _count_contents, _count_others),
    "order": (_plan_order, _order_contents, lambda query, first: [1 - first]),
    "at_time": (
        _plan_at_time,
        _at_time_contents,
        lambda query, colour: [c for c in (*FLASH_COLOURS, None) if c != colour],
    ),
}


def _fill(plan: dict[str, Any], state: Any) -> dict[str, Any]:
    """A copy of ``plan`` with the slots' contents of ``state`` (slot objects and events, tagged ``"slot"``,
    last)."""
    new = copy.deepcopy(plan)
    # slot objects come last: indices stay valid
    new["objects"] = [o for o in new["objects"] if "slot" not in o]
    new["events"] = [e for e in new["events"] if "slot" not in e]
    query = new["query"]
    for subject, g in _KINDS[query["kind"]][1](query, state):
        start, end = query["slots"][g]
        event = {"kind": subject["kind"], "start": start, "end": end, "slot": g}
        if subject["kind"] == "flash":
            event["colour"] = subject["colour"]
        else:
            new["objects"].append({**{k: subject[k] for k in ("colour", "shape", "cell")}, "slot": g})
            event["object"] = len(new["objects"]) - 1
        new["events"].append(event)
    return new


def _state(plan: dict[str, Any]) -> Any:
    """The state ``plan``'s slots show (the inverse of :func:`_fill`)."""
    query, in_slot = plan["query"], [e for e in plan["events"] if "slot" in e]
    if query["kind"] == "count":
        return sorted(e["slot"] for e in in_slot if _matches(plan, e, query["subject"]))
    if query["kind"] == "order":
        return _gold(plan)[1]
    return in_slot[0]["colour"] if in_slot else None


def _matches(plan: dict[str, Any], event: dict[str, Any], subject: dict[str, Any]) -> bool:
    if event["kind"] != subject["kind"]:
        return False
    if event["kind"] == "flash":
        return event["colour"] == subject["colour"]
    obj = plan["objects"][event["object"]]
    return (obj["colour"], obj["shape"]) == (subject["colour"], subject["shape"])


def _gold(plan: dict[str, Any]) -> tuple[str, int | None]:
    """The answer text and, for multiple choice, the gold option's index, read from the plan's events."""
    query, events = plan["query"], plan["events"]
    if query["kind"] == "count":
        return str(sum(_matches(plan, e, query["subject"]) for e in events)), None
    if query["kind"] == "order":
        firsts = [min(e["start"] for e in events if _matches(plan, e, s)) for s in query["options"]]
        index = int(firsts[1] < firsts[0])
    else:
        colours = [
            e["colour"] for e in events if e["kind"] == "flash" and e["start"] <= query["frame"] < e["end"]
        ]
        # the renderer draws the last one
        index = AT_TIME_OPTIONS.index(colours[-1] if colours else "no flash")
    return string.ascii_uppercase[index], index


def _phrase(subject: dict[str, Any]) -> str:
    if subject["kind"] == "flash":
        return f"the screen flashes {subject['colour']}"
    return f"the {subject['colour']} {subject['shape']} appears"


def _options(plan: dict[str, Any]) -> list[str] | None:
    query = plan["query"]
    if query["kind"] == "order":
        return [_phrase(s) for s in query["options"]]
    return list(AT_TIME_OPTIONS) if query["kind"] == "at_time" else None


def _question(plan: dict[str, Any], fps: int) -> str:
    query = plan["query"]
    if query["kind"] == "count":
        s = query["subject"]
        if s["kind"] == "flash":
            return f"How many times does the screen flash {s['colour']}?"
        return f"How many times does the {s['colour']} {s['shape']} appear?"
    lettered = ", ".join(f"({string.ascii_uppercase[i]}) {o}" for i, o in enumerate(_options(plan) or []))
    if query["kind"] == "order":
        return f"Which happens first: {lettered}?"
    return f"What colour is the screen at {round(query['frame'] / fps, 3):g} s? {lettered}"


class VideoQaTask(Task):
    """Answer count / order / at-time questions about a synthetic clip (see the module docstring)."""

    name = TASK_NAME
    config_cls = VideoQaConfig
    default_tools = ("sample_frames", "get_frame")
    necessary_tools = ("sample_frames", "get_frame")
    config: VideoQaConfig

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._timeline = overview_timeline(
            self.config.num_frames, self.config.fps, self.config.overview_frames
        )

    def plan(self, split: str, index: int, seed: int) -> dict[str, Any]:
        """The clip and question, a pure function of the arguments (no pixels; cheap enough to hash
        thousands).

        Returns:
            ``{"background", "objects", "events", "query"}`` in :meth:`VideoGroundingTask.plan`'s schema; the
                slots'
            objects and events carry ``"slot"`` (the slot's index) and come last. ``query`` is ``{"kind",
                "slots":
            [[start, end], ...]}`` plus ``"subject"`` and ``"alternatives"`` (count: each slot's look-alike
                colour or
            None), ``"options"`` (order: two subjects) and ``"pair"`` (their slots, in time order) or
                ``"frame"``
            (at_time). A subject is ``{"kind": "flash", "colour"}`` or ``{"kind": "appear", "colour", "shape",
            "cell"}``.

        Raises:
            InvalidConfigError: for an unknown split or a negative seed or index.
        """
        cfg = self.config
        rng = sample_seed(seed, split, index)
        kind = cfg.question or QUESTIONS[int(rng.integers(len(QUESTIONS)))]
        scene = Scene(rng, self._timeline, lengths=cfg.event_frames, look_alike=_LEVELS[cfg.difficulty][4])
        query, state = _KINDS[kind][0](scene)
        _, _, n_distractors, n_static, _ = _LEVELS[cfg.difficulty]
        scene.distractors(n_distractors)
        scene.statics(n_static)
        background = [int(v) for v in rng.integers(20, 70, 3)]
        return _fill(
            {"background": background, "objects": scene.objects, "events": scene.events, "query": query},
            state,
        )

    def sample(self, split: str, index: int, seed: int) -> Sample:
        return self._build(self.plan(split, index, seed), split, index, seed)

    def counterfactuals(self, sample: Sample) -> list[Sample]:
        """One sample per other answer, its plan differing only inside the slots (see "Tool necessity" in the
        module docstring): every other count (free slots filled with the subject from the first, or filled
        ones emptied from the last), the order swapped, every other screen colour at the asked time. Their
        answers are the whole answer set, whichever member of the class it is computed from. Each has its own
        clip (named by its plan) and the id ``<sample id>/cf<k>``."""
        meta = sample.metadata
        plan = meta["plan"]
        others = _KINDS[plan["query"]["kind"]][2](plan["query"], _state(plan))
        return [
            self._build(_fill(plan, state), sample.split, sample.index, meta["seed"], f"{sample.id}/cf{k}")
            for k, state in enumerate(others)
        ]

    def _build(
        self, plan: dict[str, Any], split: str, index: int, seed: int, sample_id: str | None = None
    ) -> Sample:
        cfg, tl = self.config, self._timeline
        render = cfg.render_config
        path = self.clip_path(split, index, seed, plan=plan)
        ensure_clip(path, lambda: [render_frame(plan, i, render) for i in range(cfg.num_frames)], cfg.fps)
        answer, gold_index = _gold(plan)
        query = plan["query"]
        metadata: dict[str, Any] = {
            "question_kind": query["kind"],
            "fps": cfg.fps,
            "num_frames": cfg.num_frames,
            "duration_s": cfg.num_frames / cfg.fps,
            "overview_frames": tl.overview,
            "probe_frames": tl.probes,
            "seed": seed,
            "plan": plan,
        }
        if gold_index is not None:
            metadata.update(options=_options(plan), gold_index=gold_index)
        if query["kind"] == "at_time":
            metadata["time_s"] = round(query["frame"] / cfg.fps, 3)
        images = tuple(render_frame(plan, i, render) for i in tl.overview)
        return Sample(
            id=sample_id or f"{TASK_NAME}/{split}/{seed}/{index}",
            task=TASK_NAME,
            split=split,
            index=index,
            question=_question(plan, cfg.fps),
            images=images,
            answer=answer,
            metadata=metadata,
            video=path,
        )

    def clip_path(self, split: str, index: int, seed: int, *, plan: dict[str, Any] | None = None) -> str:
        """Where the clip goes: ``clip_dir`` / ``video_qa-<hash>.mp4``, the hash of the task, its version, the
        renderer's version, the config (less ``clip_dir``), split, seed, index and the plan (None: the
        sample's; a counterfactual's plan names its own clip; :func:`vgym.data.clips.clip_path`)."""
        fields = {k: v for k, v in asdict(self.config).items() if k != "clip_dir"}
        plan = self.plan(split, index, seed) if plan is None else plan
        return clip_path(TASK_NAME, [self.version, _RENDER_VERSION, fields, split, seed, index, plan],
                         clip_dir=self.config.clip_dir)

    def score(self, sample: Sample, answer: str) -> float:
        meta = sample.metadata
        if meta["question_kind"] == "count":
            return numeric_reward(answer, float(sample.answer))
        return multiple_choice_reward(answer, meta["options"], meta["gold_index"])

    def prompt(self, sample: Sample, tools_enabled: bool) -> str:
        how = "a number" if sample.metadata["question_kind"] == "count" else "the letter of one option"
        return (f"{sample.question} The images are {len(sample.images)} evenly spaced frames of a "
                f"{sample.metadata['duration_s']:g} s video. Answer with {how}.")

    def answer_choices(self) -> tuple[str, ...]:
        """Counts ``"0"`` .. ``"n-1"``, letters A, B (order) or A..E (at_time); the union for the mix."""
        counts = tuple(str(c) for c in range(self.config.overview_frames))
        letters = tuple(string.ascii_uppercase[: len(AT_TIME_OPTIONS)])
        by_question = {"count": counts, "order": letters[:2], "at_time": letters, None: counts + letters}
        return by_question[self.config.question]

    def solution(self, sample: Sample, tools_enabled: bool) -> Solution:
        """``get_frame`` at the asked time (at_time), else ``sample_frames`` at the slot midpoints (count,
        order)."""
        if not tools_enabled:
            return Solution(tool_calls=(), answer=sample.answer)
        meta = sample.metadata
        if meta["question_kind"] == "at_time":
            return Solution(tool_calls=(("get_frame", {"t_s": meta["time_s"]}),), answer=sample.answer)
        duration, n = meta["duration_s"], len(sample.images)
        window = {"start_s": round(duration / (2 * n), 6), "end_s": round(duration - duration / (2 * n), 6),
                  "num_frames": n - 1}
        return Solution(tool_calls=(("sample_frames", window),), answer=sample.answer)


register_task(VideoQaTask)
