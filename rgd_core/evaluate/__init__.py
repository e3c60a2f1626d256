"""Evaluation: class accuracy (UA/RA), Frechet distance, grids and plots."""
