"""Stubbed AWS accounts for bin/preflight: real boto3 clients with throwaway credentials,
each one's AWS boundary a botocore Stubber that answers exactly the calls a check makes
(and fails the test on any other). Nothing leaves the machine.

Each `answer_*` function queues what one check's calls get, for an account that passes
or fails it; `new_account` and `ready_account` queue a whole run for stage dev:

  .venv/bin/python -m tests.unit.preflight_accounts     # prints bin/preflight --stage dev against both
"""

from __future__ import annotations

import contextlib
import io
from datetime import UTC, datetime, timedelta

import boto3
from botocore.stub import Stubber

from cli.preflight import (
    CDK_BOOTSTRAP_STACK,
    CDK_BOOTSTRAP_VERSION_PARAMETER,
    EDGE_REGION,
    SERVICE_LINKED_ROLES,
    AwsClients,
    deploy_time_parameters,
    manifest_key,
    named_resources,
    stack_name,
    web_adapter_layer_arn,
)
from config.settings import StageSettings
from config.stages import STAGES

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)  # the certificate's clock in these accounts
CALLER = "arn:aws:sts::{account}:assumed-role/platform-admin/alice"
POWERTOOLS_LAYER = "arn:aws:lambda:{region}:017000801446:layer:AWSLambdaPowertoolsPythonV3-python314-arm64:18"


class StubbedAws:
    """Clients by (service, region), each with an active Stubber."""

    def __init__(self) -> None:
        self.session = boto3.session.Session(
            aws_access_key_id="AKIAPREFLIGHTTESTKEY", aws_secret_access_key="not-a-secret", region_name="us-west-2"
        )
        self.clients: dict[tuple[str, str], object] = {}
        self.stubbers: dict[tuple[str, str], Stubber] = {}

    def stub(self, service: str, region: str) -> Stubber:
        key = (service, region)
        if key not in self.stubbers:
            client = self.session.client(service, region_name=region)
            self.clients[key] = client
            self.stubbers[key] = Stubber(client)
            self.stubbers[key].activate()
        return self.stubbers[key]

    def answer(self, service: str, region: str, method: str, response: dict, params: dict | None = None) -> None:
        self.stub(service, region).add_response(method, response, params)

    def refuse(
        self, service: str, region: str, method: str, code: str, status: int = 400, params: dict | None = None
    ) -> None:
        self.stub(service, region).add_client_error(
            method, service_error_code=code, service_message=f"{code} (stubbed)", http_status_code=status,
            expected_params=params,
        )

    @property
    def aws(self) -> AwsClients:
        return AwsClients(clients=self.clients, only_given=True)

    def assert_all_answered(self) -> None:
        for stubber in self.stubbers.values():
            stubber.assert_no_pending_responses()


# --------------------------------------------------------------------------- one check each


def answer_credentials(a: StubbedAws, s: StageSettings, account: str | None = None) -> None:
    account = account or s.account
    a.answer(
        "sts", s.home_region, "get_caller_identity",
        {"UserId": "AROAEXAMPLE:alice", "Account": account, "Arn": CALLER.format(account=account)},
    )


def answer_lambda_concurrency(a: StubbedAws, s: StageSettings, *, limit: int, unreserved: int, reserved_now=None) -> None:
    a.answer(
        "lambda", s.home_region, "get_account_settings",
        {"AccountLimit": {"ConcurrentExecutions": limit, "UnreservedConcurrentExecutions": unreserved}},
    )
    params = {"FunctionName": s.origin_adapter_name}
    if reserved_now is None:
        a.refuse("lambda", s.home_region, "get_function_concurrency", "ResourceNotFoundException", 404, params)
    else:
        a.answer("lambda", s.home_region, "get_function_concurrency", {"ReservedConcurrentExecutions": reserved_now}, params)


def _quota(name: str, value: float) -> dict:
    return {"ServiceCode": "sagemaker", "QuotaName": name, "QuotaCode": "L-0000TEST", "Value": value, "Adjustable": True}


def needed_instances(s: StageSettings) -> dict[str, int]:
    """What a blue/green rollout of every endpoint needs, per instance type."""
    needed: dict[str, int] = {}
    for endpoint in s.endpoints.values():
        needed[endpoint.instance_type] = needed.get(endpoint.instance_type, 0) + endpoint.blue_green_instances
    return needed


