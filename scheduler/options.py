"""The options several commands share, declared once so that each reads and documents the same
way everywhere. Each takes the command's own help where what it does differs by command."""

from __future__ import annotations

import click

from recaudit.audits.urls import URL_ENV

CONFIG_HELP = "Settings file [default: ./recaudit.toml if it exists; every setting has a default]."


def db_option(f):
    """--db, else $RECAUDIT_DATABASE_URL (click reads it, so --help names it), else the store's
    own default, ./recaudit.db."""
    return click.option("--db", metavar="URL", envvar=URL_ENV, show_envvar=True, show_default="./recaudit.db",
                        help="Database URL, or a path for an SQLite file.")(f)


def config_option(help: str = CONFIG_HELP):
    return click.option("--config", "config_path", type=click.Path(dir_okay=False), help=help)


def json_option(help: str):
    """--json, whose help says what the command prints."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def out_option(f):
    """--out of the commands that write the reports (`audit`, `report`): the same directory."""
    return click.option("--out", type=click.Path(file_okay=False),
                        help="Output directory [default: audit.out, ./recaudit-reports].")(f)


def window_options(f):
    f = click.option("--until", metavar="TIME", help="End of the window (exclusive).")(f)
    return click.option("--since", metavar="TIME", help="Start of the window.")(f)
