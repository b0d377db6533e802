"""Tools around the method: bench (speed), diagnose (gradient per term), reproduce (the tables), figures."""
