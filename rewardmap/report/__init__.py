"""The run report: one self-contained HTML page with a run's config, curves, sample rollouts and tables."""
