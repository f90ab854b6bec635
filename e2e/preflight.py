"""Refuse at once, before anything is installed or created, when AWS credentials or the Pulumi CLI are missing.

Standard library only: `make e2e` runs it with the system Python before building the venv.
Credentials are looked for where the AWS SDKs look, without calling AWS: environment keys, a
named or default profile in the shared files, web identity (OIDC, as in CI), a container
credentials endpoint. Whether they are valid is AWS's answer, at the first `up`.
"""

from __future__ import annotations

import configparser
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

HOW_TO_CREDENTIALS = (
    "AWS credentials: none found. Give them one of the ways the AWS SDKs read: `aws configure` "
    "(writes ~/.aws/credentials), `aws sso login --profile NAME` then AWS_PROFILE=NAME, "
    "AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN), or web identity "
    "(AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE, as the CI workflow gets from OIDC). On an EC2 host with an "
    "instance profile, export them first: eval \"$(aws configure export-credentials --format env)\"."
)
HOW_TO_PULUMI = (
    "Pulumi CLI: `pulumi` is not on PATH. Install it: curl -fsSL https://get.pulumi.com | sh, then "
    "export PATH=\"$HOME/.pulumi/bin:$PATH\" (https://www.pulumi.com/docs/install/). No Pulumi account is "
    "needed: the run keeps its state in a local file backend."
)


def _sections(path: Path) -> set[str]:
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
    except configparser.Error:
        return set()
    return set(parser.sections())


def credential_problems(env: Mapping[str, str], home: Path) -> list[str]:
    """[] when some source of AWS credentials is present, else what is missing and how to get it."""
    if env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_SECRET_ACCESS_KEY"):
        missing = [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not env.get(k)]
        return [f"AWS credentials: {missing[0]} is unset but its partner is set; set both."] if missing else []
    if env.get("AWS_ROLE_ARN") and env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        token = Path(env["AWS_WEB_IDENTITY_TOKEN_FILE"])
        return [] if token.is_file() else [f"AWS credentials: AWS_WEB_IDENTITY_TOKEN_FILE={token} does not exist."]
    if env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        return []
    credentials = _sections(Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials"))
    config = _sections(Path(env.get("AWS_CONFIG_FILE") or home / ".aws" / "config"))
    profile = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE")
    if profile:
        found = profile in credentials or f"profile {profile}" in config or (profile == "default" and "default" in config)
        return [] if found else [f"AWS credentials: AWS_PROFILE={profile} is in neither ~/.aws/credentials nor ~/.aws/config."]
    if "default" in credentials or "default" in config:
        return []
    return [HOW_TO_CREDENTIALS]


def problems(env: Mapping[str, str], home: Path, which: Callable[[str], str | None]) -> list[str]:
    found = credential_problems(env, home)
    if which("pulumi") is None:
        found.append(HOW_TO_PULUMI)
    return found


def main() -> int:
    found = problems(os.environ, Path.home(), shutil.which)
    for problem in found:
        print(f"make e2e: {problem}", file=sys.stderr)
    if found:
        print("make e2e: nothing was created.", file=sys.stderr)
    return 2 if found else 0


if __name__ == "__main__":
    sys.exit(main())
