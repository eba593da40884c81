"""`logistik hash-password`: a password hash for the config's web users."""

from __future__ import annotations

import click


@click.command("hash-password")
@click.password_option(help="The password (asked for when not given).")
def hash_password_command(password: str) -> None:
    """Print a password hash for `web.auth.users` in the config, ready to paste.

    Each `$` of the hash is printed as `$$`, since `$NAME` in the config reads the environment.

    \b
    Example:
      logistik hash-password   # then: web: {auth: {users: {alice: "<printed hash>"}}}
    """
    # Only the password module: the web server's imports are not needed here.
    from logistik.web.auth.passwords import config_value, hash_password

    click.echo(config_value(hash_password(password)))
    click.echo(
        'paste it under web.auth.users, e.g. alice: "<printed>" '
        "($ is written $$ because $NAME reads the environment)",
        err=True,
    )
