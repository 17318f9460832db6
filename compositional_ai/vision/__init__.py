"""Damage classification from electroluminescence cell photos: image checks, CNN, training, metrics.

Pure torch / numpy / Pillow; nothing here imports Dagster, so the assets and the serving code share
one implementation.
"""
