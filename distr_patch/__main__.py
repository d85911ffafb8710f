"""``python -m distr_patch`` (and ``accelerate launch -m distr_patch``) = the ``distr-patch`` command."""
import sys

from .cli.main import main

sys.exit(main())
