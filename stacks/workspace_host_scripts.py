"""What runs on a workspace host (README, "The model workspace"): its boot script and the
idle check that shuts it down. Pure Python, no CDK: the Model storage stack writes them
into the host's launch template, bin/workspace-host names the tools object they fetch,
and tests run the idle check under bash.

The host lives in an isolated subnet: no route out but the S3 gateway endpoint (Amazon
Linux 2023's package repositories are S3 buckets, reached through it) and the Session
Manager endpoints. bin/workspace-host stages this repository's publishing tools in the
model bucket before it starts a host; the boot script unpacks them.
"""

from __future__ import annotations

# Where the workspace is mounted on a host, and where the tools bin/workspace-host stages
# land (outside models/, so the data repository association never imports them).
MOUNT_POINT = "/fsx"
TOOLS_KEY = "_workspace/tools.tar.gz"
TOOLS_DIR = "/opt/inference-cache"
# The tag bin/workspace-host finds a stage's hosts by (value: the stage's name), and the
# ModelStorage stack's outputs it launches them with.
HOST_TAG = "inference-cache:workspace-host"
LAUNCH_TEMPLATE_OUTPUT = "WorkspaceHostLaunchTemplateId"
SUBNET_OUTPUT = "WorkspaceHostSubnetId"
# Amazon Linux 2023, resolved by EC2 at each launch: every host boots the current AMI.
HOST_IMAGE_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
# How often the idle check runs.
IDLE_CHECK_EVERY = "5min"

# Idle: no Session Manager session and no process with a file open on (or its working
# directory in) the workspace, for IDLE_MINUTES in a row. A job started with nohup keeps
# the host up while it works on the workspace; a forgotten shell does not. The host's
# shutdown behaviour is "terminate": what it prepared is on Lustre (and, under /fsx/models,
# exported to the bucket), nothing is lost with it. WORKSPACE_NOW and WORKSPACE_IDLE_STATE
# are for tests.
IDLE_CHECK_SCRIPT = r"""#!/bin/bash
# workspace-idle-check IDLE_MINUTES: shut this host down once idle that long.
set -u
idle_minutes=${1:?usage: workspace-idle-check IDLE_MINUTES}
state=${WORKSPACE_IDLE_STATE:-/run/workspace-idle-since}
mount_point=${WORKSPACE_MOUNT:-__MOUNT_POINT__}
now=${WORKSPACE_NOW:-$(date +%s)}
busy=""
if pgrep -f ssm-session-worker >/dev/null 2>&1; then
  busy="a Session Manager session is open"
elif fuser -m "$mount_point" >/dev/null 2>&1; then
  busy="a process uses $mount_point"
fi
if [ -n "$busy" ]; then
  rm -f "$state"
  echo "busy: $busy"
  exit 0
fi
[ -s "$state" ] || echo "$now" > "$state"
since=$(cat "$state")
idle=$(( (now - since) / 60 ))
if [ "$idle" -ge "$idle_minutes" ]; then
  echo "idle for $idle min (limit $idle_minutes): shutting down"
  shutdown -h now
else
  echo "idle for $idle of $idle_minutes min"
fi
""".replace("__MOUNT_POINT__", MOUNT_POINT)


def boot_script(*, dns_name: str, mount_name: str, bucket: str, region: str, idle_minutes: int) -> str:
    """The host's user data. Any value may be a CDK token (the file system's DNS and mount
    names are known at deploy time only)."""
    return f"""#!/bin/bash
# Workspace host: the Lustre client, the workspace at {MOUNT_POINT}, this repository's
# publishing tools, and the idle check. Log: /var/log/workspace-host.log.
set -euo pipefail
exec > >(tee -a /var/log/workspace-host.log) 2>&1
# The idle check first: whatever fails below, the host still shuts itself down.
cat > /usr/local/sbin/workspace-idle-check <<'IDLE'
{IDLE_CHECK_SCRIPT}IDLE
chmod 755 /usr/local/sbin/workspace-idle-check
cat > /etc/systemd/system/workspace-idle.service <<'UNIT'
[Unit]
Description=Shut the workspace host down after {idle_minutes} idle minutes
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/workspace-idle-check {idle_minutes}
UNIT
cat > /etc/systemd/system/workspace-idle.timer <<'UNIT'
[Unit]
Description=Check every {IDLE_CHECK_EVERY} whether the workspace host is idle
[Timer]
OnBootSec={IDLE_CHECK_EVERY}
OnUnitActiveSec={IDLE_CHECK_EVERY}
[Install]
WantedBy=timers.target
UNIT
systemctl daemon-reload
systemctl enable --now workspace-idle.timer
dnf install -y lustre-client python3.11 psmisc
mkdir -p {MOUNT_POINT}
echo "{dns_name}@tcp:/{mount_name} {MOUNT_POINT} lustre defaults,relatime,flock,_netdev,x-systemd.automount,x-systemd.requires=network.service 0 0" >> /etc/fstab
mount {MOUNT_POINT}
mkdir -p {TOOLS_DIR}
aws s3 cp --region {region} "s3://{bucket}/{TOOLS_KEY}" - | tar -xz -C {TOOLS_DIR}
cat > /usr/local/bin/model-publish <<'WRAPPER'
#!/bin/bash
PYTHONPATH={TOOLS_DIR}:{TOOLS_DIR}/site-packages exec python3.11 -m cli.model_publish "$@"
WRAPPER
chmod 755 /usr/local/bin/model-publish
touch /run/workspace-ready
echo "workspace mounted at {MOUNT_POINT}; tools in {TOOLS_DIR}"
"""
