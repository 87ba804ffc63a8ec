"""Recommender models, one file each; see :mod:`raymmrec.registry`."""
