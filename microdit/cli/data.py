"""``microdit-data``: build, encode, inspect and verify datasets.

    microdit-data synthetic OUT --num-samples 20000 --size 32
    microdit-data cifar-captions OUT --from-folder ROOT | --from-dump DIR | --from-torchvision ROOT
    microdit-data prepare cc12m|sa1b|jdb|diffdb|textcaps|coco2014 OUT [--small] [--from RAW_DIR]
    microdit-data encode IMAGES_DIR LATENTS_DIR --autoencoder pixel:2 --text-encoder offline:128:32
    microdit-data inspect DIR [--grid grid.png]
    microdit-data verify DIR
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

from microdit.cli.options import file_or_folder, fraction, image_side, non_negative_int, positive_int, synthetic_side
from microdit.cli.stopping import stopped_in_one_line
from microdit.data import DataError, encode_dataset, load_manifest, verify_dataset, write_image_dataset
from microdit.data import cifar_captions as cc
from microdit.data.encode import Share
from microdit.data.images import IMAGE_EXTS, decode_image, refuse_filled, resize_center_crop, save_grid, to_uint8
from microdit.data.prepare import SMALL, Rules, download, prepare_dataset
from microdit.data.reader import LatentBatches
from microdit.data.shards import iter_shard
from microdit.data.sources import SOURCES
from microdit.data.synthetic import SCENES, SHAPES, synthetic_samples, synthetic_source
from microdit.encoders import EncoderConfig, load_autoencoder, load_text_encoder
from microdit.files import unwritable
from microdit.launch import local_device
from microdit.progress import progress


def cmd_synthetic(args: argparse.Namespace) -> None:
    """Write N synthetic samples as image shards."""
    samples = progress(synthetic_samples(args.seed, args.num_samples, args.size, args.scene), total=args.num_samples,
                       desc="synthetic", unit="img")
    manifest = write_image_dataset(args.out, samples, args.size, list(SHAPES), synthetic_source(args.seed, args.scene),
                                   args.shard_size)
    print(f"wrote {manifest.samples} samples in {len(manifest.shards)} shard(s) to {args.out}")


def cmd_cifar_captions(args: argparse.Namespace) -> None:
    """Build cifar-captions image shards from one source."""
    keep = cc.Filter(args.size, args.min_side)
    if args.from_folder:
        samples, source = cc.from_image_folder(args.from_folder, keep, args.captions_file, args.seed), "folder"
    elif args.from_dump:
        dump = args.from_dump
        reader = cc.from_parquet_dump if any(dump.glob("*.parquet")) else cc.from_webdataset_dump
        samples, source = reader(dump, keep), "dump"
    else:
        samples, source = cc.from_torchvision_cifar10(args.from_torchvision, keep, not args.test, args.seed), "cifar10"
    origin = args.from_folder or args.from_dump or args.from_torchvision
    try:
        manifest = write_image_dataset(args.out, progress(samples, desc="cifar-captions", unit="img"), args.size,
                                       list(cc.CIFAR10_CLASSES), f"cifar-captions({source}: {origin})",
                                       args.shard_size)
    except DataError as err:
        if keep.counts["kept"] or not keep.counts["seen"]:  # not the filter's doing
            raise
        raise DataError(f"{err}: the filter kept none of the {keep.counts['seen']} images of {origin} "
                        f"({dict(keep.counts)}; --min-side {args.min_side})") from None
    print(f"wrote {manifest.samples} samples to {args.out}; filter counts: {dict(keep.counts)}")


def cmd_prepare(args: argparse.Namespace) -> None:
    """Download a source (unless --from) and build its image shards by the paper's rules."""
    source = SOURCES[args.source]
    fraction = SMALL if args.small else args.fraction
    raw = args.from_dir
    if raw is None:
        raw = args.raw_dir or args.out.with_name(args.out.name + "-raw")
        download(source, raw, fraction, args.num_proc, {"links": args.links})
    rules = Rules.of(source, args.min_side, args.max_side, args.nsfw_threshold)
    manifest = prepare_dataset(source, raw, args.out, rules, fraction if args.from_dir else 1.0, args.num_proc)
    print(f"{args.out}: {manifest.samples} images in {len(manifest.shards)} shard(s) from {args.source} "
          f"({manifest.counts}); licence: {manifest.licence}")


