"""bin/workspace-host --stage NAME start|status|stop: a host in the stage's VPC with the
model workspace (FSx for Lustre) mounted at /fsx, reached through Session Manager, that
terminates itself after the stage's idle minutes (ModelWorkspaceSettings.host_idle_minutes).

  bin/workspace-host --stage staging start [--instance-type g6e.2xlarge] [--image-parameter P]
  bin/workspace-host --stage staging status
  bin/workspace-host --stage staging stop        # terminate now rather than when idle

`start` stages this repository's publishing tools in the model bucket (the host has no
route to PyPI: bin/model-publish and the pure-Python packages it needs travel as one
tar.gz, unpacked by the host's boot script), launches the stage's launch template in the
file system's subnet (both read from the ModelStorage stack's outputs), waits until
Session Manager sees the host, and prints the command that opens a shell on it. A host
already running for the stage is reused. Exit status: 0 done, 2 a clear error (one line).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import re
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

from cli.aws_clients import AwsClients
from config.settings import StageSettings
from stacks.workspace_host_scripts import (
    HOST_TAG,
    LAUNCH_TEMPLATE_OUTPUT,
    MOUNT_POINT,
    SUBNET_OUTPUT,
    TOOLS_KEY,
)

ROOT = Path(__file__).resolve().parent.parent
# What bin/model-publish imports from this repository (config.settings imports the
# runtime's shared names and the burn-rate policy), and the pure-Python packages it runs
# on (boto3 and what it needs; tqdm for progress bars on a terminal).
TOOLS_SOURCES = ("cli", "config", "lambdas/__init__.py", "lambdas/contract.py", "lambdas/cache_settings.py",
                 "lambdas/embeddings_model.py",
                 "stacks/__init__.py", "stacks/burn_rates.py", "stacks/workspace_host_scripts.py")
TOOLS_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3", "tqdm")
LIVE_STATES = ("pending", "running")
ONLINE_WAIT_SECONDS = 600
POLL_SECONDS = 10
# Graviton families (m7g, c7gn, g5g, ...): the launch template's image is x86_64.
_ARM_FAMILY = re.compile(r"^[a-z]+\d+[a-z]*g[a-z]*$")


class HostError(Exception):
    """A clear failure: one line for the user, exit status 2."""


def _skip_caches(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if "__pycache__" in info.name or info.name.endswith(".pyc") else info


def tools_bundle() -> bytes:
    """The publishing tools as a tar.gz: this repository's modules at the top, the
    packages under site-packages/ (the host's wrapper puts both on PYTHONPATH)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        for source in TOOLS_SOURCES:
            tar.add(ROOT / source, arcname=source, filter=_skip_caches)
        for package in TOOLS_PACKAGES:
            spec = importlib.util.find_spec(package)
            if spec is None or spec.origin is None:
                raise HostError(f"{package} is not installed here; run `make test` once to create .venv")
            origin = Path(spec.origin)
            source = origin.parent if origin.name == "__init__.py" else origin
            tar.add(source, arcname=f"site-packages/{source.name}", filter=_skip_caches)
    return buffer.getvalue()


def stack_outputs(aws: AwsClients, settings: StageSettings) -> dict[str, str]:
    """The ModelStorage stack's outputs: where hosts launch from."""
    cloudformation = aws("cloudformation", settings.home_region)
    name = f"{settings.name}-ModelStorage"
    try:
        (stack,) = cloudformation.describe_stacks(StackName=name)["Stacks"]
    except cloudformation.exceptions.ClientError as e:
        if e.response.get("Error", {}).get("Code") == "ValidationError":
            raise HostError(f"stack {name} is not deployed: npx cdk deploy '{settings.name}/ModelStorage'") from None
        raise
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def live_hosts(aws: AwsClients, settings: StageSettings) -> list[dict]:
    ec2 = aws("ec2", settings.home_region)
    found = []
    for page in ec2.get_paginator("describe_instances").paginate(
        Filters=[
            {"Name": f"tag:{HOST_TAG}", "Values": [settings.name]},
            {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
        ]
    ):
        for reservation in page["Reservations"]:
            found.extend(reservation["Instances"])
    return found


def _session_command(settings: StageSettings, instance_id: str) -> str:
    return f"aws ssm start-session --target {instance_id} --region {settings.home_region}"


def wait_online(aws: AwsClients, settings: StageSettings, instance_id: str, sleep: Callable[[float], None]) -> None:
    """Until Session Manager's agent on the host reports in (it starts at boot, beside the
    boot script)."""
    ssm = aws("ssm", settings.home_region)
    waited = 0.0
    while True:
        found = ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [instance_id]}])
        if any(i.get("PingStatus") == "Online" for i in found.get("InstanceInformationList", [])):
            return
        if waited >= ONLINE_WAIT_SECONDS:
            raise HostError(
                f"{instance_id} did not reach Session Manager within {ONLINE_WAIT_SECONDS} s; see its console output "
                f"(aws ec2 get-console-output --instance-id {instance_id} --region {settings.home_region})"
            )
        sleep(POLL_SECONDS)
        waited += POLL_SECONDS


