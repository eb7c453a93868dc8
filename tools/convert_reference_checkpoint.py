"""Convert a checkpoint of the reference implementation (SonyResearch/micro_diffusion) to microdit.

    python tools/convert_reference_checkpoint.py --preset MicroDiT_XL_2 INPUT.pt OUTPUT.pt \
        [--override caption_dim=1024 ...]
    python tools/convert_reference_checkpoint.py --preset MicroDiT_XL_2 INPUT.pt exports/xl   # an export

INPUT is a plain ``torch.save`` state dict (or .safetensors). An OUTPUT file (.pt or .safetensors)
loads with ``build_model(preset, **overrides).load_state_dict(sd, strict=True)``. An OUTPUT folder
(no suffix) receives the export a run writes at each stage end: ``model.safetensors`` (float32) +
``config.json``, loaded with ``MicroDiT.from_pretrained(folder)`` and accepted by
``microdit-sample`` and ``microdit-eval``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

from microdit.models import PRESETS, MicroDiT, preset_config
from microdit.models.reference_import import ReferenceImportError, convert_reference_state_dict
from microdit.run import reason


def _load(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise SystemExit(f"error: input checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (torch, pickle and safetensors each raise their own types)
        raise SystemExit(f"error: {path} cannot be read as a state dict ({reason(err)})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise SystemExit(f"error: {path} is not a state dict (a mapping of names to tensors)")
    return sd


def _save(sd: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp))
    else:
        torch.save(sd, tmp)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", required=True, choices=PRESETS, help="network preset of the checkpoint")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="model config override (YAML value), e.g. caption_dim=1024")
    parser.add_argument("input", type=Path, help="reference state dict (.pt or .safetensors)")
    parser.add_argument("output", type=Path, help="a .pt / .safetensors file, or an export folder (no suffix)")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.override:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --override expects KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    cfg = preset_config(args.preset, **overrides)
    as_file = args.output.suffix in (".pt", ".safetensors")
    if as_file and args.output.exists():  # nothing written before is replaced
        raise SystemExit(f"error: {args.output} exists; choose another path")
    if not as_file and (args.output / "model.safetensors").exists():
        raise SystemExit(f"error: {args.output} already holds an export; choose another folder")
    try:
        sd = convert_reference_state_dict(_load(args.input), cfg)
    except ReferenceImportError as err:
        raise SystemExit(f"error: {args.input}: {err}") from None
    if as_file:
        _save(sd, args.output)
    else:
        model = MicroDiT(cfg)
        model.load_state_dict(sd, strict=True)
        model.save_pretrained(args.output)
    print(f"wrote {len(sd)} tensors ({sum(v.numel() for v in sd.values()):,} parameters) to {args.output}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
