"""``microdit-sample``: prompts -> PNG images and a grid, from a run or checkpoint (EMA weights by
default), text-to-image or image-to-image (SDEdit: encode an image, noise it to sigma_start,
denoise with the prompt).

    microdit-sample runs/my-run --prompt "a red circle on the left" --prompt "two shapes" --out samples/two
    microdit-sample runs/my-run --prompts-file prompts.txt --steps 50 --cfg-scale 5 --out samples/50
    microdit-sample runs/my-run --prompt "a blue star" --init-image photo.png --sigma-start 2.0 --out samples/sdedit
    microdit-sample runs/my-run --prompt "a red circle" --prompt "a red square" --same-noise --out samples/word

Sampler options default to the run's own sampler config; an --out folder that already holds
samples is refused, never overwritten, and so is one that another microdit-sample is writing to
(it holds the lock file ``OUT/.lock`` while it samples). Beside the images, ``prompts.txt`` (index,
seed, prompt) and ``sampling.json``: how they were drawn (the checkpoint and its images seen, which
weights, the encoders, the whole sampler config, seeds, init image and sigma_start).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from microdit.cli.options import add_sampler_options, file_or_folder, positive_int, sampler_overrides
from microdit.cli.stopping import stopped_in_one_line
from microdit.data import DataError
from microdit.data.images import from_uint8, png_bytes, resize_center_crop, save_grid
from microdit.files import unwritable, write_atomic
from microdit.host_memory import keep_freed_memory
from microdit.launch import local_device
from microdit.locks import LockHeld, acquire
from microdit.run import CheckpointError, PromptSampler, encoder_names, load_model

LOCK = ".lock"  # in --out while a microdit-sample samples into it (microdit.locks)
SIGMA_START = 2.0  # image-to-image: the noise level an --init-image is taken to (SDEdit), by default


def read_prompts(args: argparse.Namespace) -> list[str]:
    """Prompts from --prompt arguments and/or a file with one prompt per line."""
    prompts = list(args.prompt or [])
    if args.prompts_file:
        stdin = str(args.prompts_file) == "-"
        if not stdin and (args.prompts_file.is_dir() or not args.prompts_file.exists()):
            what = "is a folder" if args.prompts_file.is_dir() else "does not exist"
            raise SystemExit(f"microdit-sample: error: prompts file {args.prompts_file} {what}")
        try:  # a file, a pipe (<(...)) or standard input
            text = sys.stdin.read() if stdin else args.prompts_file.read_text()
            lines = [line.strip() for line in text.splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as err:
            raise SystemExit(f"microdit-sample: error: prompts file {args.prompts_file} cannot be read as "
                             f"text: {err}") from None
        if not lines:
            raise SystemExit(f"microdit-sample: error: prompts file {args.prompts_file} has no prompts "
                             "(expected one per line)")
        prompts += lines
    if not prompts:
        raise SystemExit("microdit-sample: error: give --prompt (repeatable) or --prompts-file")
    empty = [f"{i:04d}" for i, p in enumerate(prompts) if not p.strip()]
    if empty:  # the text encoder's embedding of "", which no training caption dropout gives
        which = f"prompt {empty[0]} is" if len(empty) == 1 else f"prompts {', '.join(empty)} are"
        print(f"microdit-sample: {which} empty: sampled with the text encoder's embedding of an "
              "empty caption, which is not the unconditional input (training drops a caption to the all-zero "
              "embedding); for unconditional samples give --cfg-scale 0", file=sys.stderr)
    return prompts


SETTINGS = "sampling.json"  # how the samples in a folder were drawn


def refuse_existing_samples(out: Path) -> None:
    """Refuse an output folder that already holds samples (nothing written before is overwritten)
    or that cannot be written (a file, under a file, not writable), before the model is loaded."""
    earlier = sorted(p.name for p in (out / "prompts.txt", out / SETTINGS, out / "grid.png", out / "0000.png")
                     if p.exists())
    if earlier:
        raise FileExistsError(f"--out {out} already holds samples ({', '.join(earlier)}): choose another folder "
                              "or delete them")
    if problem := unwritable(out):
        raise FileExistsError(f"--out {out} {problem}")


def write_samples(out: Path, images: torch.Tensor, seeds: list[int], prompts: list[str], settings: dict) -> None:
    """The PNGs, ``prompts.txt`` (index, seed, prompt), ``sampling.json`` (``settings``) and
    ``grid.png`` in ``out``: all of them or none (on a full disk the written ones are removed: a
    folder with some of them would refuse the next try)."""
    listing = "".join(f"{i:04d}\t{seed}\t{p}\n" for i, (seed, p) in enumerate(zip(seeds, prompts, strict=True)))
    outputs = [(out / f"{i:04d}.png", png_bytes(image.permute(1, 2, 0).numpy())) for i, image in enumerate(images)]
    outputs += [(out / "prompts.txt", listing.encode()), (out / SETTINGS, json.dumps(settings, indent=1).encode())]
    written = []
    try:
        for path, data in outputs:
            write_atomic(path, data)
            written.append(path)
        save_grid(images, out / "grid.png", columns=min(8, len(images)))
    except OSError:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``microdit-sample``."""
    parser = argparse.ArgumentParser(prog="microdit-sample", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=file_or_folder, help="run folder (latest checkpoint), checkpoint folder or export "
                        "(model.safetensors + config.json)")
    parser.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    parser.add_argument("--prompts-file", type=file_or_folder, help="a text file with one prompt per line (- reads "
                        "them from standard input)")
    parser.add_argument("--out", type=file_or_folder, default=Path("samples"), help="output folder; one that already "
                        "holds samples is refused, not overwritten (default: %(default)s)")
    add_sampler_options(parser)
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i (default: %(default)s)")
    parser.add_argument("--same-noise", action="store_true", help="every image starts from the noise of --seed, "
                        "so prompts that differ in one word show what that word changes")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images per batch (default: %(default)s)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    parser.add_argument("--text-encoder", help="default: the one the run's dataset was encoded with (as its "
                        "checkpoint recorded it)")
    parser.add_argument("--autoencoder", help="default: the one the run's dataset was encoded with (as its "
                        "checkpoint recorded it)")
    parser.add_argument("--init-image", type=file_or_folder, help="image-to-image: start from this image")
    parser.add_argument("--sigma-start", type=float, help="noise level the init image is taken to (default: "
                        f"{SIGMA_START}; only with --init-image)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device (default: %(default)s)")
    args = parser.parse_args(argv)
    prompts = read_prompts(args)
    with stopped_in_one_line(f"microdit-sample: stopped; images already written to {args.out} are kept (a folder "
                             "that holds them is refused: sample into another --out, or delete them)"):
        try:
            sample(args, prompts)
        except (ValueError, FileNotFoundError, CheckpointError, DataError, OSError, LockHeld) as err:
            raise SystemExit(f"microdit-sample: error: {' '.join(str(err).split())}") from None


