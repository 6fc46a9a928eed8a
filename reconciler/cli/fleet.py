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
@click.pass_context
def serve_command(ctx: click.Context, etcd: str, listen: str, slots: int) -> None:
    """Serve POST /v1/pre-reboot, /v1/steady-state, /v1/force-release and GET /v1/status.

    Any number of replicas may serve the same etcd: the slots live in etcd only,
    changed by compare-and-swap, and each write applies this replica's slot count.

    --config FILE here is the server's configuration (YAML: slots, ttl,
    groups.NAME.{slots,ttl}, adminToken, clientToken), read again when it changes.
    """
    from reconciler.fleet.server import ConfigInvalid, serve

    root = ctx.find_root().obj  # kruxos moves --config to itself, wherever it stands
    config_file = Path(root) if root else None

    urls = [url.strip() for url in etcd.split(",") if url.strip()]
    try:
        serve(urls, listen, slots, config_file)
    except (ConfigInvalid, ValueError, OSError) as exc:
        click.echo(f"kruxos fleetlock serve: {exc}", err=True)
        sys.exit(2)
