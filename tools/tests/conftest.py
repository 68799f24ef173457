import os
import sys

# make `acm_tools` importable without PYTHONPATH=tools
TOOLS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)
