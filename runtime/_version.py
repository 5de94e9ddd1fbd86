"""The one place hauler's version is written (setup.py reads it)."""
__version__ = "0.1.0"
