"""Experiment notes and the paper's numbers (installed as ``microdit.experiments``)."""
