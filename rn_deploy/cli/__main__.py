"""``python -m rn_deploy.cli``: the ``rn-deploy`` command line."""

from . import main

main()
