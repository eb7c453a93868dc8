"""microdit: text-to-image diffusion transformers trained from scratch on a micro budget.

A reimplementation of MicroDiT (Sehwag et al., "Stretching Each Dollar", arXiv 2407.15811):
a DiT backbone with a patch-mixer, deferred token masking, expert-choice MoE layers and
layer-wise width scaling, trained with the EDM framework.
"""

__version__ = "0.1.0"
