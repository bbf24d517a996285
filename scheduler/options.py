"""The options several commands share, declared once so that each reads and documents the same
way everywhere. Each takes the command's own help where what it does differs by command."""

from __future__ import annotations

import os

import click

from recaudit.audits.urls import ENGINE_ENV, ENGINES, LAKE_ENV, URL_ENV

CONFIG_HELP = "Settings file [default: ./recaudit.toml if it exists; every setting has a default]."


def _exported(name: str):
    """A callback putting the option's value into the environment, where the store reads it: the
    scheduler's jobs and the processes a command starts then open the same lake."""
    def export(_ctx, _param, value):
        if value:
            os.environ[name] = value
    return export


def db_option(f):
    """--db, else $RECAUDIT_DATABASE_URL (click reads it, so --help names it), else the store's
    own default, ./recaudit.db; with --lake and --engine, which say where the events are kept
    (else store.lake and store.engine of recaudit.toml)."""
    f = click.option("--engine", type=click.Choice(ENGINES, case_sensitive=False), envvar=ENGINE_ENV,
                     show_envvar=True, expose_value=False,
                     callback=_exported(ENGINE_ENV),
                     help="What reads the lake [default: store.engine, duckdb].")(f)
    f = click.option("--lake", metavar="PATH", envvar=LAKE_ENV, show_envvar=True, expose_value=False,
                     callback=_exported(LAKE_ENV),
                     help="Keep events as Parquet files here (a directory or s3:// URL), their manifest in the "
                          "database [default: store.lake, none].")(f)
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
