"""File I/O shared by every stage: atomic writes, strict JSONL reading, stable hashing."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping


class InputError(ValueError):
    """Bad input data: the message names the file, the line and the field."""


def _file_mode() -> int:
    """0666 less the process umask: the mode `open()` would give a new file (mkstemp's 0600 would
    make outputs unreadable to the rest of a team sharing a results folder or a DVC cache)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _file_mode())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def set_tree_mode(root: str | os.PathLike) -> None:
    """Give every file under `root` (a folder or one file) the mode `open()` would give a new file
    (0644 under the usual umask) and every folder the matching 0755: writers such as safetensors
    create their files 0600, which leaves a model folder unreadable to the rest of a team."""
    root = Path(root)
    fmode = _file_mode()
    dmode = fmode | ((fmode & 0o444) >> 2)          # a folder is searchable where it is readable
    if root.is_file():
        os.chmod(root, fmode)
        return
    os.chmod(root, dmode)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), dmode)
        for f in filenames:
            path = os.path.join(dirpath, f)
            if not os.path.islink(path):
                os.chmod(path, fmode)


def dumps(obj: Any) -> str:
    """Canonical JSON (sorted keys, no NaN) so that equal data gives equal bytes."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=False)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n",
                       encoding="utf-8")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(dumps(rec) + "\n")
            n += 1
    return n


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


_TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool, "list": list, "dict": dict}


@dataclass
class JsonlReport:
    """What a strict JSONL read kept and what it set aside."""

    records: list[dict]
    quarantined: list[dict] = field(default_factory=list)  # {"line": n, "field": f, "error": msg}
    lines: list[int] = field(default_factory=list)         # the file line of each kept record
    where: list[str] = field(default_factory=list)         # each kept record as `file:line` (or `file:row N`)

    @property
    def n_quarantined(self) -> int:
        return len(self.quarantined)


def read_jsonl(path: str | os.PathLike, schema: Mapping[str, str] | None = None, *,
               id_field: str | None = None, on_bad: str = "error") -> JsonlReport:
    """Read JSONL strictly.

    `schema` maps required field -> type name ("str", "int", ...; a trailing "?" allows null).
    A bad line (not UTF-8, not JSON, not an object, missing/mistyped field, duplicate id) raises
    InputError naming file, line and field when on_bad == "error", else it is quarantined and
    counted in the report.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: a folder, not a JSONL file")

    def rows():
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield lineno, f"{path}:{lineno}", None, ("<line>", f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
                    continue
                if not text.strip():
                    continue
                try:
                    rec = json.loads(text)
                except json.JSONDecodeError as exc:
                    yield lineno, f"{path}:{lineno}", None, ("<line>", f"invalid JSON: {exc.msg} (column {exc.colno})")
                    continue
                except RecursionError:
                    yield lineno, f"{path}:{lineno}", None, ("<line>", "JSON nested too deeply")
                    continue
                if not isinstance(rec, dict):
                    yield lineno, f"{path}:{lineno}", None, ("<line>", f"expected a JSON object, got {type(rec).__name__}")
                    continue
                yield lineno, f"{path}:{lineno}", rec, None

    return _checked(rows(), schema, id_field, on_bad)


def read_table(path: str | os.PathLike, schema: Mapping[str, str] | None = None, *,
               id_field: str | None = None, on_bad: str = "error") -> JsonlReport:
    """Rows of a JSONL file, a parquet file, a folder of parquet files (read in name order) or a
    `datasets` save_to_disk folder, checked as read_jsonl checks lines; a bad row is named
    `file:row N` (rows counted from 1 in each file)."""
    path = Path(path)
    if path.is_file() and path.suffix != ".parquet":
        return read_jsonl(path, schema, id_field=id_field, on_bad=on_bad)
    return _checked(_table_rows(path), schema, id_field, on_bad)


def _table_rows(path: Path):
    if not path.exists():
        raise InputError(f"{path}: not found")
    if path.is_dir() and (path / "dataset_dict.json").exists():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise InputError(f"{path}: a datasets DatasetDict; pass one split's folder ({', '.join(splits)})")
    if path.is_dir() and (path / "state.json").exists():           # datasets' save_to_disk layout
        import datasets

        for i, rec in enumerate(datasets.load_from_disk(str(path)), start=1):
            yield i, f"{path}:row {i}", dict(rec), None
        return
    files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
    if not files:
        raise InputError(f"{path}: not a JSONL or parquet file, a folder of parquet files or a datasets "
                         "save_to_disk folder")
    import pyarrow.parquet as pq

    for f in files:
        for i, rec in enumerate(pq.read_table(f).to_pylist(), start=1):
            yield i, f"{f}:row {i}", rec, None


def _checked(rows, schema: Mapping[str, str] | None, id_field: str | None, on_bad: str) -> JsonlReport:
    """Keep each (line, where, record, problem) row whose record passes the schema and has a new id."""
    if on_bad not in ("error", "quarantine"):
        raise ValueError(f"on_bad must be 'error' or 'quarantine', got {on_bad!r}")
    report = JsonlReport(records=[])
    seen: set = set()
    for lineno, where, rec, problem in rows:
        if problem is None and schema:
            problem = _check_fields(rec, schema)
        if problem is None and id_field is not None:
            key = rec.get(id_field)
            if key in seen:
                problem = (id_field, f"duplicate id {key!r}")
            seen.add(key)
        if problem is None:
            report.records.append(rec)
            report.lines.append(lineno)
            report.where.append(where)
            continue
        fld, msg = problem
        if on_bad == "error":
            raise InputError(f"{where}: field '{fld}': {msg}")
        report.quarantined.append({"line": lineno, "field": fld, "error": msg})
    return report


def _check_fields(rec: dict, schema: Mapping[str, str]) -> tuple[str, str] | None:
    for name, tname in schema.items():
        nullable = tname.endswith("?")
        tname = tname.rstrip("?")
        if name not in rec:
            return name, "missing"
        value = rec[name]
        if value is None:
            if nullable:
                continue
            return name, "is null"
        want = _TYPES[tname]
        # bool is an int in Python; an int field must not accept true/false.
        if tname in ("int", "float") and isinstance(value, bool):
            return name, f"expected {tname}, got bool"
        if not isinstance(value, want):
            return name, f"expected {tname}, got {type(value).__name__}"
    return None


def stable_hash(*parts: Any, length: int = 16) -> str:
    """Hex digest of the canonical JSON of `parts`: the one way ids, seeds and keys are hashed."""
    digest = hashlib.sha256(dumps(list(parts)).encode("utf-8")).hexdigest()
    return digest[:length]


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed derived from ids, so per-item draws never depend on processing order."""
    return int(stable_hash(*parts, length=16), 16) & ((1 << 63) - 1)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_sha256(root: str | os.PathLike) -> str:
    """Hash of a folder's files (relative names and contents), for model folders."""
    root = Path(root)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(root)).encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class StageIO:
    """A `librarm stage` job's files, by the names its rule gives them (`--in NAME PATH...`,
    `--out NAME PATH...`), its wildcards and its thread count. Stage code asks for a file by name
    and never works out a path of its own."""

    inputs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    outputs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    wildcards: Mapping[str, str] = field(default_factory=dict)
    threads: int | None = None

    @staticmethod
    def _one(files: Mapping[str, tuple[str, ...]], kind: str, name: str) -> str:
        got = StageIO._many(files, kind, name)
        if len(got) != 1:
            raise ValueError(f"{kind} {name!r}: expected one path, got {len(got)}")
        return got[0]

    @staticmethod
    def _many(files: Mapping[str, tuple[str, ...]], kind: str, name: str) -> list[str]:
        if name not in files:
            raise ValueError(f"no {kind} named {name!r} (the rule passes: {sorted(files)})")
        return list(files[name])

    def input(self, name: str) -> str:
        return self._one(self.inputs, "input", name)

    def input_list(self, name: str) -> list[str]:
        return self._many(self.inputs, "input", name)

    def output(self, name: str) -> str:
        return self._one(self.outputs, "output", name)

    def output_list(self, name: str) -> list[str]:
        return self._many(self.outputs, "output", name)

    def keyed(self, name: str, pattern: str, field: str, keys: Iterable[str], *, output: bool = False,
              **fixed: str) -> dict[str, str]:
        """The files of a list the rule expands over `keys`, as {key: path}: each key's path is
        `pattern` (a librarm.run.paths pattern) with `field` set to the key (and `fixed` fields), and
        must be among the rule's files, with none left over. Matched by name, never by position
        (the job's params may list keys in another order than the rule)."""
        files = self.output_list(name) if output else self.input_list(name)
        want = {k: pattern.format(**{field: k}, **fixed) for k in keys}
        missing = [p for p in want.values() if p not in files]
        extra = sorted(set(files) - set(want.values()))
        if missing or extra:
            raise ValueError(f"{'output' if output else 'input'} {name!r}: expected {list(want.values())}, "
                             f"got {files} (missing {missing}, unexpected {extra})")
        return want

    def wildcard(self, name: str) -> str:
        if name not in self.wildcards:
            raise ValueError(f"no wildcard {name!r} (the rule has: {sorted(self.wildcards)})")
        return self.wildcards[name]
