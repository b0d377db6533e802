"""Shared pytest set-up: tests run on CPU with one thread so the suite fits 2 cores."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
torch.set_num_threads(1)
