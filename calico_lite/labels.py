"""Label changes as `kubectl label` writes them: `k=v` sets, `k-` removes.

The CLI parses them (`lab ns|pod label`, `node set --label`); the lab and the CLI apply them
to stored labels.
"""
from __future__ import annotations


class LabelError(ValueError):
    pass


def parse_label_args(items: list[str], allow_remove: bool = False) -> dict[str, str | None]:
    """["a=1", "b-"] -> {"a": "1", "b": None} (None: remove; only with allow_remove)."""
    out: dict[str, str | None] = {}
    for item in items:
        if allow_remove and item.endswith("-") and "=" not in item:
            out[item[:-1]] = None
        elif "=" in item and item.split("=", 1)[0]:
            k, v = item.split("=", 1)
            out[k] = v
        else:
            raise LabelError(f"label {item!r}: expected key=value" + (" or key-" if allow_remove else ""))
    return out


def apply_label_changes(labels: dict[str, str], changes: dict[str, str | None]) -> dict[str, str]:
    """k=v sets, k- (None) removes (pure)."""
    out = dict(labels)
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out