def cmd_encode(args: argparse.Namespace) -> None:
    """Encode an image dataset into latents."""
    device = local_device(args.device)
    autoencoder, text = load_autoencoder(args.autoencoder), load_text_encoder(args.text_encoder)
    share = Share.from_env()
    manifest = encode_dataset(args.src, args.dst, autoencoder, text, args.batch_size, args.seed, device,
                              args.skip_bad_samples, resolutions=args.resolutions, share=share)
    waiting = "" if manifest.complete else ": its shards done, other ranks still encoding"
    rank = "" if share.world == 1 else f" (rank {share.rank} of {share.world}{waiting})"
    shapes = manifest.resolutions or {"": manifest.latent_shape}
    latents = ", ".join(f"{list(v)}{f' at {k} px' if k else ''}" for k, v in shapes.items())
    print(f"{args.dst}: {manifest.samples} samples, latents {latents}, text {manifest.text_shape}{rank}")


def cmd_inspect(args: argparse.Namespace) -> None:
    """Print the manifest and a few captions; optionally save a PNG grid of (decoded) samples."""
    manifest = load_manifest(args.dir)
    print(manifest.to_json() if args.full else
          f"{args.dir}: {manifest.kind}, {manifest.samples} samples in {len(manifest.shards)} shard(s), "
          f"image size {manifest.image_size}, labels {manifest.label_names}\n"
          f"  autoencoder {manifest.autoencoder} latents {manifest.latent_shape} (scale {manifest.latent_scale}), "
          f"text {manifest.text_encoder} {manifest.text_shape}, complete {manifest.complete}")
    if manifest.kind == "images":
        samples = []
        for key, members in iter_shard(Path(args.dir) / manifest.shards[0].name):
            ext = next(e for e in IMAGE_EXTS if e in members)
            image = decode_image(members[ext], key)
            if manifest.image_size is None:  # images of their own sizes (prepare): cropped to one for the grid
                image = resize_center_crop(image, 128)
            samples.append((key, np.array(image), members["txt"].decode()))
            if len(samples) == args.num_samples:
                break
        images = torch.from_numpy(np.stack([s[1] for s in samples])).permute(0, 3, 1, 2)  # (N, 3, H, W)
    else:
        batch = LatentBatches(args.dir, batch_size=min(args.num_samples, manifest.samples), shuffle="global").batch(0)
        samples = list(zip(batch["key"], [None] * len(batch["key"]), batch["caption"], strict=True))
        if args.grid:
            images = to_uint8(load_autoencoder(manifest.autoencoder).decode(batch["latent"]))
    for key, _, caption in samples:
        print(f"  {key}: {caption}")
    if args.grid:
        save_grid(images, args.grid)
        print(f"grid of {len(images)} samples: {args.grid}")


def cmd_verify(args: argparse.Namespace) -> None:
    """Check every shard's size and sha256 against the manifest."""
    manifest = verify_dataset(args.dir)
    print(f"{args.dir}: {len(manifest.shards)} shard(s), {manifest.samples} samples, all match the manifest")


def _image_dataset_parser(sub, name: str, help_text: str, size: int, side=image_side) -> argparse.ArgumentParser:
    """A sub-command that writes an image dataset: OUT, --size (of argparse type ``side``), --seed, --shard-size."""
    p = sub.add_parser(name, help=help_text)
    p.add_argument("out", type=file_or_folder, help="output folder of the image shards (must not hold a dataset)")
    p.add_argument("--size", type=side, default=size, help="side of the square images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sample seed (default: %(default)s)")
    p.add_argument("--shard-size", type=positive_int, default=2000, help="samples per shard (default: %(default)s)")
    return p


