"""cnetd: the CNET Agent."""

__version__ = "0.1.0"
