"""Test harnesses: a real systemd in private namespaces, and a driver that runs the same
sandbox scenarios against every backend."""
