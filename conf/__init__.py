"""The Hydra configs of microdit-train (installed as the package ``microdit.conf``)."""
