"""Scaling-law analysis: fits, plots and reports (the last stage of the pipeline; it
arrives with the analysis issue)."""
