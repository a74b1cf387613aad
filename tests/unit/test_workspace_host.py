"""The model workspace's way in (issue 23): the host's idle check run by bash with stand-in
pgrep, fuser and shutdown on PATH; the boot script's syntax; the publishing tools bundle
unpacked alone and publishing to a real S3 server (moto's, local_run.s3) under a Python
that sees no site-packages; bin/workspace-host start, status and stop with AWS mocked at
the boto3 boundary by botocore's Stubber; the workspace's monthly cost per stage as the
README prints it."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import uuid
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest

from cli import workspace_host
from config.aws_facts import FSX_PERSISTENT_2_USD_PER_GB_MONTH
from config.stages import STAGES
from local_run.s3 import LocalS3
from stacks.workspace_host_scripts import (
    HOST_TAG,
    IDLE_CHECK_SCRIPT,
    LAUNCH_TEMPLATE_OUTPUT,
    SUBNET_OUTPUT,
    TOOLS_KEY,
    boot_script,
)
from tests.unit.preflight_accounts import StubbedAws

ROOT = Path(__file__).resolve().parents[2]
STAGING = STAGES["staging"]


# --------------------------------------------------------------------------- idle check


@pytest.fixture
def host(tmp_path):
    """The idle check installed with stand-ins for what it asks the host: whether a
    Session Manager session or a process on the workspace exists, and shutdown."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    check = bin_dir / "workspace-idle-check"
    check.write_text(IDLE_CHECK_SCRIPT)
    log = tmp_path / "calls"
    for tool in ("pgrep", "fuser", "shutdown"):
        stand_in = bin_dir / tool
        # pgrep and fuser exit 0 ("found") when the test created the file named after them.
        answer = "exit 0" if tool == "shutdown" else f"[ -e {tmp_path}/{tool}.found ]"
        stand_in.write_text(f'#!/bin/bash\necho "{tool} $*" >> {log}\n{answer}\n')
        stand_in.chmod(0o755)
    check.chmod(0o755)

    def run(minutes_since_start: int, limit: int = 30) -> str:
        env = {
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "WORKSPACE_IDLE_STATE": str(tmp_path / "idle-since"),
            "WORKSPACE_NOW": str(1_800_000_000 + minutes_since_start * 60),
        }
        done = subprocess.run(["bash", str(check), str(limit)], env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    run.found = lambda tool, on=True: (tmp_path / f"{tool}.found").touch() if on else (tmp_path / f"{tool}.found").unlink()
    run.calls = lambda: log.read_text().splitlines() if log.exists() else []
    return run


def test_an_idle_host_shuts_down_once_idle_for_the_limit(host):
    assert host(0) == "idle for 0 of 30 min"
    assert host(29) == "idle for 29 of 30 min"
    assert host(30) == "idle for 30 min (limit 30): shutting down"
    assert host.calls()[-1] == "shutdown -h now"
    assert "pgrep -f ssm-session-worker" in host.calls() and "fuser -m /fsx" in host.calls()


def test_an_open_session_keeps_the_host_and_restarts_the_idle_clock(host):
    assert host(0) == "idle for 0 of 30 min"
    host.found("pgrep")
    assert host(25) == "busy: a Session Manager session is open"
    host.found("pgrep", on=False)
    assert host(40) == "idle for 0 of 30 min"  # counted from when the session ended
    assert not any(c.startswith("shutdown") for c in host.calls())


def test_a_job_working_on_the_workspace_keeps_the_host_without_a_session(host):
    host.found("fuser")
    assert host(0) == "busy: a process uses /fsx"
    assert host(500) == "busy: a process uses /fsx"
    assert not any(c.startswith("shutdown") for c in host.calls())


def test_the_boot_script_is_valid_bash_and_installs_the_idle_check_unchanged(tmp_path):
    script = boot_script(dns_name="fs-0123.fsx.us-west-2.amazonaws.com", mount_name="abcdefgh", bucket="b",
                         region="us-west-2", idle_minutes=45)
    path = tmp_path / "boot.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True, timeout=30).returncode == 0
    installed = script.split("<<'IDLE'\n", 1)[1].split("IDLE\n", 1)[0]
    assert installed == IDLE_CHECK_SCRIPT
    assert "ExecStart=/usr/local/sbin/workspace-idle-check 45" in script
    assert "fs-0123.fsx.us-west-2.amazonaws.com@tcp:/abcdefgh /fsx lustre" in script


# --------------------------------------------------------------------------- tools bundle


def test_the_tools_bundle_publishes_a_model_with_nothing_but_itself(tmp_path, monkeypatch):
    """What the host runs: the bundle unpacked, python -S (no site-packages: every import
    comes from the bundle), bin/model-publish against a real S3 server."""
    bundle = workspace_host.tools_bundle()
    assert len(bundle) < 40_000_000
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        names = tar.getnames()
        assert "cli/model_publish.py" in names and "site-packages/boto3/__init__.py" in names
        assert not any("__pycache__" in n for n in names)
        tar.extractall(tmp_path / "tools", filter="data")
    model = tmp_path / "prepared"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (model / "model.safetensors").write_bytes(os.urandom(300_000))
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{tmp_path / 'tools'}:{tmp_path / 'tools' / 'site-packages'}",
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }
    with LocalS3() as server:
        s3 = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
        bucket = f"models-{uuid.uuid4().hex[:12]}"
        s3.create_bucket(Bucket=bucket)
        done = subprocess.run(
            [sys.executable, "-S", "-m", "cli.model_publish", str(model), "--bucket", bucket, "--prefix",
             "models/prepared/", "--endpoint-url", server.url, "--json"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert summary["uploaded_files"] == 2
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {
        f"models/prepared/{summary['version']}/config.json",
        f"models/prepared/{summary['version']}/model.safetensors",
        f"models/prepared/_manifests/{summary['version']}.json",
    }


# --------------------------------------------------------------------------- bin/workspace-host


def _outputs(a: StubbedAws, s=STAGING, outputs=None) -> None:
    outputs = outputs if outputs is not None else {LAUNCH_TEMPLATE_OUTPUT: "lt-0123456789abcdef0", SUBNET_OUTPUT: "subnet-0aa"}
    a.answer("cloudformation", s.home_region, "describe_stacks", {"Stacks": [{
        "StackName": f"{s.name}-ModelStorage", "CreationTime": datetime(2026, 12, 1, tzinfo=UTC),
        "StackStatus": "UPDATE_COMPLETE",
        "Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in outputs.items()],
    }]}, {"StackName": f"{s.name}-ModelStorage"})


def _hosts(a: StubbedAws, instances: list[dict], s=STAGING) -> None:
    a.answer("ec2", s.home_region, "describe_instances", {"Reservations": [{"Instances": instances}] if instances else []},
             {"Filters": [{"Name": f"tag:{HOST_TAG}", "Values": [s.name]},
                          {"Name": "instance-state-name", "Values": ["pending", "running"]}]})


def _instance(instance_id="i-0abc", state="running") -> dict:
    return {"InstanceId": instance_id, "InstanceType": "m7i.xlarge", "State": {"Name": state, "Code": 16},
            "LaunchTime": datetime(2026, 12, 6, 9, 30, tzinfo=UTC)}


def _no_sleep(seconds: float) -> None:
    pytest.fail(f"waited {seconds} s where nothing should wait")


def _main(a: StubbedAws, *argv, sleeps=None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = workspace_host.main(list(argv), aws=a.aws, sleep=sleeps.append if sleeps is not None else _no_sleep,
                                     bundle=lambda: b"tools")
    a.assert_all_answered()
    return status, out.getvalue(), err.getvalue()


def test_start_stages_the_tools_launches_in_the_workspace_subnet_and_waits_for_session_manager():
    a = StubbedAws()
    _outputs(a)
    _hosts(a, [])
    a.answer("s3", "us-west-2", "put_object", {"ETag": '"1"'},
             {"Bucket": STAGING.model_bucket_name, "Key": TOOLS_KEY, "Body": b"tools", "ContentType": "application/gzip"})
    a.answer("ec2", "us-west-2", "run_instances", {"Instances": [_instance("i-0new", "pending")]}, {
        "LaunchTemplate": {"LaunchTemplateId": "lt-0123456789abcdef0", "Version": "$Latest"},
        "SubnetId": "subnet-0aa", "InstanceType": "g6e.2xlarge", "MinCount": 1, "MaxCount": 1,
        "ImageId": "resolve:ssm:/aws/service/deeplearning/ami/x86_64/dlami-test/latest/ami-id",
    })
    registered = {"Filters": [{"Key": "InstanceIds", "Values": ["i-0new"]}]}
    a.answer("ssm", "us-west-2", "describe_instance_information", {"InstanceInformationList": []}, registered)
    a.answer("ssm", "us-west-2", "describe_instance_information",
             {"InstanceInformationList": [{"InstanceId": "i-0new", "PingStatus": "Online"}]}, registered)
    sleeps: list = []
    status, out, err = _main(a, "--stage", "staging", "start", "--instance-type", "g6e.2xlarge", "--image-parameter",
                             "/aws/service/deeplearning/ami/x86_64/dlami-test/latest/ami-id", sleeps=sleeps)
    assert status == 0, err
    assert sleeps == [workspace_host.POLL_SECONDS]
    assert "started i-0new (g6e.2xlarge) in subnet-0aa" in out
    assert "open a shell: aws ssm start-session --target i-0new --region us-west-2" in out
    assert f"terminates itself after {STAGING.workspace.host_idle_minutes} idle minutes" in out


def test_start_reuses_the_host_already_running_for_the_stage():
    a = StubbedAws()
    _outputs(a)
    _hosts(a, [_instance("i-0old")])  # no upload, no launch: the Stubber has nothing else queued
    status, out, _ = _main(a, "--stage", "staging", "start")
    assert status == 0
    assert "i-0old (m7i.xlarge) is already running" in out and "--target i-0old" in out


def test_start_in_a_stage_without_the_workspace_says_why_and_calls_nothing():
    a = StubbedAws()
    status, out, err = _main(a, "--stage", "dev", "start")
    assert status == 2 and out == ""
    assert err.startswith("workspace-host: error: stage dev runs no model workspace: Dev serves versions")
    assert len(err.splitlines()) == 1


def test_start_before_model_storage_is_deployed_is_one_line():
    a = StubbedAws()
    a.refuse("cloudformation", "us-west-2", "describe_stacks", "ValidationError", 400, {"StackName": "staging-ModelStorage"})
    status, _, err = _main(a, "--stage", "staging", "start")
    assert status == 2 and err.strip() == "workspace-host: error: stack staging-ModelStorage is not deployed: " \
        "npx cdk deploy 'staging/ModelStorage'"


def test_start_refuses_an_arm64_instance_type():
    a = StubbedAws()
    status, _, err = _main(a, "--stage", "staging", "start", "--instance-type", "m7g.xlarge")
    assert status == 2 and "Graviton" in err


def test_status_and_stop_act_on_the_stages_hosts_only():
    a = StubbedAws()
    _hosts(a, [_instance("i-0abc")])
    status, out, _ = _main(a, "--stage", "staging", "status")
    assert status == 0 and out.startswith("i-0abc m7i.xlarge running since 2026-12-06 09:30 UTC: aws ssm start-session")

    a = StubbedAws()
    _hosts(a, [_instance("i-0abc"), _instance("i-0def", "pending")])
    a.answer("ec2", "us-west-2", "terminate_instances", {"TerminatingInstances": []}, {"InstanceIds": ["i-0abc", "i-0def"]})
    status, out, _ = _main(a, "--stage", "staging", "stop")
    assert status == 0 and out.strip() == "terminating i-0abc, i-0def (the workspace and what it holds stay)"


def test_bin_workspace_host_without_credentials_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    done = subprocess.run([str(ROOT / "bin" / "workspace-host"), "--stage", "prod", "status"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "workspace-host: error: no AWS credentials: set AWS_PROFILE (or run `aws sso login`) " \
        "for stage prod's account"


# --------------------------------------------------------------------------- cost


def test_the_readme_gives_each_stages_monthly_workspace_cost_from_the_settings():
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| (dev|staging|prod) \| .*\| \*\*\$([\d,.]+)\*\* \|", readme, re.M))
    assert set(rows) == set(STAGES)
    for name, settings in STAGES.items():
        assert float(rows[name].replace(",", "")) == settings.workspace.monthly_cost_usd
    assert STAGES["dev"].workspace.monthly_cost_usd == 0  # off: nothing is paid
    # 1200 GiB at 250 MB/s/TiB: 1200 x the tier's price, plus three endpoints in one AZ.
    assert STAGING.workspace.monthly_cost_usd == round(1200 * FSX_PERSISTENT_2_USD_PER_GB_MONTH[250] + 3 * 0.01 * 730, 2)
