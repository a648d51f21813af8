"""`python -m services.gateway.fleet`: the model-management CLI (services.gateway.fleet.cli)."""

from services.gateway.fleet.cli import main

main()