def _prepare_parser(sub) -> None:
    """The ``prepare`` sub-command."""
    p = sub.add_parser("prepare", help="download one of the paper's datasets and build its image shards by the "
                       "paper's filter and resize rules (resumable)",
                       description="Without --from, the files are downloaded first into --raw-dir (default OUT-raw), "
                       "in the source's own layout; with --from, that folder must hold them so.",
                       epilog="layouts:\n" + "\n".join(textwrap.fill(f"{name}: {source.layout}", 100,
                                                                      initial_indent="  ", subsequent_indent="    ")
                                                        for name, source in sorted(SOURCES.items())) + "\n",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", choices=sorted(SOURCES), help="which dataset")
    p.add_argument("out", type=file_or_folder, help="output folder of the image shards (new, or a partial prepare to "
                   "resume)")
    p.add_argument("--from", dest="from_dir", type=file_or_folder,
                   help="build from files already downloaded in the source's own layout (no network)")
    p.add_argument("--raw-dir", type=file_or_folder, help="where downloads go (default: OUT-raw)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--fraction", type=fraction, default=1.0,
                      help="the first fraction of the source's archives (default: %(default)s)")
    size.add_argument("--small", action="store_true", help=f"the ~{SMALL:.0%}% partition, for debugging")
    p.add_argument("--num-proc", type=positive_int, default=1,
                   help="parallel downloads and units processed at once (default: %(default)s)")
    p.add_argument("--min-side", type=non_negative_int,
                   help="drop images whose short side is below this (paper: 256; coco2014: 0, keep every image)")
    p.add_argument("--max-side", type=non_negative_int,
                   help="resize the short side to this when larger (paper: 512; 0: keep sizes; coco2014: 0)")
    p.add_argument("--nsfw-threshold", type=float, help="drop DiffusionDB samples whose image or prompt NSFW score is "
                   "above this (the reference's 0.2)")
    p.add_argument("--links", type=file_or_folder, help="sa1b: the file_name/cdn_link list of the SA-1B download page")
    p.set_defaults(func=cmd_prepare)


def _encode_parser(sub) -> None:
    """The ``encode`` sub-command."""
    p = sub.add_parser("encode", help="encode image shards into latent shards (resumable)")
    p.add_argument("src", type=file_or_folder, help="image dataset folder (shards + manifest.json)")
    p.add_argument("dst", type=file_or_folder, help="output folder of the latent shards (empty, or a partial encode "
                   "to resume)")
    p.add_argument("--autoencoder", default=EncoderConfig.autoencoder,
                   help="sdxl, ostris16, pixel, pixel:F, ORG/REPO[:SUB] or a folder (default: %(default)s, the "
                        "default model's input)")
    p.add_argument("--text-encoder", default=EncoderConfig.text_encoder,
                   help="openclip:ARCH[:PRETRAINED] (paper: openclip:ViT-H-14-378-quickgelu:dfn5b), offline[:D[:L]] "
                        "or minilm[:L] (default: %(default)s, the default model's caption width)")
    p.add_argument("--batch-size", type=positive_int, default=64,
                   help="images per encoder batch (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the autoencoder's latent sampling (default: %(default)s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="device (default: %(default)s)")
    p.add_argument("--skip-bad-samples", action="store_true", help="skip unreadable images instead of stopping")
    p.add_argument("--resolutions", type=image_side, nargs="+",
                   help="encode at these pixel sizes in one pass, each sample holding the latents of every one "
                   "(images resized on the short side, centre-cropped) and one caption embedding; a stage picks its "
                   "resolution (data.resolution, stages.NAME.resolution); needed for datasets from `prepare` "
                   "(paper: 256 512)")
    p.set_defaults(func=cmd_encode)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``microdit-data``."""
    parser = argparse.ArgumentParser(prog="microdit-data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = _image_dataset_parser(sub, "synthetic", "write the synthetic captioned dataset as image shards", 32,
                              synthetic_side)
    p.add_argument("--num-samples", type=positive_int, default=20000, help="number of samples (default: %(default)s)")
    p.add_argument("--scene", choices=SCENES, default="mixed", help="mixed: every attribute varies; one_object: one "
                   "large object in the middle of a white background (default: %(default)s)")
    p.set_defaults(func=cmd_synthetic)
    p = _image_dataset_parser(sub, "cifar-captions", "build cifar-captions image shards", 256)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--from-folder", type=file_or_folder, help="ROOT/<class>/*.jpg|png")
    group.add_argument("--from-dump", type=file_or_folder, help="img2dataset output: webdataset .tar or .parquet files")
    group.add_argument("--from-torchvision", type=file_or_folder, help="download CIFAR-10 into this folder (online)")
    p.add_argument("--captions-file", type=file_or_folder, help="JSON {'<class>/<file>': caption} for --from-folder")
    p.add_argument("--test", action="store_true", help="CIFAR-10 test split instead of train")
    p.add_argument("--min-side", type=positive_int, default=256,
                   help="images with a shorter side are skipped (default: %(default)s)")
    p.set_defaults(func=cmd_cifar_captions)
    _prepare_parser(sub)
    _encode_parser(sub)
    p = sub.add_parser("inspect", help="show a dataset's manifest and a few samples")
    p.add_argument("dir", type=file_or_folder, help="image or latent dataset folder")
    p.add_argument("--num-samples", type=positive_int, default=8, help="samples to show (default: %(default)s)")
    p.add_argument("--grid", type=file_or_folder, help="save a PNG grid of the (decoded) samples (a new file)")
    p.add_argument("--full", action="store_true", help="print the whole manifest")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("verify", help="check shards against the manifest's sizes and sha256")
    p.add_argument("dir", type=file_or_folder, help="image or latent dataset folder")
    p.set_defaults(func=cmd_verify)
    return parser


# What each command writes: (argument, its name in errors, its kind), checked before any work: a
# "folder" (resumable work may be in it), a "dataset" (a new dataset's folder: new or empty) or a
# "file" (new: an existing file is never replaced).
OUTPUTS = {"synthetic": [("out", "OUT", "dataset")], "cifar-captions": [("out", "OUT", "dataset")],
           "prepare": [("out", "OUT", "folder"), ("raw_dir", "--raw-dir", "folder")],
           "encode": [("dst", "DST", "folder")], "inspect": [("grid", "--grid", "file")]}


def check_output(path: Path, name: str, kind: str) -> None:
    """DataError (one line, nothing written) where ``path`` cannot be written as the ``kind`` of
    :data:`OUTPUTS` it is: before the work and its progress bar."""
    problem = unwritable(path, folder=kind != "file")
    if problem is None and kind == "file" and path.exists():
        problem = "exists: choose another path or delete it"
    if problem:
        raise DataError(f"{name} {path} {problem}; nothing was written")
    if kind == "dataset":
        refuse_filled(path)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``microdit-data``; data errors end with a one-line message and exit code 2."""
    args = build_parser().parse_args(argv)
    with stopped_in_one_line(f"microdit-data {args.command}: stopped; nothing was half-written (a dataset folder is "
                             "written whole; downloads and encoding resume where they stopped): run the same command "
                             "again"):
        try:
            for dest, name, kind in OUTPUTS.get(args.command, []):
                if (path := getattr(args, dest)) is not None:
                    check_output(path, name, kind)
            args.func(args)
        except (DataError, ValueError, OSError) as err:
            named = isinstance(err, OSError) and err.filename and err.strerror
            text = f"{err.filename}: {err.strerror}" if named else err
            print(f"microdit-data {args.command}: error: {' '.join(str(text).split())}", file=sys.stderr)
            raise SystemExit(2) from None


if __name__ == "__main__":
    main()
