"""Tests of vgym/viewer.py and ``vgym view``: real oracle rollouts saved with save_trajectories, the page
checked as HTML (counts, escaping, image paths) and as rendered by headless Chromium (JS filters, URL presets,
no injection).

The run folder holds visual-search episodes (correct, wrong answers from ``OraclePolicy(noise=1.0)``, an
injected first turn that calls an unknown tool with ``<script>`` around it, and one cut by ``max_turns=1``
whose last crop is never shown to the model), counting episodes (the ``ground`` tool), and two ``*.jsonl``
files that are not trajectories.
"""

from __future__ import annotations

import html
import json
import logging
import shutil
import subprocess
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from vgym.app.cli import app
from vgym.env import VisualToolEnv
from vgym.errors import VgymError
from vgym.eval.viewer import build_view, find_trajectory_files
from vgym.policies.base import PolicyInput, PolicyOutput
from vgym.policies.oracle import OraclePolicy
from vgym.rollout.chat import ChatEncoder
from vgym.rollout.loop import EpisodeSpec, rollout
from vgym.rollout.trajectory import load_trajectory_records, save_trajectories

INJECTED = ('<script>document.body.setAttribute("data-pwned", "1")</script>'
            '<img src=x onerror="document.body.dataset.pwned = 2"></pre><b id="bold">')
"""Untrusted model text: it must show as text, and neither the script nor the handler may run."""
BAD_CALL = INJECTED + '<tool_call>{"name": "zoom", "arguments": {"note": "</code>&amp;"}}</tool_call>'
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary (apt install chromium) on PATH"
)


class InjectFirstTurn:
    """Plays ``text`` as every episode's first turn, then the oracle (which answers once past its tool
    calls)."""

    reads_ground_truth = True  # the oracle's turns need the solution

    def __init__(self, text: str) -> None:
        self.text = text
        self.oracle = OraclePolicy()

    def act(self, batch: Sequence[PolicyInput]) -> list[PolicyOutput]:
        later = [item for item in batch if item.turn > 0]
        answers = iter(self.oracle.act(later))
        return [PolicyOutput(self.text) if item.turn == 0 else next(answers) for item in batch]


