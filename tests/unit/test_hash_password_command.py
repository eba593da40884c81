"""`logistik hash-password` prints what the config takes as it is."""

from __future__ import annotations

from click.testing import CliRunner

from logistik.commands.cli import main
from logistik.config import parse_config
from logistik.web.auth import verify_password


def test_the_printed_hash_pasted_into_the_config_verifies_the_password() -> None:
    result = CliRunner().invoke(main, ["hash-password", "--password", "s3cret"])
    assert result.exit_code == 0, result.output
    printed = result.stdout.strip()
    assert "$$" in printed
    config = parse_config(f'web: {{auth: {{users: {{alice: "{printed}"}}}}}}\n', "test.yaml", {})
    assert verify_password("s3cret", config.web.auth.users["alice"])
    assert not verify_password("other", config.web.auth.users["alice"])
