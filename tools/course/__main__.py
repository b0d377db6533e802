"""python -m tools.course ..."""
import sys

from .cli import main

sys.exit(main())