@pytest.fixture(scope="module")
def run(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vgym.engine.tiny import load_vlm

    _, processor = load_vlm(tiny_dir)
    encoder = ChatEncoder(processor)
    folder = tmp_path_factory.mktemp("run")

    def play(task: str, policy: Any, indices: Sequence[int], out: str, name: str, **env: Any) -> None:
        specs = [EpisodeSpec("train", i, group_id=i, seed=i) for i in indices]
        trajs = rollout(lambda: VisualToolEnv(task, **env), policy, encoder, specs)
        save_trajectories(trajs, folder / out, name)

    play("visual_search", OraclePolicy(), [0, 1, 2], "tools", "eval_test")
    play("visual_search", OraclePolicy(noise=1.0), [3, 4], "tools", "noisy")
    play("visual_search", InjectFirstTurn(BAD_CALL), [5], "tools", "injected")
    play("visual_search", OraclePolicy(), [6], "tools", "cut", max_turns=1)
    play("counting", OraclePolicy(), [0, 1], "counting", "oracle")
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss/sft": 0.5}) + "\n")
    (folder / "notes").mkdir()
    (folder / "notes" / "broken.jsonl").write_text("not json\n")
    return folder


@pytest.fixture(scope="module")
def records(run: Path) -> list[dict[str, Any]]:
    """All trajectory records, in the viewer's order (files sorted by path)."""
    return [
        r
        for path in sorted(run.rglob("*.jsonl"))
        if path.parent.name != "notes" and path.name != "metrics.jsonl"
        for r in load_trajectory_records(path)
    ]


class Node:
    """A parsed element: tag, attributes, and its children (elements and text, in document order)."""

    def __init__(self, tag: str, attrs: dict[str, str | None]) -> None:
        self.tag, self.attrs = tag, attrs
        self.children: list[Node | str] = []

    def iter(self):  # type: ignore[no-untyped-def]
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def all_text(self) -> str:
        return "".join(c if isinstance(c, str) else c.all_text() for c in self.children)

    def find(self, tag: str, cls: str | None = None) -> list[Node]:
        return [
            n
            for n in self.iter()
            if n.tag == tag and (cls is None or cls in (n.attrs.get("class") or "").split())
        ]


class Parser(HTMLParser):
    VOID = {"img", "input", "meta", "br", "link"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        while len(self.stack) > 1 and self.stack.pop().tag != tag:
            pass

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(page: str) -> Node:
    parser = Parser()
    parser.feed(page)
    return parser.root


def by_id(root: Node, ident: str) -> Node:
    (node,) = [n for n in root.iter() if n.attrs.get("id") == ident]
    return node


def accuracy(record: dict[str, Any]) -> float:
    return record["reward_parts"]["accuracy"]


# ---------------------------------------------------------------- the page as HTML (no browser)


def test_finds_trajectory_files_and_warns_about_others(run: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="vgym.eval.viewer"):
        files = find_trajectory_files(run)
    assert [f.path.relative_to(run).as_posix() for f in files] == [  # sorted by path
        "counting/oracle.jsonl", "tools/cut.jsonl", "tools/eval_test.jsonl", "tools/injected.jsonl",
        "tools/noisy.jsonl"]
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert "metrics.jsonl: line 1 is not a trajectory record" in warned
    assert "broken.jsonl: line 1 is not JSON" in warned


def test_page_counts_texts_and_images(run: Path, records: list[dict[str, Any]]) -> None:
    """Summary and cards agree with the records; every turn text round-trips exactly; images map to the
    files."""
    page = build_view(run)
    assert page == run / "view.html"
    root = parse(page.read_text())
    calls = [c for r in records for t in r["turns"] for c in t["tool_calls"]]
    mean = np.mean([r["reward"] for r in records])
    # one call per episode (the injected one: zoom, then its answer)
    assert len(records) == 9 and len(calls) == 9
    assert (
        by_id(root, "vgym-summary")
        .all_text()
        .startswith(f"9 episodes · mean reward {mean:.3f} · 9 tool calls")
    )
    assert by_id(root, "vgym-counter").all_text().startswith("showing 9 of 9 episodes")
    cards = root.find("article", "episode")
    assert [c.attrs["data-task"] for c in cards] == [r["task"] for r in records]
    for card, record in zip(cards, records):
        texts = [n.all_text() for n in card.find("pre", "turn-text")]
        assert texts == [t["text"] for t in record["turns"]]  # escaped on the way in, unescaped by the parser
        assert float(card.attrs["data-reward"]) == record["reward"]
        assert card.attrs["data-failure"] == str(int(accuracy(record) < 1))
        images = card.find("img")
        prompt = [i for i in images if i.attrs["data-kind"] == "prompt"]
        assert len(prompt) == 1  # each sample has one image, the first of the record
        for img in images:  # each <img> names the record's file for its episode image index
            index = int(img.attrs["data-index"])
            assert (run / img.attrs["src"]).resolve() == (run / card.attrs["data-source"]).parent.joinpath(
                record["images"][index]).resolve()
            assert (run / img.attrs["src"]).is_file()
        tool_indices = [i for t in record["turns"] for c in t["tool_calls"] for i in c["image_indices"]]
        shown = [int(i.attrs["data-index"]) for i in images if i.attrs["data-kind"] == "tool"]
        missing = [int(n.attrs["data-missing"]) for n in card.iter() if "data-missing" in n.attrs]
        assert sorted(shown + missing) == sorted(tool_indices)
        # the cut episode's crop was never shown: not saved
        assert missing == ([1] if record["truncated"] else [])


def test_tool_images_are_the_crops(run: Path, records: list[dict[str, Any]]) -> None:
    """Each visual-search tool image on the page shows the sample's pixels inside its call's crop box (checked
    against the full-resolution sample image, and against the neighbouring box, so a wrong index mapping would
    fail)."""
    root = parse(build_view(run).read_text())
    env = VisualToolEnv("visual_search")
    checked = 0
    for card, record in zip(root.find("article", "episode"), records):
        tool_imgs = [i for i in card.find("img") if i.attrs["data-kind"] == "tool"]
        if record["task"] != "visual_search" or not tool_imgs:
            continue
        env.reset(options={"split": "train", "index": record["group_id"]})  # group_id == sample index here
        full = env.sample.images[0]
        (crop,) = [cv2.cvtColor(cv2.imread(str(run / i.attrs["src"])), cv2.COLOR_BGR2RGB) for i in tool_imgs]
        (call,) = [c for t in record["turns"] for c in t["tool_calls"]]
        x1, y1, x2, y2 = call["arguments"]["box"]
        # the box next to it, inside the image
        shift = x2 - x1 if x2 + (x2 - x1) <= full.shape[1] else -(x2 - x1)

        def error(region: np.ndarray) -> float:
            shown = cv2.resize(region, crop.shape[1::-1], interpolation=cv2.INTER_AREA)
            return float(np.abs(shown.astype(np.float32) - crop).mean())

        here, beside = error(full[y1:y2, x1:x2]), error(full[y1:y2, x1 + shift : x2 + shift])
        assert here < 12 and here < beside / 2, (here, beside)  # measured: 5-7 here, ~35 for the wrong image
        checked += 1
    env.close()
    assert checked == 5  # 3 oracle + 2 wrong-answer episodes; the cut one's crop was not saved


def test_untrusted_text_is_escaped(run: Path) -> None:
    page = build_view(run).read_text()
    assert INJECTED not in page and "<b id=\"bold\">" not in page
    assert html.escape(INJECTED) in page
    root = parse(page)
    assert not [n for n in root.iter() if n.attrs.get("id") == "bold"]
    (error_card,) = [c for c in root.find("article", "episode") if c.attrs["data-tool-error"] == "1"]
    (call,) = error_card.find("div", "call")
    assert call.attrs["data-tool"] == "zoom" and call.attrs["data-ok"] == "0"
    assert "Unknown tool 'zoom'" in call.all_text() and '"</code>&amp;"' in call.all_text()
    assert json.loads(error_card.attrs["data-tools"]) == ["zoom"]


def test_out_elsewhere_and_max_episodes(run: Path, tmp_path: Path) -> None:
    page = build_view(run, tmp_path / "pages" / "few.html", max_episodes=3)
    root = parse(page.read_text())
    cards = root.find("article", "episode")
    assert len(cards) == 3 and "(first 3 of 9;" in by_id(root, "vgym-summary").all_text()
    srcs = [img.attrs["src"] for img in root.find("img")]
    assert srcs and all(s.startswith("../../") and (page.parent / s).is_file() for s in srcs)


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_view(tmp_path / "nope")
    (tmp_path / "log.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(VgymError, match="no trajectory"):
        build_view(tmp_path)
    with pytest.raises(ValueError, match="max_episodes must be >= 1, got 0"):
        build_view(tmp_path, max_episodes=0)


def test_cli_prints_the_page_path(run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "v.html"
    result = runner.invoke(app, ["view", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(out) and out.is_file()
    result = runner.invoke(app, ["view", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in " ".join(result.output.split())  # rich wraps lines


# ---------------------------------------------------------------- the page in headless Chromium


def dump_dom(*urls: str, tall: bool = False) -> list[Node]:
    """The DOM of each page after its scripts ran (one headless Chromium per URL, run in parallel)."""
    # tall: lazy images all lie in the viewport, so all of them load
    size = "1200,20000" if tall else "1200,800"
    procs = [
        subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--window-size={size}",
                "--dump-dom",
                url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for url in urls
    ]
    try:
        outs = [p.communicate(timeout=60)[0] for p in procs]
    finally:
        for p in procs:  # only after a timeout is any still running
            p.kill()
    assert all(p.returncode == 0 for p in procs), [p.returncode for p in procs]
    return [parse(out) for out in outs]


def visible(root: Node) -> list[Node]:
    return [c for c in root.find("article", "episode") if "hidden" not in c.attrs]


@needs_chromium
def test_browser_renders_all_episodes_without_running_model_text(
    run: Path, records: list[dict[str, Any]]
) -> None:
    (root,) = dump_dom(build_view(run).as_uri(), tall=True)
    assert by_id(root, "vgym-shown").all_text() == by_id(root, "vgym-total").all_text() == str(len(records))
    assert len(visible(root)) == len(records)
    (body,) = root.find("body")
    assert "data-pwned" not in body.attrs and not [n for n in root.iter() if n.attrs.get("id") == "bold"]
    assert BAD_CALL in [n.all_text() for n in root.find("pre", "turn-text")]  # shown as text, verbatim
    images = root.find("img")
    n_saved = sum(len(r["images"]) for r in records)
    # 9 question images + 7 tool images (the cut crop and the zoom call: none)
    assert len(images) == n_saved == 16
    assert all(img.attrs.get("data-loaded") == "1" for img in images)  # the browser decoded every file


@needs_chromium
def test_browser_filters_preset_from_the_url(run: Path, records: list[dict[str, Any]]) -> None:
    url = build_view(run).as_uri()

    def tools(r: dict[str, Any]) -> set[str]:
        return {c["name"] for t in r["turns"] for c in t["tool_calls"]}

    cases = {
        "?task=visual_search": [r["task"] == "visual_search" for r in records],
        "#task=counting": [r["task"] == "counting" for r in records],
        "#failures": [accuracy(r) < 1 for r in records],
        "#errors": [any(not c["ok"] for t in r["turns"] for c in t["tool_calls"]) for r in records],
        "#tool=ground": ["ground" in tools(r) for r in records],
        "#min=0.5&max=1": [0.5 <= r["reward"] <= 1 for r in records],
        "#q=ZOOM": ["zoom" in json.dumps(r) for r in records],  # case-insensitive
        "?task=visual_search#failures&min=0.05": [r["task"] == "visual_search" and accuracy(r) < 1
                                                  and r["reward"] >= 0.05 for r in records],
    }
    counts = {}
    for (suffix, expected), root in zip(cases.items(), dump_dom(*(url + suffix for suffix in cases))):
        shown = visible(root)
        counts[suffix] = len(shown)
        assert by_id(root, "vgym-shown").all_text() == str(sum(expected)), suffix
        assert [c.attrs["id"] for c in shown] == [f"ep-{i}" for i, e in enumerate(expected) if e], suffix
    # the presets really filter: each keeps some episodes and drops others
    assert all(0 < n < len(records) for n in counts.values()), counts


@needs_chromium
def test_browser_screenshot_has_content(run: Path, tmp_path: Path) -> None:
    shot = tmp_path / "x.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1200,2000",
            build_view(run).as_uri(),
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (2000, 1200)
    assert image.std() > 20  # text, card borders and images, not a blank page


def test_cards_show_the_question_the_gold_answer_the_answer_and_the_score(
        run: Path, records: list[dict[str, Any]]) -> None:
    page = build_view(run).read_text()
    assert "answer unknown" not in page
    root = parse(page)
    for card, record in zip(root.find("article", "episode"), records):
        (verdict,) = card.find("p", "verdict")
        assert record["question"] and record["gold_answer"]  # every episode here ended in the env
        assert card.find("p", "question")[0].all_text() == f"question {record['question']}"
        assert [n.all_text() for n in verdict.find("code", "gold")] == [record["gold_answer"]]
        assert verdict.find("span", "score")[0].all_text() == f"{accuracy(record):.3f}"
        results = card.find("p", "turn-result")
        if record["answer"] is None:  # the episode cut by max_turns: no answer, and why
            assert not verdict.find("code", "answer") and not results
            assert verdict.find("span", "none")[-1].all_text() == "no answer (max_turns)"
        else:
            assert [n.all_text() for n in verdict.find("code", "answer")] == [record["answer"]]
            (result,) = results  # on the answering turn, the last
            assert result.all_text() == f"answered {record['answer']} · score {accuracy(record):.3f}"
    wrong = [r for r in records if r["answer"] is not None and accuracy(r) < 1]
    assert wrong and all(r["answer"] != r["gold_answer"] for r in wrong)


def test_a_record_without_a_gold_answer_says_it_was_not_recorded(tmp_path: Path) -> None:
    """Records written before trajectories kept the gold answer: "not recorded", never "unknown"."""
    record = {"sample_id": "s", "task": "t", "reward": 0.0, "turns": [], "answer": None,
              "reward_parts": {"accuracy": 0.0}, "truncated_reason": "sample_error: x.png missing"}
    (tmp_path / "old.jsonl").write_text(json.dumps(record) + "\n")
    (verdict,) = parse(build_view(tmp_path).read_text()).find("p", "verdict")
    assert verdict.all_text() == "gold not recorded · no answer (sample_error: x.png missing) · score 0.000"
