"""The ``flowlearn`` command line."""
