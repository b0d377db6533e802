"""Tools around the method, each run from the repository root as `python -m tools.NAME`: bench (speed), diagnose
(gradient per term), reproduce (the tables), figures, course (assignments)."""