def answer_instance_quotas(a: StubbedAws, s: StageSettings, *, applied: float | None | dict[str, float],
                           default: float = 0) -> None:
    """`applied` None: the account never changed the quotas, ListServiceQuotas leaves them
    out and their defaults come from ListAWSDefaultServiceQuotas (two pages there). A
    number applies to every instance type the stage's endpoints use; a dict names each."""
    types = list(needed_instances(s))
    other = _quota(f"{types[0]} for training job usage", 8)
    if applied is not None:
        values = applied if isinstance(applied, dict) else dict.fromkeys(types, applied)
        a.answer("service-quotas", s.home_region, "list_service_quotas",
                 {"Quotas": [other, *(_quota(f"{t} for endpoint usage", values[t]) for t in types)]},
                 {"ServiceCode": "sagemaker"})
        return
    a.answer("service-quotas", s.home_region, "list_service_quotas", {"Quotas": [other]}, {"ServiceCode": "sagemaker"})
    a.answer("service-quotas", s.home_region, "list_aws_default_service_quotas",
             {"Quotas": [other], "NextToken": "page-2"}, {"ServiceCode": "sagemaker"})
    a.answer("service-quotas", s.home_region, "list_aws_default_service_quotas",
             {"Quotas": [_quota(f"{t} for endpoint usage", default) for t in types]},
             {"ServiceCode": "sagemaker", "NextToken": "page-2"})


def _bootstrap_stack(status: str = "UPDATE_COMPLETE", policies: str = "arn:aws:iam::aws:policy/AdministratorAccess") -> dict:
    return {
        "Stacks": [
            {
                "StackName": CDK_BOOTSTRAP_STACK,
                "CreationTime": datetime(2026, 11, 2, tzinfo=UTC),
                "StackStatus": status,
                "Parameters": [{"ParameterKey": "CloudFormationExecutionPolicies", "ParameterValue": policies}],
            }
        ]
    }


def answer_bootstrap_stack(a: StubbedAws, region: str, *, present: bool, status: str = "UPDATE_COMPLETE",
                           policies: str = "arn:aws:iam::aws:policy/AdministratorAccess") -> None:
    params = {"StackName": CDK_BOOTSTRAP_STACK}
    if present:
        a.answer("cloudformation", region, "describe_stacks", _bootstrap_stack(status, policies), params)
    else:
        a.refuse("cloudformation", region, "describe_stacks", "ValidationError", 400, params)


def answer_bootstrap(a: StubbedAws, s: StageSettings, *, present: bool, version: str = "29") -> None:
    for region in (s.home_region, EDGE_REGION):
        answer_bootstrap_stack(a, region, present=present)
        if present:
            a.answer("ssm", region, "get_parameter",
                     {"Parameter": {"Name": CDK_BOOTSTRAP_VERSION_PARAMETER, "Value": version, "Type": "String"}},
                     {"Name": CDK_BOOTSTRAP_VERSION_PARAMETER})


def answer_certificate(a: StubbedAws, s: StageSettings, *, status: str = "ISSUED", domain: str | None = None,
                       days_left: int = 300, exists: bool = True) -> None:
    params = {"CertificateArn": s.domain.certificate_arn}
    if not exists:
        a.refuse("acm", EDGE_REGION, "describe_certificate", "ResourceNotFoundException", 400, params)
        return
    name = domain or "*." + s.domain.name.split(".", 1)[1]
    a.answer("acm", EDGE_REGION, "describe_certificate", {"Certificate": {
        "CertificateArn": s.domain.certificate_arn, "DomainName": name, "SubjectAlternativeNames": [name],
        "Status": status, "NotAfter": NOW + timedelta(days=days_left),
    }}, params)


def answer_deploy_time_parameters(a: StubbedAws, s: StageSettings, *, published: bool = True) -> None:
    for region, name, _ in deploy_time_parameters(s):
        if published:
            a.answer("ssm", region, "get_parameter",
                     {"Parameter": {"Name": name, "Value": POWERTOOLS_LAYER.format(region=region), "Type": "String"}},
                     {"Name": name})
        else:
            a.refuse("ssm", region, "get_parameter", "ParameterNotFound", 400, {"Name": name})


