"""Pretrained weights that a library fetches from the network on first use: open_clip (text
encoders, Clip-FID, CLIP score) and diffusers (the SDXL VAE) from the Hugging Face Hub,
torch-fidelity (FID's InceptionV3) from GitHub. Each caches what it fetched, so a machine without
network (a GPU node behind a firewall) finds them only where a run with network left them.

:func:`fetching` wraps such a load: a fetch that fails (no network, no cached copy, a hub id that
does not exist) becomes one :class:`WeightsUnavailable` line naming the weights, the library's
own reason and what to do offline, instead of the library's traceback. Any other error passes
through unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

HUB_CACHE = "the Hugging Face cache (HF_HOME, default ~/.cache/huggingface)"
TORCH_CACHE = "torch's cache (TORCH_HOME, default ~/.cache/torch)"
OPEN_CLIP_LOCAL = "give a local weights file as ARCH:/path/to/weights.bin"


class WeightsUnavailable(ValueError):
    """Pretrained weights that cannot be fetched: the message names them and what to do offline."""


def is_fetch_error(err: BaseException) -> bool:
    """A failed fetch as these libraries raise it: an OSError (urllib's URLError, requests' and the
    Hugging Face Hub's errors, a missing file) or open_clip's RuntimeError 'Failed to download ...'."""
    return isinstance(err, OSError) or (isinstance(err, RuntimeError) and "download" in str(err).lower())


@contextlib.contextmanager
def fetching(what: str, cache: str, local: str) -> Iterator[None]:
    """Load ``what`` inside this context; a failed fetch raises :class:`WeightsUnavailable` saying
    where the library caches it (``cache``) and how to give a local copy instead (``local``)."""
    try:
        yield
    except Exception as err:
        if not is_fetch_error(err):
            raise
        reason = " ".join(str(err).split())
        reason = reason if len(reason) <= 300 else reason[:297] + "..."
        raise WeightsUnavailable(f"{what}: the pretrained weights cannot be fetched ({reason}); without network, "
                                 f"fetch them once on a machine with network and copy {cache}, or {local}") from None
