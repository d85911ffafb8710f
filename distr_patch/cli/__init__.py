"""The ``distr-patch`` command line (see ``main.py``)."""
