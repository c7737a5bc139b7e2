"""`FAKE_ARM_TOKEN=T python -m tests.fakes.arm --port N --cert C --key K --state-dir D`"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from pathlib import Path

from aiohttp import web

from tests.fakes.arm.server import FakeArm
from tests.fakes.arm.vms import Image

REPO_ROOT = Path(__file__).resolve().parents[3]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.arm")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True, help="PEM certificate chain for localhost")
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument(
        "--token",
        default=os.environ.get("FAKE_ARM_TOKEN"),
        help="the one bearer token accepted (default: $FAKE_ARM_TOKEN, which keeps it out of ps)",
    )
    parser.add_argument(
        "--state-dir", type=Path, required=True, help="where VMs keep their disks and consoles"
    )
    parser.add_argument("--subnet-prefix", default="127.0.100", help="VMs get <prefix>.4, .5, ...")
    parser.add_argument("--retry-after", type=int, default=1, help="Retry-After of operation statuses")
    parser.add_argument("--image-python", default=sys.executable, help="the interpreter VMs boot with")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("give --token or set FAKE_ARM_TOKEN")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    fake = FakeArm(
        token=args.token,
        state_dir=args.state_dir,
        image=Image(python=args.image_python, package_root=str(REPO_ROOT)),
        subnet_prefix=args.subnet_prefix,
        retry_after=args.retry_after,
    )
    web.run_app(fake.app(), host="127.0.0.1", port=args.port, ssl_context=context, print=None)


if __name__ == "__main__":
    main()
