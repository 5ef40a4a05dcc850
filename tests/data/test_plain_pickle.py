"""Tests of vgym/data/plain_pickle.py: plain data of every protocol and of Python 2 reads back; anything that
names a global (a ``__reduce__`` payload calling ``os.system``, ``eval``, a class instance through
``copyreg._reconstructor``) or a persistent id is refused, naming the file and the global, and nothing
runs."""

from __future__ import annotations

import os
import pickle
import pickletools
import subprocess
from pathlib import Path
from typing import Any

import pytest

from vgym.data.plain_pickle import read_plain_pickle
from vgym.data.sample_data import py2_pickle
from vgym.errors import InvalidConfigError

PLAIN = [{"ref_id": 0, "split": "testA",
          "sentences": [{"sent": "man on left", "tokens": ["man", "left"], "sent_id": 0, "raw": "Man."}],
          "bbox": (10.5, 20, 30, 40), "big": 2 ** 70, "neg": -7, "none": None, "flag": True,
          "tags": {1, 2}, "frozen": frozenset({"a"}), "data": b"\x00\xff", "text": "café"}]


class _Run:
    """Pickles as a call of ``function(*args)``: what a malicious refs file carries."""

    def __init__(self, function: Any, *args: Any) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple:
        return self.function, self.args


class _Plain:
    """An ordinary class instance (pickled by protocols 0 and 1 through ``copyreg._reconstructor``)."""

    def __init__(self) -> None:
        self.x = 1


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_of_every_protocol_reads_back(tmp_path: Path, protocol: int) -> None:
    value: Any = [dict(PLAIN[0])]
    if protocol < 4:  # sets are built by calling builtins.set below protocol 4: a global, refused (below)
        del value[0]["tags"], value[0]["frozen"]
    if protocol < 3:  # bytes by calling _codecs.encode below protocol 3: refused too
        del value[0]["data"]
    path = tmp_path / "plain.p"
    path.write_bytes(pickle.dumps(value, protocol=protocol))
    assert read_plain_pickle(path) == value
    if protocol < 4:
        path.write_bytes(pickle.dumps([{1, 2}], protocol=protocol))
        with pytest.raises(InvalidConfigError, match=r"asks for the global (__builtin__|builtins)\.set"):
            read_plain_pickle(path)


def test_python2_byte_strings_become_text(tmp_path: Path) -> None:
    refs = [{"ref_id": 3, "sentences": [{"sent": "the café chair", "sent_id": 9}], "split": "val"}]
    data = py2_pickle(refs)
    ops = {op.name for op, _, _ in pickletools.genops(data)}
    assert {"SHORT_BINSTRING", "BINUNICODE", "BINPUT"} <= ops and "GLOBAL" not in ops  # Python 2's opcodes
    (tmp_path / "refs.p").write_bytes(data)
    assert read_plain_pickle(tmp_path / "refs.p") == refs
    # Python 2 `str` holding UTF-8 bytes decodes as UTF-8 ...
    # PROTO 2, EMPTY_LIST, MARK, SHORT_BINSTRING 'café' (5 UTF-8 bytes), SHORT_BINSTRING 'ok', APPENDS, STOP
    (tmp_path / "utf8.p").write_bytes(b"\x80\x02](U\x05caf\xc3\xa9U\x02oke.")
    assert read_plain_pickle(tmp_path / "utf8.p") == ["café", "ok"]
    # ... and bytes that are not UTF-8 (0xe9 alone is Latin-1 'é') as Latin-1, the whole file
    (tmp_path / "latin1.p").write_bytes(b"\x80\x02](U\x04caf\xe9U\x02oke.")
    assert read_plain_pickle(tmp_path / "latin1.p") == ["café", "ok"]


PAYLOADS = {  # name: (the payload writing the file `marker` when unpickled, the global it names)
    "os.system": (lambda marker: _Run(os.system, f"touch {marker}"), rf"{os.system.__module__}\.system"),
    "eval": (lambda marker: _Run(eval, f"open({str(marker)!r}, 'w')"), r"(__builtin__|builtins)\.eval"),
    # Python 2 module names below protocol 3 (pickle's fix_imports)
    "Popen": (lambda marker: _Run(subprocess.Popen, ["touch", str(marker)]), r"(subprocess|commands)\.Popen"),
}


@pytest.mark.parametrize("name", sorted(PAYLOADS))
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_reduce_payloads_are_refused_without_running(tmp_path: Path, name: str, protocol: int) -> None:
    marker = tmp_path / "ran"
    make, refused = PAYLOADS[name]
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 0, "sentences": [make(marker)]}], protocol=protocol))
    expected = rf"refs\(unc\).p: refused to load this pickle: it asks for the global {refused}, .* nothing in"
    with pytest.raises(InvalidConfigError, match=expected):
        read_plain_pickle(path)
    assert not marker.exists()
    if name == "os.system":  # the control: pickle.load does run this very file (so the payload is real)
        with open(path, "rb") as handle:
            pickle.load(handle)  # deliberately, on our own test file
        assert marker.exists()


@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_class_instances_are_refused(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "obj.p"
    path.write_bytes(pickle.dumps([_Plain()], protocol=protocol))
    # protocols 0 and 1 name copyreg's reconstructor (copy_reg: the Python 2 name), 2 the class itself
    refused = r"copy_?reg\._reconstructor" if protocol < 2 else r"test_plain_pickle\._Plain"
    with pytest.raises(InvalidConfigError, match=rf"asks for the global ({refused})"):
        read_plain_pickle(path)


def test_persistent_ids_bad_bytes_and_size_are_refused(tmp_path: Path) -> None:
    # PROTO 2, BINPERSID of the string 'x': asks the loader to resolve an external object
    (tmp_path / "pid.p").write_bytes(b"\x80\x02U\x01xQ.")
    with pytest.raises(InvalidConfigError, match=r"pid.p: refused .* the persistent id 'x'"):
        read_plain_pickle(tmp_path / "pid.p")
    (tmp_path / "short.p").write_bytes(pickle.dumps([1, 2, 3])[:-3])
    with pytest.raises(InvalidConfigError, match=r"short.p: not a valid pickle \(UnpicklingError"):
        read_plain_pickle(tmp_path / "short.p")
    (tmp_path / "big.p").write_bytes(pickle.dumps(list(range(100))))
    with pytest.raises(InvalidConfigError, match=r"big.p: pickle file is \d+ bytes, over the limit of 50"):
        read_plain_pickle(tmp_path / "big.p", max_bytes=50)
    with pytest.raises(InvalidConfigError, match=r"cannot read the annotation file .*none.p"):
        read_plain_pickle(tmp_path / "none.p")
