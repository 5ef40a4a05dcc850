"""How fast ``vgym/Refcoco-v0`` reads a RefCOCO release: the sample data, then a synthetic release of
RefCOCO's size (50,000 refs, 142,000 sentences, 196,771 annotations with polygons on 19,994 images).

Run: ``python benchmarks/refcoco_loader.py [--refs 50000] [--repeat 3]``. Prints, per release, the file sizes
and the best-of-``repeat`` seconds of each stage: the refs pickle through the restricted reader
(:func:`vgym.data.plain_pickle.read_plain_pickle`) next to plain ``pickle.load`` of the same (our own) file,
``instances.json``, the join (:func:`vgym.data.refer.read_refer`) and building the task (every record
validated by ``parse_record``), with records per second. Nothing is asserted: the figures go in the notes.
"""

from __future__ import annotations

import argparse
import json
import pickle
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vgym.data.files import read_json
from vgym.data.plain_pickle import read_plain_pickle
from vgym.data.refer import read_refer
from vgym.data.sample_data import py2_pickle, write_refcoco
from vgym.tasks.local_data import RefcocoTask

WORDS = ("man", "woman", "left", "right", "red", "shirt", "dog", "car", "white", "on", "the", "in", "blue",
         "chair", "table", "front", "back", "middle", "person", "guy", "girl", "big", "small", "far")


def write_synthetic_release(root: Path, refs: int, seed: int = 0) -> None:
    """``<root>/refcoco/refs(unc).p`` (Python 2 style) and ``instances.json`` of ``refs`` refs with 2.84
    sentences each on average (RefCOCO's 142,210 / 50,000), about 4 annotations per ref (RefCOCO lists every
    COCO annotation of its 19,994 images: 196,771) with 16-point polygons; an empty ``train2014``."""
    rng = np.random.default_rng(seed)
    images = max(1, round(refs * 19_994 / 50_000))
    anns = max(refs, round(refs * 196_771 / 50_000))
    splits = ("train", "val", "testA", "testB")
    annotations = []
    for ann_id in range(anns):
        x, y, w, h = (float(v) for v in rng.integers(1, 300, 4))
        polygon = [round(float(v), 2) for v in rng.uniform(0, 400, 32)]
        annotations.append({"id": ann_id, "image_id": ann_id % images, "category_id": int(ann_id % 80) + 1,
                            "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0, "segmentation": [polygon]})
    instances = {
        "images": [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "height": 480, "width": 640}
                   for i in range(images)],
        "annotations": annotations,
        "categories": [{"id": c, "name": f"category{c}", "supercategory": "thing"} for c in range(1, 81)],
    }
    out, sent_id = [], 0
    for ref_id in range(refs):
        sentences = []
        for _ in range(2 + int(rng.random() < 0.84)):
            tokens = [WORDS[i] for i in rng.integers(0, len(WORDS), int(rng.integers(2, 8)))]
            text = " ".join(tokens)
            sentences.append({"tokens": tokens, "raw": text.capitalize(), "sent_id": sent_id, "sent": text})
            sent_id += 1
        out.append({"sent_ids": [s["sent_id"] for s in sentences], "file_name": f"x_{ref_id}.jpg",
                    "ann_id": ref_id, "ref_id": ref_id, "image_id": ref_id % images,
                    "split": splits[ref_id % 4],
                    "sentences": sentences, "category_id": int(ref_id % 80) + 1})
    (root / "refcoco").mkdir(parents=True, exist_ok=True)
    (root / "train2014").mkdir(exist_ok=True)
    (root / "refcoco" / "refs(unc).p").write_bytes(py2_pickle(out))
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))


CPU: list[float] = []
"""CPU seconds (``time.process_time``) of each :func:`best` call's fastest run, in call order."""


def best(repeat: int, run: Callable[[], Any]) -> tuple[float, Any]:
    """The least wall-clock seconds of ``repeat`` calls, and the last result (its CPU seconds go to
    :data:`CPU`: on a shared machine they say what an idle one would take)."""
    times, result = [], None
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        result = run()
        times.append((time.perf_counter() - start, time.process_time() - cpu))
    wall, cpu = min(times)
    CPU.append(cpu)
    return wall, result


def measure(root: Path, repeat: int) -> None:
    refs_path, instances_path = root / "refcoco" / "refs(unc).p", root / "refcoco" / "instances.json"
    mib = 1 << 20
    print(f"  refs(unc).p {refs_path.stat().st_size / mib:.1f} MiB, instances.json "
          f"{instances_path.stat().st_size / mib:.1f} MiB")
    restricted, refs = best(repeat, lambda: read_plain_pickle(refs_path))

    def plain_load() -> Any:
        with open(refs_path, "rb") as handle:
            return pickle.load(handle)  # our own synthetic file, for the comparison only

    plain, _ = best(repeat, plain_load)
    instances, _ = best(repeat, lambda: read_json(instances_path))
    join, expressions = best(repeat, lambda: read_refer(refs_path, instances_path))
    task_s, task = best(repeat, lambda: RefcocoTask({"root": str(root)}))
    records = sum(len(task.split_records(s)) for s in ("train", "val", "test"))
    print(f"  {len(refs)} refs, {len(expressions)} expressions, {records} records")
    print(f"  wall ms: refs pickle restricted {1000 * restricted:.1f} (pickle.load {1000 * plain:.1f}); "
          f"instances.json {1000 * instances:.1f}; read_refer (both + join) {1000 * join:.1f}; RefcocoTask "
          f"built (make) {1000 * task_s:.1f} = {records / task_s:,.0f} records/s")
    cpu = CPU[-5:]
    print(f"  CPU ms:  refs pickle restricted {1000 * cpu[0]:.1f} (pickle.load {1000 * cpu[1]:.1f}); "
          f"instances.json {1000 * cpu[2]:.1f}; read_refer (both + join) {1000 * cpu[3]:.1f}; RefcocoTask "
          f"built (make) {1000 * cpu[4]:.1f} = {records / cpu[4]:,.0f} records/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--refs", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        print("sample data (vgym.data.sample_data.write_refcoco):")
        measure(write_refcoco(Path(folder) / "sample"), max(args.repeat, 20))
        print(f"synthetic release of {args.refs} refs:")
        start = time.perf_counter()
        write_synthetic_release(Path(folder) / "big", args.refs)
        print(f"  (written in {time.perf_counter() - start:.1f} s)")
        measure(Path(folder) / "big", args.repeat)


if __name__ == "__main__":
    main()
