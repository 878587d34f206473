"""The config of ``uadp run`` (and the subset ``uadp synthesize`` takes) from its command line:
a preset or the defaults, then the dedicated flags, then ``--set``; on top of a recorded run's
config for ``--resume`` (it continues as recorded) and ``--from-run`` (the same model)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import UadpError


def _flag_overrides(args: argparse.Namespace, registry) -> dict[str, Any]:
    """The dedicated flags of ``uadp run`` (or the subset another command has) as a nested override.

    ``--data PATH`` selects the dataset plugin whose layout the folder is in (or ``--dataset``'s)."""
    out: dict[str, Any] = {}

    def flag(name: str) -> Any:
        return getattr(args, name, None)

    def put(section: str, key: str, value: Any) -> None:
        if value is not None:
            out.setdefault(section, {})[key] = value

    if flag("data") is not None:
        out["dataset"] = {"name": flag("dataset") or registry.folder_dataset(args.data), "root": args.data}
    elif flag("dataset") is not None:
        raise UadpError(f"--dataset {args.dataset}: names the layout of a folder; give the folder with --data DIR")
    if flag("classes") is not None:
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
        if not classes:
            raise UadpError(
                "--classes: no class name given; name classes separated by commas, or leave the flag out for every class"
            )
        put("data", "classes", classes)
    put("data", "image_size", flag("image_size"))
    put("data", "workers", flag("workers"))
    from ..config import NO_COMPONENT, OPTIONAL_SECTIONS  # the config models (pydantic): only for a run's flags

    for section in ("backbone", "reconstructor", "synthesizer", "aligner"):
        name = flag(section)
        if name is not None:  # "none": no component, for a section a run may leave out
            out[section] = None if name == NO_COMPONENT and section in OPTIONAL_SECTIONS else {"name": name}
    put("train", "epochs", flag("epochs"))
    put("train", "batch_size", flag("batch_size"))
    put("train", "lr", flag("lr"))
    put("train", "device", flag("device"))
    put("train", "precision", flag("precision"))
    put("train", "seed", flag("seed"))
    put("eval", "normal_dir", flag("normal_dir"))
    return out


def _reconstructor_preset(args: argparse.Namespace, registry) -> str | None:
    """``--reconstructor NAME`` without ``--config`` starts from NAME's own preset, if it names one.

    The defaults (the CPU preset) are tuned for UniAD; another method's recipe differs (its
    backbone stages, widths, learning rate), so its plugin may name the preset to use instead.
    """
    if args.reconstructor is None or args.from_run or args.resume:
        return None
    preset = registry.get("reconstructors", args.reconstructor).traits.get("preset")
    if preset:
        print(
            f"reconstructor {args.reconstructor}: starting from its preset {preset} (--config overrides)",
            file=sys.stderr,
        )
    return preset


def _config_for_run(args: argparse.Namespace, registry):
    """The run's config: defaults or a preset, then flags; on top of the recorded run's config
    for ``--resume`` (it continues as recorded) and ``--from-run`` (the same model)."""
    from ..config import build_config  # pydantic models and YAML: loaded when a command builds a config

    preset = args.config or _reconstructor_preset(args, registry)
    config = build_config(preset, _flag_overrides(args, registry), args.set)
    if args.from_run:
        from ..engine.base_run import config_for_base_run  # the engine (torch): only for --from-run

        base = config_for_base_run(args.from_run, config.tracking.root, args.trust_model_file)
        # where this run is recorded, not where the base was; the preset is the base run's
        base["tracking"] = {**config.tracking.model_dump(), "preset": base.get("tracking", {}).get("preset")}
        config = build_config(args.config, _flag_overrides(args, registry), args.set, base=base)
    elif args.resume:
        from ..engine.resume import config_for_resume  # the engine (torch): only for --resume

        base = config_for_resume(args.resume, config.tracking.root, args.trust_model_file)
        base["tracking"]["root"] = config.tracking.root  # where the run's store is now
        config = build_config(args.config, _flag_overrides(args, registry), args.set, base=base)
    return config
