"""`python -m host`: the local compute host with settings from the environment."""

from __future__ import annotations

from config.logging import configure_logging
from config.settings import load_settings
from host.server import run


def main() -> None:
    configure_logging()
    run(load_settings())


if __name__ == "__main__":
    main()