def answer_web_adapter_layer(a: StubbedAws, s: StageSettings, *, published: bool = True) -> None:
    arn = web_adapter_layer_arn(s)
    if published:
        a.answer("lambda", s.home_region, "get_layer_version_by_arn",
                 {"LayerArn": arn.rsplit(":", 1)[0], "LayerVersionArn": arn, "Version": int(arn.rsplit(":", 1)[1]),
                  "CompatibleArchitectures": ["arm64"]}, {"Arn": arn})
    else:
        a.refuse("lambda", s.home_region, "get_layer_version_by_arn", "AccessDeniedException", 403, {"Arn": arn})


def answer_service_linked_roles(a: StubbedAws, s: StageSettings, *, present: bool,
                                bootstrap: str | None = "arn:aws:iam::aws:policy/AdministratorAccess") -> None:
    """`bootstrap`: the home bootstrap's CloudFormation execution policies (None: no bootstrap)."""
    roles = list(SERVICE_LINKED_ROLES) + (["AWSServiceRoleForAmazonFSx"] if s.workspace.enabled else [])
    for role in roles:
        if present:
            a.answer("iam", s.home_region, "get_role", {"Role": {
                "Path": "/aws-service-role/", "RoleName": role, "RoleId": "AROAEXAMPLE" + "X" * 10,
                "Arn": f"arn:aws:iam::{s.account}:role/aws-service-role/{role}",
                "CreateDate": datetime(2026, 1, 1, tzinfo=UTC)}}, {"RoleName": role})
        else:
            a.refuse("iam", s.home_region, "get_role", "NoSuchEntity", 404, {"RoleName": role})
    if not present:
        answer_bootstrap_stack(a, s.home_region, present=bootstrap is not None, policies=bootstrap or "")


def answer_fixed_names(a: StubbedAws, s: StageSettings, *, deployed: tuple[str, ...] = (), taken: tuple[str, ...] = ()) -> None:
    """Stacks in `deployed` exist; names in `taken` are held by something outside them."""
    by_stack: dict[str, list] = {}
    for resource in named_resources(s):
        by_stack.setdefault(resource.stack, []).append(resource)
    for stack, resources in by_stack.items():
        region = EDGE_REGION if stack == "Edge" else s.home_region
        params = {"StackName": stack_name(s, stack)}
        if stack in deployed:
            a.answer("cloudformation", region, "describe_stacks", {"Stacks": [
                {"StackName": params["StackName"], "CreationTime": NOW, "StackStatus": "CREATE_COMPLETE"}]}, params)
            continue
        a.refuse("cloudformation", region, "describe_stacks", "ValidationError", 400, params)
        for r in resources:
            held = r.name in taken
            if r.kind == "log-group":
                groups = [{"logGroupName": r.name}] if held else [{"logGroupName": r.name + "-other"}]
                a.answer("logs", r.region, "describe_log_groups", {"logGroups": groups}, {"logGroupNamePrefix": r.name})
            elif r.kind == "lambda-function":
                if held:
                    a.answer("lambda", r.region, "get_function", {"Configuration": {"FunctionName": r.name}},
                             {"FunctionName": r.name})
                else:
                    a.refuse("lambda", r.region, "get_function", "ResourceNotFoundException", 404, {"FunctionName": r.name})
            elif r.kind == "sagemaker-endpoint":
                if held:
                    a.answer("sagemaker", r.region, "describe_endpoint", {
                        "EndpointName": r.name, "EndpointArn": f"arn:aws:sagemaker:{r.region}:{s.account}:endpoint/{r.name}",
                        "EndpointStatus": "InService", "CreationTime": NOW, "LastModifiedTime": NOW},
                        {"EndpointName": r.name})
                else:
                    a.refuse("sagemaker", r.region, "describe_endpoint", "ValidationException", 400, {"EndpointName": r.name})
            elif r.kind == "s3-bucket":
                if held:
                    a.answer("s3", r.region, "head_bucket", {}, {"Bucket": r.name})
                else:
                    a.refuse("s3", r.region, "head_bucket", "404", 404, {"Bucket": r.name})
            elif r.kind == "ssm-parameter":
                if held:
                    a.answer("ssm", r.region, "get_parameter", {"Parameter": {"Name": r.name, "Value": "x"}}, {"Name": r.name})
                else:
                    a.refuse("ssm", r.region, "get_parameter", "ParameterNotFound", 400, {"Name": r.name})
            elif r.kind == "key-value-store":
                if held:
                    a.answer("cloudfront", r.region, "describe_key_value_store", {"ETag": "E1", "KeyValueStore": {
                        "Name": r.name, "Id": "0f3c2a6e-1d2b-4c5d-8e9f-0a1b2c3d4e5f", "Comment": "",
                        "ARN": f"arn:aws:cloudfront::{s.account}:key-value-store/0f3c2a6e", "LastModifiedTime": NOW}},
                        {"Name": r.name})
                else:
                    a.refuse("cloudfront", r.region, "describe_key_value_store", "EntityNotFound", 404, {"Name": r.name})
            elif r.kind == "cloudfront-function":
                if held:
                    a.answer("cloudfront", r.region, "describe_function", {"ETag": "E1", "FunctionSummary": {
                        "Name": r.name, "FunctionConfig": {"Comment": "", "Runtime": "cloudfront-js-2.0"},
                        "FunctionMetadata": {"FunctionARN": f"arn:aws:cloudfront::{s.account}:function/{r.name}",
                                             "LastModifiedTime": NOW}}}, {"Name": r.name})
                else:
                    a.refuse("cloudfront", r.region, "describe_function", "NoSuchFunctionExists", 404, {"Name": r.name})
            else:  # pragma: no cover - a new kind needs its stubs here
                raise AssertionError(r.kind)


