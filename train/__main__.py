"""``python -m rn_deploy.train``: the same options as ``rn-deploy train``."""

import click

from rn_deploy.errors import RnDeployError

from .cli import train_command


def main() -> None:
    try:
        train_command.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        raise SystemExit(e.exit_code) from None
    except click.ClickException as e:
        e.show()
        raise SystemExit(e.exit_code) from None
    except click.exceptions.Abort:
        raise SystemExit(1) from None
    except RnDeployError as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(1) from None


main()
