"""bin/preflight --stage NAME: what would make the stage's first (or next) deploy fail
late, checked before `cdk deploy` spends half an hour finding out. Read-only calls with
the stage account's credentials; each check prints ok, FAIL or later (a step of the
first-deploy order still ahead), with what was found and what to do.

  bin/preflight --stage dev          # make preflight STAGE=dev
  exit status: 0 nothing failed, 1 a check failed, 2 no credentials or a bad stage

A check is a function (AwsClients, StageSettings) -> list[Finding]; CHECKS lists them in
the order they run. AwsClients (cli/aws_clients.py) hands out one boto3 client per
(service, region): tests hand in clients whose AWS boundary is botocore's Stubber. Rules and sources:
docs/decisions.md, "Preflight (issue 23)".
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version

from cli.aws_clients import AwsClients
from config.aws_facts import (
    LAMBDA_MIN_UNRESERVED_CONCURRENCY,
    LAMBDA_WEB_ADAPTER_LAYER_ARN,
    LAMBDA_WEB_ADAPTER_LAYER_VERSION,
    POWERTOOLS_LAYER_PARAMETER,
)
from config.settings import StageSettings
from lambdas.contract import API_KEY_STORE_NAME

EDGE_REGION = "us-east-1"  # CloudFront's region: the certificate, Lambda@Edge, the web ACL
OK, FAIL, LATER = "ok", "FAIL", "later"
# The CDK bootstrap every stack of this app names (the default qualifier): its version
# parameter, and the lowest version the synthesized stacks require
# (tests/infra/test_preflight_matches_templates.py reads both from the cloud assembly).
CDK_BOOTSTRAP_STACK = "CDKToolkit"
CDK_BOOTSTRAP_VERSION_PARAMETER = "/cdk-bootstrap/hnb659fds/version"
CDK_BOOTSTRAP_MIN_VERSION = 6
BOOTSTRAP_USABLE = ("CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE")
# Service Quotas: Lambda's "Concurrent executions" per region.
LAMBDA_CONCURRENCY_QUOTA_CODE = "L-B99A9384"
# Service-linked roles the deploy creates on first use (services create them with the
# deploying role's iam:CreateServiceLinkedRole): Lambda@Edge's replicator and its
# CloudFront logger (the distribution's edge function), SageMaker endpoint autoscaling,
# and FSx (the model workspace).
SERVICE_LINKED_ROLES = {
    "AWSServiceRoleForLambdaReplicator": "replicator.lambda.amazonaws.com",
    "AWSServiceRoleForCloudFrontLogger": "logger.cloudfront.amazonaws.com",
    "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint": "sagemaker.application-autoscaling.amazonaws.com",
}
FSX_SERVICE_LINKED_ROLE = ("AWSServiceRoleForAmazonFSx", "fsx.amazonaws.com")
ADMINISTRATOR_ACCESS = "policy/AdministratorAccess"
# Certificates that expire within this many days fail: a first deploy is followed by
# weeks of use before anyone looks at the certificate again.
CERTIFICATE_MIN_DAYS_LEFT = 14


class PreflightError(Exception):
    """Preflight cannot run at all (one line for the user, exit status 2)."""


@dataclass(frozen=True)
class Finding:
    status: str  # OK | FAIL | LATER
    check: str
    detail: str  # what was found
    fix: str = ""  # what to do (FAIL, LATER)


def _code(error: Exception) -> str:
    return getattr(error, "response", {}).get("Error", {}).get("Code", "")


def _regions(settings: StageSettings) -> list[str]:
    return list(dict.fromkeys((settings.home_region, EDGE_REGION)))


def _partition(region: str) -> str:
    return "aws-cn" if region.startswith("cn-") else "aws-us-gov" if region.startswith("us-gov-") else "aws"


# --------------------------------------------------------------------------- names


def stack_name(settings: StageSettings, stack: str) -> str:
    """CloudFormation's name of a stage's stack (a cdk.Stage names its stacks stage-id)."""
    return f"{settings.name}-{stack}"


@dataclass(frozen=True)
class NamedResource:
    """A resource the stacks create under a fixed name: creating it fails when something
    outside the stack already holds the name."""

    stack: str
    region: str
    kind: str  # a key of _EXISTS
    name: str


def named_resources(settings: StageSettings) -> list[NamedResource]:
    """Every fixed name in the stage's templates (tests/infra/test_preflight_matches_templates.py
    compares this list with the synthesized templates, both ways)."""
    home, stage = settings.home_region, settings.name
    edge_function = settings.cache_key_function_name
    found = [
        NamedResource("ModelStorage", home, "s3-bucket", settings.model_bucket_name),
        *(
            [NamedResource("ModelStorage", home, "log-group", settings.workspace_log_group_name)]
            if settings.workspace.enabled
            else []
        ),
        *(NamedResource("Inference", home, "sagemaker-endpoint", name) for name in settings.endpoints),
        *(NamedResource("Inference", home, "log-group", f"/aws/sagemaker/Endpoints/{name}") for name in settings.endpoints),
        NamedResource("Inference", home, "lambda-function", settings.origin_adapter_name),
        NamedResource("Edge", EDGE_REGION, "lambda-function", edge_function),
        NamedResource("Edge", EDGE_REGION, "log-group", f"/aws/lambda/{EDGE_REGION}.{edge_function}"),
        NamedResource("Edge", EDGE_REGION, "ssm-parameter", f"/cdk/EdgeFunctionArn/{home}/{stage}/Cdn/CacheKeyFunction"),
        *(
            [NamedResource("Edge", EDGE_REGION, "log-group", settings.waf_log_group_name)]
            if settings.rate_limits is not None
            else []
        ),
        NamedResource("Cdn", EDGE_REGION, "key-value-store", API_KEY_STORE_NAME.format(stage=stage)),
        NamedResource("Cdn", EDGE_REGION, "cloudfront-function", settings.api_key_check_name),
        NamedResource("Cdn", EDGE_REGION, "cloudfront-function", settings.cache_read_check_name),
    ]
    return found


def deploy_time_parameters(settings: StageSettings) -> list[tuple[str, str, str]]:
    """(region, name, what) of the SSM parameters the stacks resolve at deploy time, besides
    the CDK bootstrap version (its own check). Compared with the templates' SSM-typed
    parameters by tests/infra/test_preflight_matches_templates.py."""
    powertools = POWERTOOLS_LAYER_PARAMETER.format(
        architecture="arm64", runtime="python3.14", version=version("aws-lambda-powertools")
    )
    return [(settings.home_region, powertools, "Powertools layer of the origin adapter")]


def web_adapter_layer_arn(settings: StageSettings) -> str:
    region = settings.home_region
    return LAMBDA_WEB_ADAPTER_LAYER_ARN.format(
        partition=_partition(region), region=region, version=LAMBDA_WEB_ADAPTER_LAYER_VERSION
    )


def manifest_key(model) -> str:
    """Where bin/model-publish writes a version's manifest: {base}_manifests/{version}.json,
    the base being the model prefix without its version (docs/decisions.md, "Publishing")."""
    from cli.model_publish import MANIFESTS_DIR

    versioned = model.s3_prefix.rstrip("/")
    base = versioned.rsplit("/", 1)[0] + "/"
    return f"{base}{MANIFESTS_DIR}{model.model_version}.json"


# --------------------------------------------------------------------------- checks


def check_credentials(aws: AwsClients, settings: StageSettings) -> list[Finding]:
    identity = aws("sts", settings.home_region).get_caller_identity()
    if identity["Account"] != settings.account:
        return [
            Finding(
                FAIL,
                "credentials",
                f"these credentials are for account {identity['Account']} ({identity['Arn']}); stage "
                f"{settings.name} deploys to {settings.account}",
                f"use credentials of account {settings.account} (AWS_PROFILE, aws sso login), or set the stage's "
                "account in config/stages.py",
            )
        ]
    return [Finding(OK, "credentials", f"account {identity['Account']} as {identity['Arn']}")]


def check_lambda_concurrency(aws: AwsClients, settings: StageSettings) -> list[Finding]:
    """The origin adapter's reservation must leave Lambda's minimum unreserved in the home
    region, after what the account's other functions reserve (Lambda answers
    PutFunctionConcurrency with InvalidParameterValueException otherwise, late in the
    Inference stack)."""
    region, lambda_ = settings.home_region, aws("lambda", settings.home_region)
    limit = lambda_.get_account_settings()["AccountLimit"]
    total, unreserved = limit["ConcurrentExecutions"], limit["UnreservedConcurrentExecutions"]
    try:
        current = lambda_.get_function_concurrency(FunctionName=settings.origin_adapter_name).get(
            "ReservedConcurrentExecutions", 0
        )
    except lambda_.exceptions.ResourceNotFoundException:
        current = 0  # not deployed yet
    reserve = settings.adapter_reserved_concurrency  # every endpoint's fleet, as the Inference stack reserves
    others = total - unreserved - current
    left = unreserved + current - reserve
    found = (
        f"{region}: account limit {total}, {unreserved} unreserved (other functions reserve {others}); the origin "
        f"adapter reserves {reserve}, leaving {left} where Lambda keeps {LAMBDA_MIN_UNRESERVED_CONCURRENCY}"
    )
    if total < settings.lambda_concurrency_quota:
        found += f"; settings declare lambda_concurrency_quota={settings.lambda_concurrency_quota}, above the account's"
    if left >= LAMBDA_MIN_UNRESERVED_CONCURRENCY:
        return [Finding(OK, "lambda concurrency", found)]
    wanted = total + LAMBDA_MIN_UNRESERVED_CONCURRENCY - left
    return [
        Finding(
            FAIL,
            "lambda concurrency",
            found,
            f'request "Concurrent executions" of at least {wanted} in {region} (new accounts start lower and AWS '
            f"raises it with use): aws service-quotas request-service-quota-increase --service-code lambda "
            f"--quota-code {LAMBDA_CONCURRENCY_QUOTA_CODE} --desired-value {wanted} --region {region}; then declare "
            f"it in lambda_concurrency_quota",
        )
    ]


def _sagemaker_quotas(aws: AwsClients, region: str, names: set[str]) -> dict[str, float]:
    """Applied values of the named SageMaker quotas, the defaults for those never changed
    (ListServiceQuotas leaves out quotas that have no applied value)."""
    quotas = aws("service-quotas", region)
    found: dict[str, float] = {}
    for lister in ("list_service_quotas", "list_aws_default_service_quotas"):
        for page in quotas.get_paginator(lister).paginate(ServiceCode="sagemaker"):
            for quota in page["Quotas"]:
                if quota["QuotaName"] in names and quota["QuotaName"] not in found:
                    found[quota["QuotaName"]] = quota["Value"]
        if set(found) == names:
            break
    return found


def check_instance_quotas(aws: AwsClients, settings: StageSettings) -> list[Finding]:
    """Blue/green rollouts provision the new fleet beside the old one at the retained count:
    2 x max_instances of each endpoint, summed per instance type (one deploy may roll out
    every endpoint at once)."""
    region = settings.home_region
    needed: dict[str, int] = {}
    for endpoint in settings.endpoints.values():
        needed[endpoint.instance_type] = needed.get(endpoint.instance_type, 0) + endpoint.blue_green_instances
    names = {f"{instance_type} for endpoint usage": instance_type for instance_type in needed}
    values = _sagemaker_quotas(aws, region, set(names))
    findings = []
    for name, instance_type in names.items():
        need = needed[instance_type]
        what = f"{region}: {name}"
        if name not in values:
            findings.append(
                Finding(
                    FAIL,
                    "endpoint instances",
                    f"{what}: no such quota, {instance_type} is not offered for endpoints in {region}",
                    "pick an instance type SageMaker hosts in this region, or another home region",
                )
            )
        elif values[name] < need:
            findings.append(
                Finding(
                    FAIL,
                    "endpoint instances",
                    f"{what} is {values[name]:g}; rollouts need {need} (2 x max_instances, blue/green)",
                    f'request "{name}" of at least {need} in Service Quotas ({region}), on top of what other '
                    "endpoints of the account run",
                )
            )
        else:
            findings.append(
                Finding(OK, "endpoint instances", f"{what} is {values[name]:g}; rollouts need {need} (2 x max_instances)")
            )
    return findings


def _bootstrap_stack(aws: AwsClients, region: str) -> dict | None:
    cloudformation = aws("cloudformation", region)
    try:
        return cloudformation.describe_stacks(StackName=CDK_BOOTSTRAP_STACK)["Stacks"][0]
    except cloudformation.exceptions.ClientError as e:
        if _code(e) == "ValidationError":  # "Stack with id CDKToolkit does not exist"
            return None
        raise


def check_bootstrap(aws: AwsClients, settings: StageSettings) -> list[Finding]:
    """Every stack deploys through the bootstrap's roles and checks its version parameter
    (the templates' BootstrapVersion), in the home region and in us-east-1."""
    findings = []
    bootstrap = f"npx cdk bootstrap aws://{settings.account}/{settings.home_region} aws://{settings.account}/{EDGE_REGION}"
    for region in _regions(settings):
        stack = _bootstrap_stack(aws, region)
        if stack is None:
            findings.append(Finding(FAIL, "cdk bootstrap", f"{region}: no {CDK_BOOTSTRAP_STACK} stack", bootstrap))
            continue
        if stack["StackStatus"] not in BOOTSTRAP_USABLE:
            findings.append(
                Finding(FAIL, "cdk bootstrap", f"{region}: {CDK_BOOTSTRAP_STACK} is {stack['StackStatus']}", bootstrap)
            )
            continue
        ssm = aws("ssm", region)
        try:
            value = ssm.get_parameter(Name=CDK_BOOTSTRAP_VERSION_PARAMETER)["Parameter"]["Value"]
        except ssm.exceptions.ParameterNotFound:
            value = "missing"
        if not value.isdigit() or int(value) < CDK_BOOTSTRAP_MIN_VERSION:
            findings.append(
                Finding(
                    FAIL,
                    "cdk bootstrap",
                    f"{region}: {CDK_BOOTSTRAP_VERSION_PARAMETER} is {value}; the stacks need {CDK_BOOTSTRAP_MIN_VERSION} "
                    "or newer",
                    bootstrap,
                )
            )
            continue
        findings.append(Finding(OK, "cdk bootstrap", f"{region}: {CDK_BOOTSTRAP_STACK} {stack['StackStatus']}, version {value}"))
    return findings


def _covers(pattern: str, domain: str) -> bool:
    """A certificate name covers a domain: exactly, or as a wildcard for one label."""
    pattern, domain = pattern.lower().rstrip("."), domain.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = domain.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == domain


def check_certificate(aws: AwsClients, settings: StageSettings, now: datetime | None = None) -> list[Finding]:
    """CloudFront takes its certificate from ACM in us-east-1 only; it must be issued,
    cover the stage's domain and not be about to expire."""
    domain, arn = settings.domain.name, settings.domain.certificate_arn
    acm = aws("acm", EDGE_REGION)
    try:
        certificate = acm.describe_certificate(CertificateArn=arn)["Certificate"]
    except acm.exceptions.ResourceNotFoundException:
        return [
            Finding(
                FAIL,
                "certificate",
                f"{arn}: not found in {EDGE_REGION} of account {settings.account}",
                f"request one for {domain} in {EDGE_REGION} (aws acm request-certificate --region {EDGE_REGION} "
                f"--domain-name {domain} --validation-method DNS) and set it in the stage's CustomDomain",
            )
        ]
    names = [certificate["DomainName"], *certificate.get("SubjectAlternativeNames", [])]
    problems = []
    if certificate["Status"] != "ISSUED":
        problems.append(f"status {certificate['Status']}")
    if not any(_covers(name, domain) for name in names):
        problems.append(f"covers {', '.join(dict.fromkeys(names))}, not {domain}")
    not_after = certificate.get("NotAfter")
    if not_after is not None:
        days = (not_after - (now or datetime.now(UTC))).days
        if days < CERTIFICATE_MIN_DAYS_LEFT:
            problems.append(f"expires in {days} days")
    if problems:
        return [
            Finding(
                FAIL,
                "certificate",
                f"{arn}: {'; '.join(problems)}",
                f"issue a certificate for {domain} in {EDGE_REGION} (DNS validation completes it) and set its ARN "
                "in the stage's CustomDomain",
            )
        ]
    return [Finding(OK, "certificate", f"{domain}: ISSUED in {EDGE_REGION} ({certificate['DomainName']})")]


def check_deploy_time_parameters(aws: AwsClients, settings: StageSettings) -> list[Finding]:
    """The SSM parameters CloudFormation resolves while deploying, and the layers they name."""
    findings = []
    for region, name, what in deploy_time_parameters(settings):
        ssm = aws("ssm", region)
        try:
            value = ssm.get_parameter(Name=name)["Parameter"]["Value"]
        except ssm.exceptions.ParameterNotFound:
            findings.append(
                Finding(
                    FAIL,
                    "deploy-time parameters",
                    f"{region}: {name} ({what}) does not exist",
                    f"pin a release AWS publishes there (aws ssm get-parameters-by-path --region {region} --path "
                    f"{name.rsplit('/', 1)[0]}) in requirements.txt",
                )
            )
            continue
        findings.append(Finding(OK, "deploy-time parameters", f"{region}: {name} = {value}"))
    return findings


def check_web_adapter_layer(aws: AwsClients, settings: StageSettings) -> list[Finding]:
    """Lambda Web Adapter's public layer, by ARN: published per region by its account."""
    arn, lambda_ = web_adapter_layer_arn(settings), aws("lambda", settings.home_region)
    try:
        layer = lambda_.get_layer_version_by_arn(Arn=arn)
    except lambda_.exceptions.ClientError as e:
        if _code(e) not in ("ResourceNotFoundException", "AccessDeniedException"):
            raise
        return [
            Finding(
                FAIL,
                "web adapter layer",
                f"{arn}: {_code(e)}",
                "Lambda Web Adapter publishes no such layer version in this region: pick a home region it serves or "
                "the version it publishes there (LAMBDA_WEB_ADAPTER_LAYER_VERSION)",
            )
        ]
    architectures = layer.get("CompatibleArchitectures", [])
    if architectures and "arm64" not in architectures:
        return [Finding(FAIL, "web adapter layer", f"{arn}: for {architectures}, not arm64", "use the arm64 layer")]
    return [Finding(OK, "web adapter layer", f"{arn}")]


def check_service_linked_roles(aws: AwsClients, settings: StageSettings) -> list[Finding]:
    """Services create their service-linked role on first use with the deploying role's
    iam:CreateServiceLinkedRole: CDK's default bootstrap deploys as AdministratorAccess; a
    bootstrap with narrower execution policies fails late (e.g. at the distribution's
    Lambda@Edge association) unless the roles exist already."""
    roles = dict(SERVICE_LINKED_ROLES)
    if settings.workspace.enabled:
        roles[FSX_SERVICE_LINKED_ROLE[0]] = FSX_SERVICE_LINKED_ROLE[1]
    iam = aws("iam", settings.home_region)
    missing = []
    for role, service in roles.items():
        try:
            iam.get_role(RoleName=role)
        except iam.exceptions.NoSuchEntityException:
            missing.append((role, service))
    if not missing:
        return [Finding(OK, "service-linked roles", f"{len(roles)} present")]
    stack = _bootstrap_stack(aws, settings.home_region)
    policies = next(
        (p["ParameterValue"] for p in (stack or {}).get("Parameters", []) if p["ParameterKey"] == "CloudFormationExecutionPolicies"),
        "",
    )
    names = ", ".join(role for role, _ in missing)
    if ADMINISTRATOR_ACCESS in policies:
        return [
            Finding(
                OK,
                "service-linked roles",
                f"{names} missing; the deploy creates them (CloudFormation's execution role has AdministratorAccess)",
            )
        ]
    create = "; ".join(f"aws iam create-service-linked-role --aws-service-name {service}" for _, service in missing)
    return [
        Finding(
            FAIL,
            "service-linked roles",
            f"{names} missing, and CloudFormation's execution policies ({policies or 'bootstrap not found'}) may not "
            "create them",
            f"create them once: {create}",
        )
    ]


def _exists(aws: AwsClients, resource: NamedResource) -> bool:
    client = aws(_EXISTS[resource.kind][0], resource.region)
    return _EXISTS[resource.kind][1](client, resource.name)


def _log_group_exists(logs, name: str) -> bool:
    groups = logs.describe_log_groups(logGroupNamePrefix=name)["logGroups"]
    return any(g["logGroupName"] == name for g in groups)


def _call_finds(call: Callable[[], object], missing: Iterable[str]) -> bool:
    try:
        call()
    except Exception as e:  # noqa: BLE001 - botocore's error classes are per client; matched by code
        if _code(e) in missing:
            return False
        raise
    return True


_EXISTS: dict[str, tuple[str, Callable[[object, str], bool]]] = {
    "log-group": ("logs", _log_group_exists),
    "lambda-function": (
        "lambda",
        lambda c, name: _call_finds(lambda: c.get_function(FunctionName=name), ("ResourceNotFoundException",)),
    ),
    "sagemaker-endpoint": (
        # DescribeEndpoint answers a missing endpoint with ValidationException.
        "sagemaker",
        lambda c, name: _call_finds(lambda: c.describe_endpoint(EndpointName=name), ("ValidationException",)),
    ),
    "s3-bucket": ("s3", lambda c, name: _call_finds(lambda: c.head_bucket(Bucket=name), ("404", "NoSuchBucket"))),
    "ssm-parameter": (
        "ssm",
        lambda c, name: _call_finds(lambda: c.get_parameter(Name=name), ("ParameterNotFound",)),
    ),
    "key-value-store": (
        "cloudfront",
        lambda c, name: _call_finds(lambda: c.describe_key_value_store(Name=name), ("EntityNotFound",)),
    ),
    "cloudfront-function": (
        "cloudfront",
        lambda c, name: _call_finds(lambda: c.describe_function(Name=name), ("NoSuchFunctionExists",)),
    ),
}


def check_fixed_names(aws: AwsClients, settings: StageSettings) -> list[Finding]:
    """A stack not deployed yet creates its named resources; one that something else (an
    earlier deploy's retained bucket, a log group the service created on its own) holds
    already fails the create. Stacks that exist own their names: not checked."""
    by_stack: dict[str, list[NamedResource]] = {}
    for resource in named_resources(settings):
        by_stack.setdefault(resource.stack, []).append(resource)
    taken, checked = [], 0
    for stack, resources in by_stack.items():
        region = {"Edge": EDGE_REGION}.get(stack, settings.home_region)
        cloudformation = aws("cloudformation", region)
        try:
            cloudformation.describe_stacks(StackName=stack_name(settings, stack))
            continue  # deployed: the stack holds its names
        except cloudformation.exceptions.ClientError as e:
            if _code(e) != "ValidationError":
                raise
        for resource in resources:
            checked += 1
            if _exists(aws, resource):
                taken.append(resource)
    if taken:
        names = "; ".join(f"{r.kind} {r.name} ({r.region})" for r in taken)
        return [
            Finding(
                FAIL,
                "fixed names",
                f"held outside the stacks that create them: {names}",
                "delete them (a log group takes its logs with it) or bring them in with `cdk import`, then deploy",
            )
        ]
    return [Finding(OK, "fixed names", f"{checked} names of stacks not deployed yet are free")]


def check_model_versions(aws: AwsClients, settings: StageSettings) -> list[Finding]:
    """The endpoint loads s3://<model bucket>/<s3_prefix> when it is created or updated and
    fails without it: every version the stage pins must be published (its manifest
    written, bin/model-publish's last step)."""
    bucket, s3 = settings.model_bucket_name, aws("s3", settings.home_region)
    try:
        s3.head_bucket(Bucket=bucket)
    except s3.exceptions.ClientError as e:
        if _code(e) in ("404", "NoSuchBucket"):
            return [
                Finding(
                    LATER,
                    "model versions",
                    f"model bucket {bucket} does not exist yet",
                    f"deploy it first: npx cdk deploy '{settings.name}/ModelStorage'; then publish and pin: "
                    f"bin/model-publish <model dir> --stage {settings.name} --pin",
                )
            ]
        if _code(e) in ("403", "AccessDenied"):
            return [
                Finding(
                    FAIL,
                    "model versions",
                    f"model bucket {bucket}: access denied (another account holds the name, or these credentials "
                    "may not read it)",
                    "bucket names are global: if another account owns it, change the stage's name or account; else "
                    "grant s3:ListBucket on it",
                )
            ]
        raise
    findings = []
    for model in settings.pinned_models:
        key = manifest_key(model)
        try:
            s3.head_object(Bucket=bucket, Key=key)
        except s3.exceptions.ClientError as e:
            if _code(e) not in ("404", "NoSuchKey"):
                raise
            findings.append(
                Finding(
                    FAIL,
                    "model versions",
                    f"{model.model_id} {model.model_version}: s3://{bucket}/{key} does not exist (not published)",
                    f"bin/model-publish <model dir> --stage {settings.name} --pin (it prints the version it publishes)",
                )
            )
            continue
        findings.append(Finding(OK, "model versions", f"{model.model_id} {model.model_version} published"))
    return findings


CHECKS: tuple[tuple[str, Callable[[AwsClients, StageSettings], list[Finding]]], ...] = (
    ("credentials", check_credentials),
    ("lambda concurrency", check_lambda_concurrency),
    ("endpoint instances", check_instance_quotas),
    ("cdk bootstrap", check_bootstrap),
    ("certificate", check_certificate),
    ("deploy-time parameters", check_deploy_time_parameters),
    ("web adapter layer", check_web_adapter_layer),
    ("service-linked roles", check_service_linked_roles),
    ("fixed names", check_fixed_names),
    ("model versions", check_model_versions),
)


# --------------------------------------------------------------------------- running


def run_checks(aws: AwsClients, settings: StageSettings, checks=CHECKS) -> list[Finding]:
    """Every check in order. A check AWS refuses (AccessDenied, throttled, ...) is a FAIL
    of its own; missing credentials stop everything (PreflightError). Wrong credentials
    (another account) stop after the first check: nothing else would describe the stage."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

    findings: list[Finding] = []
    for name, check in checks:
        try:
            found = check(aws, settings)
        except (NoCredentialsError, PartialCredentialsError):
            raise PreflightError(
                f"no AWS credentials for stage {settings.name}: set AWS_PROFILE (or run `aws sso login`) for account "
                f"{settings.account}"
            ) from None
        except ClientError as e:
            error = e.response.get("Error", {})
            found = [
                Finding(
                    FAIL,
                    name,
                    f"{e.operation_name}: {error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": "),
                    "preflight needs read access to the account (the ReadOnlyAccess policy covers every call)",
                )
            ]
        except BotoCoreError as e:
            found = [Finding(FAIL, name, str(e), "check the network and the region, then run preflight again")]
        findings.extend(found)
        if name == "credentials" and any(f.status == FAIL for f in found):
            break
    return findings


def report(settings: StageSettings, findings: list[Finding]) -> str:
    width = max(len(f.check) for f in findings)
    lines = [f"preflight {settings.name}: account {settings.account}, {' and '.join(_regions(settings))}"]
    for f in findings:
        lines.append(f"{f.status:<5} {f.check:<{width}}  {f.detail}")
        if f.fix:
            lines.append(f"{'':<5} {'':<{width}}  -> {f.fix}")
    counts = {s: sum(f.status == s for f in findings) for s in (FAIL, LATER, OK)}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    verdict = (
        f"fix each FAIL before `make deploy STAGE={settings.name}`"
        if counts[FAIL]
        else "ready for the next step of the first-deploy order (README)"
    )
    lines.append(f"{summary}: {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, aws: AwsClients | None = None, now: datetime | None = None) -> int:
    parser = argparse.ArgumentParser(prog="preflight", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", required=True, help="the stage to check (config/stages.py)")
    args = parser.parse_args(argv)
    from config.stages import stage

    try:
        settings = stage(args.stage)
    except KeyError as e:
        print(f"preflight: error: {e.args[0]}", file=sys.stderr)
        return 2
    checks = CHECKS
    if now is not None:  # tests pin the certificate's clock
        checks = tuple((n, (lambda a, s: check_certificate(a, s, now)) if c is check_certificate else c) for n, c in CHECKS)
    try:
        findings = run_checks(aws or AwsClients(), settings, checks)
    except PreflightError as e:
        print(f"preflight: error: {e}", file=sys.stderr)
        return 2
    print(report(settings, findings))
    return 1 if any(f.status == FAIL for f in findings) else 0


if __name__ == "__main__":
    raise SystemExit(main())