def answer_model_versions(a: StubbedAws, s: StageSettings, *, bucket: bool, published: bool = True) -> None:
    params = {"Bucket": s.model_bucket_name}
    if not bucket:
        a.refuse("s3", s.home_region, "head_bucket", "404", 404, params)
        return
    a.answer("s3", s.home_region, "head_bucket", {}, params)
    for model in s.pinned_models:
        key_params = {"Bucket": s.model_bucket_name, "Key": manifest_key(model)}
        if published:
            a.answer("s3", s.home_region, "head_object", {"ContentLength": 4096, "ContentType": "application/json"},
                     key_params)
        else:
            a.refuse("s3", s.home_region, "head_object", "404", 404, key_params)


# --------------------------------------------------------------------------- whole accounts


def new_account(s: StageSettings = STAGES["dev"]) -> StubbedAws:
    """A new account: Lambda's reduced concurrency (10), the GPU quota at its default 0, no
    CDK bootstrap, the certificate still waiting for DNS validation, no service-linked
    roles, nothing deployed and no model bucket yet."""
    a = StubbedAws()
    answer_credentials(a, s)
    answer_lambda_concurrency(a, s, limit=10, unreserved=10)
    answer_instance_quotas(a, s, applied=None, default=0)
    answer_bootstrap(a, s, present=False)
    answer_certificate(a, s, status="PENDING_VALIDATION")
    answer_deploy_time_parameters(a, s)
    answer_web_adapter_layer(a, s)
    answer_service_linked_roles(a, s, present=False, bootstrap=None)
    answer_fixed_names(a, s)
    answer_model_versions(a, s, bucket=False)
    return a


def ready_account(s: StageSettings = STAGES["dev"]) -> StubbedAws:
    """An account ready for the full deploy: quotas raised, both regions bootstrapped, the
    certificate issued, ModelStorage deployed and the pinned model version published."""
    a = StubbedAws()
    answer_credentials(a, s)
    answer_lambda_concurrency(a, s, limit=1000, unreserved=1000)
    answer_instance_quotas(a, s, applied=needed_instances(s))
    answer_bootstrap(a, s, present=True)
    answer_certificate(a, s)
    answer_deploy_time_parameters(a, s)
    answer_web_adapter_layer(a, s)
    answer_service_linked_roles(a, s, present=True)
    answer_fixed_names(a, s, deployed=("ModelStorage",))
    answer_model_versions(a, s, bucket=True)
    return a


def run(account: StubbedAws, stage: str = "dev") -> tuple[int, str]:
    """bin/preflight --stage STAGE against the account, in-process: (exit status, stdout)."""
    from cli.preflight import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["--stage", stage], aws=account.aws, now=NOW)
    account.assert_all_answered()
    return status, out.getvalue()


if __name__ == "__main__":
    for title, account in (("a new account", new_account()), ("a ready account", ready_account())):
        status, output = run(account)
        print(f"$ bin/preflight --stage dev     # {title} (stubbed)\n{output}(exit status {status})\n")
