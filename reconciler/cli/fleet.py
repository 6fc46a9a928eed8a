"""``kruxos fleetlock serve``: the FleetLock reboot-slot server on etcd."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.group("fleetlock")
def fleetlock_group() -> None:
    """The fleet's reboot slots (Zincati's FleetLock protocol) kept in etcd."""


@fleetlock_group.command("serve")
@click.option("--etcd", "etcd", required=True, metavar="URL[,URL...]",
              help="etcd client endpoints (http://HOST:PORT), tried in turn.")
@click.option("--listen", "listen", required=True, metavar="HOST:PORT",
              help="Where to serve the FleetLock protocol.")
@click.option("--slots", "slots", type=click.IntRange(min=0), default=1, show_default=True,
              help="Slots of a group the configuration does not name.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, metavar="FILE",
              help="YAML: slots, ttl, groups.NAME.{slots,ttl}, adminToken, clientToken; "
                   "read again when it changes.")
def serve_command(etcd: str, listen: str, slots: int, config_file: Path | None) -> None:
    """Serve POST /v1/pre-reboot, /v1/steady-state, /v1/force-release and GET /v1/status.

    Any number of replicas may serve the same etcd: the slots live in etcd only,
    changed by compare-and-swap, and each write applies this replica's slot count.
    """
    from reconciler.fleet.server import ConfigInvalid, serve

    urls = [url.strip() for url in etcd.split(",") if url.strip()]
    try:
        serve(urls, listen, slots, config_file)
    except (ConfigInvalid, ValueError, OSError) as exc:
        click.echo(f"kruxos fleetlock serve: {exc}", err=True)
        sys.exit(2)
