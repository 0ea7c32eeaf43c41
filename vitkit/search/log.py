"""Append-only JSONL search log: a header (fingerprints of model and data) then one line per finished evaluation.

A killed search resumes from it: evaluations already logged (same candidate, same fidelity, same objective) are
read back instead of measured again. A torn last line (killed mid-write) is ignored. A log written for another
model or another data set is refused. Other settings (budget, objective, space, max drop) may change between
runs: evaluations are keyed by candidate id (hash of its steps and runtime), fidelity and objective, so every
compatible one is reused and nothing else is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

_log = logging.getLogger(__name__)

LOG_NAME = "search.jsonl"
LOG_VERSION = 1


def data_fingerprint(dataset, *, max_images: int = 512) -> str:
    """sha256 (16 hex) of the data set's name, length and first ``max_images`` (preprocessed) images + labels."""
    from ..data import iterate_batches

    h = hashlib.sha256(f"{getattr(dataset, 'name', '')}|{len(dataset)}".encode())
    for x, y in iterate_batches(dataset, 128, limit=max_images):
        h.update(x.numpy().tobytes())
        h.update(torch.as_tensor(y).numpy().tobytes())
    return h.hexdigest()[:16]


class SearchLog:
    """``open(path, header)`` creates the log or checks an existing one; ``get``/``put`` evaluations by key."""

    def __init__(self, path: Path, header: dict[str, Any], entries: dict[str, dict]) -> None:
        self.path, self.header, self.entries = path, header, entries

    @staticmethod
    def key(cid: str, fidelity_key: str, objective: str) -> str:
        return f"{cid}|{fidelity_key}|{objective}"

    @classmethod
    def open(cls, path: str | Path, header: dict[str, Any]) -> SearchLog:
        path = Path(path)
        header = {"type": "header", "version": LOG_VERSION, **header}
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            log = cls(path, header, {})
            log._append(header)
            return log
        lines = path.read_text().splitlines()
        records = []
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines) - 1:  # torn write of the last line: that evaluation is redone
                    _log.warning("ignoring a torn last line in %s", path)
                    break
                msg = f"search log {path} is corrupt at line {i + 1}: delete it or use another -o"
                raise ConfigError(msg) from None
        if not records or records[0].get("type") != "header":
            raise ConfigError(f"{path} is not a vitkit search log (no header line): use another -o")
        old = records[0]
        for what in ("model", "data"):
            if old.get(f"{what}_fingerprint") != header.get(f"{what}_fingerprint"):
                raise ConfigError(
                    f"search log {path} was written for another {what} ({old.get(what)!r}, fingerprint "
                    f"{old.get(f'{what}_fingerprint')}), not {header.get(what)!r} "
                    f"({header.get(f'{what}_fingerprint')}): refusing to resume; use another -o"
                )
        entries = {r["key"]: r for r in records[1:] if r.get("type") == "eval"}
        if lines and len(records) < len(lines):  # rewrite without the torn line so appends stay line-aligned
            from .._io import atomic_write_text

            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
        _log.info("resuming from %s: %d evaluations logged", path, len(entries))
        return cls(path, old, entries)

    def get(self, key: str) -> dict | None:
        rec = self.entries.get(key)
        return None if rec is None else rec["metrics"]

    def put(self, key: str, cid: str, label: str, rung: int, metrics: dict[str, Any]) -> None:
        rec = {"type": "eval", "key": key, "cid": cid, "label": label, "rung": rung, "metrics": metrics}
        self._append(rec)
        self.entries[key] = rec

    def _append(self, record: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