def start(
    aws: AwsClients,
    settings: StageSettings,
    instance_type: str | None,
    image_parameter: str | None,
    sleep: Callable[[float], None] = time.sleep,
    bundle: Callable[[], bytes] = tools_bundle,
) -> list[str]:
    workspace = settings.workspace
    if not workspace.enabled:
        raise HostError(f"stage {settings.name} runs no model workspace: {workspace.off_reason}")
    instance_type = instance_type or workspace.host_instance_type
    if _ARM_FAMILY.match(instance_type.split(".")[0]):
        raise HostError(f"{instance_type} is a Graviton (arm64) type; the host image is x86_64")
    outputs = stack_outputs(aws, settings)
    if LAUNCH_TEMPLATE_OUTPUT not in outputs:
        raise HostError(f"{settings.name}-ModelStorage has no workspace host yet: deploy it again with this checkout")
    hosts = live_hosts(aws, settings)
    if hosts:
        instance_id = hosts[0]["InstanceId"]
        return [
            f"{instance_id} ({hosts[0].get('InstanceType', '?')}) is already {hosts[0]['State']['Name']} for stage "
            f"{settings.name}",
            f"open a shell: {_session_command(settings, instance_id)}",
        ]
    ec2, s3 = aws("ec2", settings.home_region), aws("s3", settings.home_region)
    payload = bundle()
    s3.put_object(Bucket=settings.model_bucket_name, Key=TOOLS_KEY, Body=payload, ContentType="application/gzip")
    launch = {
        "LaunchTemplate": {"LaunchTemplateId": outputs[LAUNCH_TEMPLATE_OUTPUT], "Version": "$Latest"},
        "SubnetId": outputs[SUBNET_OUTPUT],
        "InstanceType": instance_type,
        "MinCount": 1,
        "MaxCount": 1,
    }
    if image_parameter:
        launch["ImageId"] = f"resolve:ssm:{image_parameter}"
    (instance,) = ec2.run_instances(**launch)["Instances"]
    instance_id = instance["InstanceId"]
    wait_online(aws, settings, instance_id, sleep)
    return [
        f"started {instance_id} ({instance_type}) in {outputs[SUBNET_OUTPUT]}; tools staged "
        f"(s3://{settings.model_bucket_name}/{TOOLS_KEY}, {len(payload) / 1e6:.1f} MB)",
        f"open a shell: {_session_command(settings, instance_id)}",
        f"the workspace is at {MOUNT_POINT} once /run/workspace-ready exists (log: /var/log/workspace-host.log); "
        f"the host terminates itself after {workspace.host_idle_minutes} idle minutes",
    ]


def status(aws: AwsClients, settings: StageSettings) -> list[str]:
    hosts = live_hosts(aws, settings)
    if not hosts:
        return [f"no workspace host is running for stage {settings.name}"]
    return [
        f"{h['InstanceId']} {h.get('InstanceType', '?')} {h['State']['Name']} since {h['LaunchTime']:%Y-%m-%d %H:%M} UTC: "
        f"{_session_command(settings, h['InstanceId'])}"
        for h in hosts
    ]


def stop(aws: AwsClients, settings: StageSettings) -> list[str]:
    ids = [h["InstanceId"] for h in live_hosts(aws, settings)]
    if not ids:
        return [f"no workspace host is running for stage {settings.name}"]
    aws("ec2", settings.home_region).terminate_instances(InstanceIds=ids)
    return [f"terminating {', '.join(ids)} (the workspace and what it holds stay)"]


def main(argv: list[str] | None = None, aws: AwsClients | None = None, sleep: Callable[[float], None] = time.sleep,
         bundle: Callable[[], bytes] = tools_bundle) -> int:
    parser = argparse.ArgumentParser(prog="workspace-host", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", required=True)
    commands = parser.add_subparsers(dest="command", required=True)
    starting = commands.add_parser("start", help="start a host (or show the running one)")
    starting.add_argument("--instance-type", help="instead of the stage's host_instance_type (x86_64 types)")
    starting.add_argument(
        "--image-parameter",
        help="an SSM parameter naming the AMI instead of Amazon Linux 2023's, e.g. a Deep Learning AMI's for GPU work",
    )
    commands.add_parser("status", help="the stage's running hosts")
    commands.add_parser("stop", help="terminate the stage's hosts now")
    args = parser.parse_args(argv)

    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from config.stages import stage

    try:
        settings = stage(args.stage)
        aws = aws or AwsClients()
        if args.command == "start":
            lines = start(aws, settings, args.instance_type, args.image_parameter, sleep, bundle)
        elif args.command == "status":
            lines = status(aws, settings)
        else:
            lines = stop(aws, settings)
    except KeyError as e:
        message = str(e.args[0])
    except HostError as e:
        message = str(e)
    except NoCredentialsError:
        message = f"no AWS credentials: set AWS_PROFILE (or run `aws sso login`) for stage {args.stage}'s account"
    except ClientError as e:
        error = e.response.get("Error", {})
        message = f"{e.operation_name}: {error.get('Code', 'error')}: {error.get('Message', '')}"
    except BotoCoreError as e:
        message = str(e)
    else:
        print("\n".join(lines))
        return 0
    print(f"workspace-host: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
