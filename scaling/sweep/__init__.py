"""``scaling sweep``: Ray Tune searches over pretraining configurations."""
