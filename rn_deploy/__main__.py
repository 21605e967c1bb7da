"""``python -m rn_deploy``: the ``rn-deploy`` command line."""

from .cli import main

main()
