"""Evaluation: image-quality metrics (metrics.py), the transfer table with its degradation measures
(transfer.py), content leakage (leakage.py) and figures (figures.py)."""
