"""How a check compares what a run computed with what a reloaded bundle or a re-scoring gives,
and how it names a value in its messages."""

from __future__ import annotations

from typing import Any

import numpy as np


def assert_close(
    label: str, where: str, what: str, expected: np.ndarray, found: np.ndarray, tolerance: float, hint: str = ""
) -> None:
    """Fail unless ``found`` is within ``tolerance`` of ``expected``'s range from it everywhere;
    relative to the range, so that a component's maps in any units are held to the same rounding."""
    if found.shape != expected.shape:
        raise AssertionError(
            f"{label}: {where} gave {what} of shape {list(found.shape)}, the run {list(expected.shape)}{hint}"
        )
    span = float(expected.max() - expected.min()) if expected.size else 0.0
    error = float(np.abs(found.astype(np.float64) - expected).max()) if expected.size else 0.0
    if not error <= tolerance * span or (span == 0 and error > 0):
        raise AssertionError(
            f"{label}: {where} gave other {what} than the run: they differ by up to {error:.3g} "
            f"({error / span if span else float('inf'):.3g} of their range; allowed {tolerance:g}){hint}"
        )


def unsaved_differences(ran, reloaded) -> list[str]:
    """What differs between the run's detector and the reloaded one: state_dict entries, and
    tensors or plain values a module holds outside its state_dict (which a bundle does not keep)."""
    # loaded by the check that needs it: `import uadp.testing` stays free of torch and MLflow
    import torch

    found = []
    for part in ("backbone", "reconstructor", "aligner"):
        a, b = getattr(ran, part), getattr(reloaded, part)
        if a is None or b is None:
            if (a is None) != (b is None):
                found.append(f"{part} {'missing' if b is None else 'added'} after reloading")
            continue
        state_a, state_b = a.state_dict(), b.state_dict()
        for key in sorted(state_a.keys() | state_b.keys()):
            if not same(state_a.get(key), state_b.get(key)):
                found.append(f"{part} state_dict entry {key}")
        modules_b = dict(b.named_modules())
        for name, module in a.named_modules():
            other = modules_b.get(name)
            if other is None:
                continue
            prefix = f"{part}.{name}." if name else f"{part}."
            for buffer in getattr(module, "_non_persistent_buffers_set", ()):
                if not same(module._buffers.get(buffer), other._buffers.get(buffer)):
                    found.append(f"{prefix}{buffer} (a non-persistent buffer: not saved)")
            for attribute, x in vars(module).items():
                if attribute.startswith("_") or attribute == "training":
                    continue
                y = vars(other).get(attribute)
                if isinstance(x, torch.Tensor):
                    if not same(x, y):
                        found.append(f"{prefix}{attribute} (a tensor attribute, not a buffer: not saved)")
                elif isinstance(x, (bool, int, float, str, list, tuple, dict)) and not same(x, y):
                    found.append(f"{prefix}{attribute} (a plain attribute: not saved; get_extra_state saves one)")
    return found


def same(x: Any, y: Any) -> bool:
    """Equal values; tensors equal in shape, dtype and every element."""
    # loaded by the check that needs it: `import uadp.testing` stays free of torch and MLflow
    import torch

    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        return (
            isinstance(x, torch.Tensor)
            and isinstance(y, torch.Tensor)
            and x.shape == y.shape
            and x.dtype == y.dtype
            and torch.equal(x.cpu(), y.cpu())
        )
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(same(x[key], y[key]) for key in x)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(same(a, b) for a, b in zip(x, y))
    try:
        return bool(np.all(x == y)) if isinstance(x, np.ndarray) or isinstance(y, np.ndarray) else bool(x == y)
    except Exception:  # e.g. arrays of other shapes
        return False


def describe(value: Any) -> str:
    """A value as a message names it: dtype and shape of an array or tensor, else its type."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"of {str(value.dtype).replace('torch.', '')} {list(value.shape)}"
    return f"of type {type(value).__name__}"