def _settings(args: argparse.Namespace, loaded, draw: PromptSampler, sampler, seeds: list[int], device) -> dict:
    """What ``sampling.json`` records: everything the images depend on besides the prompts."""
    return {"checkpoint": str(loaded.checkpoint.resolve()), "nimg": loaded.nimg, "weights": loaded.weights,
            "text_encoder": draw.text.name, "autoencoder": draw.autoencoder.name,
            "sampler": dataclasses.asdict(sampler), "use_text_mask": loaded.config.data.use_text_mask,
            "seeds": seeds, "same_noise": args.same_noise,
            "init_image": str(args.init_image.resolve()) if args.init_image else None,
            "sigma_start": args.sigma_start if args.init_image else None, "batch_size": args.batch_size,
            "device": str(device)}


def sample(args: argparse.Namespace, prompts: list[str]) -> None:
    """Generate ``prompts`` with the run or export ``args.run`` and write the PNGs and grid."""
    if not args.run.exists():
        raise FileNotFoundError(f"{args.run} does not exist (expected a run folder, a checkpoint folder or an export)")
    if args.init_image and not args.init_image.is_file():
        raise FileNotFoundError(f"--init-image {args.init_image} does not exist")
    if args.sigma_start is not None and not args.init_image:
        raise ValueError(f"--sigma-start {args.sigma_start} is the noise level an --init-image is taken to "
                         "(image-to-image): give --init-image, or drop --sigma-start for text-to-image")
    args.sigma_start = SIGMA_START if args.sigma_start is None else args.sigma_start
    if args.init_image and not (math.isfinite(args.sigma_start) and args.sigma_start > 0):
        raise ValueError(f"--sigma-start must be a finite number > 0, got {args.sigma_start}")
    device = local_device(args.device)
    keep_freed_memory(device)  # on CPU each batch reuses the last one's pages (microdit.host_memory)
    refuse_existing_samples(args.out)
    loaded = load_model(args.run, not args.no_ema, device)
    draw = PromptSampler(*encoder_names(loaded, args.text_encoder, args.autoencoder), device)
    draw.check(loaded.model.cfg)
    x_init = None
    if args.init_image:
        ae = draw.autoencoder
        side = loaded.model.cfg.input_size[0] * ae.downsample
        try:
            image = np.array(resize_center_crop(Image.open(args.init_image), side))
        except OSError as err:
            raise OSError(f"--init-image {args.init_image} cannot be read as an image: {err}") from None
        pixels = from_uint8(torch.from_numpy(image).permute(2, 0, 1)[None])
        x_init = ae.encode(pixels.to(device)).cpu().expand(len(prompts), -1, -1, -1)
    sampler = loaded.config.sampler.with_overrides(**sampler_overrides(args))
    seeds = [args.seed if args.same_noise else args.seed + i for i in range(len(prompts))]
    try:  # before the sampling, which is the long part
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"--out {args.out} cannot be created: {err.strerror or err}") from None
    with acquire(args.out / LOCK, f"--out {args.out} (microdit-sample writing its samples there)", wait=False):
        refuse_existing_samples(args.out)  # again: another microdit-sample may have written there meanwhile
        images = draw(loaded.model, prompts, seeds, loaded.config.diffusion, sampler,
                      loaded.config.data.use_text_mask, args.batch_size, x_init, args.sigma_start,
                      show_progress=True)  # (N, 3, H, W) uint8
        write_samples(args.out, images, seeds, prompts, _settings(args, loaded, draw, sampler, seeds, device))
    count = f"{len(images)} image" + ("s" if len(images) != 1 else "")
    print(f"{count} from {loaded.checkpoint} ({loaded.weights}) in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
