"""`logistik hash-password`: a password hash for the config's web users."""

from __future__ import annotations

import click


@click.command("hash-password")
@click.password_option(help="The password (asked for when not given).")
def hash_password_command(password: str) -> None:
    """Print a password hash for `web.auth.users` in the config.

    \b
    Example:
      logistik hash-password   # then: web: {auth: {users: {alice: "<printed hash>"}}}
    """
    # The web server's imports are not needed by other commands.
    from logistik.web.auth import hash_password

    click.echo(hash_password(password))
