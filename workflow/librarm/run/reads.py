"""Which params keys a job actually reads: a recording view of the config. With
LIBRARM_RECORD_READS=DIR set, each `librarm stage` job writes DIR/<step>-<pid>.json with the
dotted keys its step read; a test checks them against the phase registry, so a key a stage reads
but DVC does not list (a stale result after an edit) is caught."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

ENV = "LIBRARM_RECORD_READS"


class RecordingDict(dict):
    """A dict that notes the dotted path of every leaf it hands out (and of a whole section when
    its items or values are taken). Copies made with {**d} keep recording below the top level."""

    def __init__(self, data: Mapping[str, Any], path: str, log: set[str]):
        super().__init__()
        self._path, self._log = path, log
        for k, v in data.items():
            dict.__setitem__(self, k, wrap(v, self._child(k), log))

    def _child(self, key: Any) -> str:
        return f"{self._path}.{key}" if self._path else str(key)

    def __getitem__(self, key):
        value = dict.__getitem__(self, key)
        if not isinstance(value, RecordingDict):
            self._log.add(self._child(key))
        return value

    def get(self, key, default=None):
        if dict.__contains__(self, key):
            return self[key]
        self._log.add(self._child(key))          # the default was used: the key was still read
        return default

    def items(self):
        self._log.add(self._path)
        return dict.items(self)

    def values(self):
        self._log.add(self._path)
        return dict.values(self)

    def __reduce__(self):                         # deepcopy / pickle: a plain dict
        return (dict, (dict(dict.items(self)),))


def wrap(value: Any, path: str, log: set[str]) -> Any:
    return RecordingDict(value, path, log) if isinstance(value, Mapping) else value


def recording(params: Mapping[str, Any]) -> tuple[dict, set[str]]:
    """(a recording view of params, the set its reads go to) when LIBRARM_RECORD_READS is set;
    (params, empty set) otherwise."""
    log: set[str] = set()
    if not os.environ.get(ENV):
        return dict(params), log
    return RecordingDict(params, "", log), log


def save(step: str, log: Iterable[str]) -> None:
    folder = os.environ.get(ENV)
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"{step}-{os.getpid()}.json").write_text(json.dumps(sorted(k for k in log if k)))


def covered(key: str, declared: Iterable[str]) -> bool:
    """A read key is covered when a declared key is it or one of its parents."""
    return any(key == d or key.startswith(d + ".") for d in declared)
