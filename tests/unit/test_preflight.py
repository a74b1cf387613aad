"""bin/preflight: one test per check each way (passes, fails), and the command's contract
(exit status, one-line errors, a whole run against a new account and a ready one).

AWS is mocked at the boto3 boundary only, with botocore's Stubber: every client is a real
boto3 client whose calls are answered by a Stubber that also checks each call's
parameters and fails on any call not queued (tests/unit/preflight_accounts.py). The
entry point runs for real in a subprocess where it must fail without credentials."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from cli import preflight
from cli.preflight import FAIL, LATER, OK, check_certificate, run_checks
from config.settings import CustomDomain
from config.stages import STAGES
from tests.unit import preflight_accounts as accounts
from tests.unit.preflight_accounts import NOW, StubbedAws

ROOT = Path(__file__).resolve().parents[2]
DEV = STAGES["dev"]
PROD = STAGES["prod"]


def _check(check, answer, settings=DEV, **kwargs) -> list:
    account = StubbedAws()
    answer(account, settings, **kwargs)
    findings = check(account.aws, settings)
    account.assert_all_answered()
    return findings


def _statuses(findings) -> list[str]:
    return [f.status for f in findings]


# --------------------------------------------------------------------------- credentials


def test_credentials_of_the_stage_account_pass():
    (finding,) = _check(preflight.check_credentials, accounts.answer_credentials)
    assert finding.status == OK and DEV.account in finding.detail


def test_credentials_of_another_account_fail_and_stop_the_run():
    account = StubbedAws()
    accounts.answer_credentials(account, DEV, account="999999999999")
    findings = run_checks(account.aws, DEV)  # only the credentials check may call AWS
    account.assert_all_answered()
    (finding,) = findings
    assert finding.status == FAIL and "999999999999" in finding.detail and "AWS_PROFILE" in finding.fix


# --------------------------------------------------------------------------- lambda concurrency


def test_lambda_concurrency_passes_when_the_reservation_leaves_the_minimum_unreserved():
    # dev reserves 48 (the LLM's and the embeddings model's fleets): 148 unreserved leaves exactly Lambda's 100.
    (finding,) = _check(preflight.check_lambda_concurrency, accounts.answer_lambda_concurrency, limit=148, unreserved=148)
    assert finding.status == OK and "leaving 100" in finding.detail


def test_lambda_concurrency_counts_the_adapters_own_current_reservation_back():
    # A redeploy: the adapter already holds 48, so the 152 unreserved + 48 is what it may take.
    (finding,) = _check(
        preflight.check_lambda_concurrency, accounts.answer_lambda_concurrency, limit=200, unreserved=152, reserved_now=48
    )
    assert finding.status == OK and "other functions reserve 0" in finding.detail


def test_lambda_concurrency_fails_on_a_new_accounts_reduced_quota_and_says_what_to_request():
    (finding,) = _check(preflight.check_lambda_concurrency, accounts.answer_lambda_concurrency, limit=10, unreserved=10)
    assert finding.status == FAIL
    assert "account limit 10" in finding.detail and "reserves 48" in finding.detail
    assert "--quota-code L-B99A9384 --desired-value 148 --region us-west-2" in finding.fix


def test_lambda_concurrency_fails_when_other_functions_took_the_room():
    # The account has 1000, but other functions reserve 890: 110 - 48 leaves 62 < 100.
    (finding,) = _check(preflight.check_lambda_concurrency, accounts.answer_lambda_concurrency, limit=1000, unreserved=110)
    assert finding.status == FAIL and "other functions reserve 890" in finding.detail
    assert "--desired-value 1038" in finding.fix


# --------------------------------------------------------------------------- instance quotas


def test_instance_quota_of_twice_max_instances_passes_for_each_instance_type():
    # dev: the LLM on ml.g5.2xlarge and the embeddings model on ml.m5.xlarge, each at most 2 instances.
    llm, embeddings = _check(preflight.check_instance_quotas, accounts.answer_instance_quotas,
                             applied={"ml.g5.2xlarge": 4, "ml.m5.xlarge": 4})
    assert llm.status == OK and "ml.g5.2xlarge for endpoint usage is 4; rollouts need 4" in llm.detail
    assert embeddings.status == OK and "ml.m5.xlarge for endpoint usage is 4; rollouts need 4" in embeddings.detail


def test_instance_quota_below_twice_max_instances_fails_from_the_default_listing():
    # Never changed: not in ListServiceQuotas; its default (0) is on the second page of defaults.
    llm, embeddings = _check(preflight.check_instance_quotas, accounts.answer_instance_quotas, applied=None, default=0)
    assert llm.status == FAIL and "is 0; rollouts need 4" in llm.detail
    assert '"ml.g5.2xlarge for endpoint usage" of at least 4' in llm.fix
    assert embeddings.status == FAIL and '"ml.m5.xlarge for endpoint usage" of at least 4' in embeddings.fix


def test_one_instance_type_short_fails_only_that_type():
    llm, embeddings = _check(preflight.check_instance_quotas, accounts.answer_instance_quotas,
                             applied={"ml.g5.2xlarge": 4, "ml.m5.xlarge": 3})
    assert llm.status == OK
    assert embeddings.status == FAIL and "ml.m5.xlarge for endpoint usage is 3; rollouts need 4" in embeddings.detail


def test_instance_quota_sums_every_endpoint_of_the_stage_by_type():
    # A second endpoint of the same type (issue 22 adds one): one deploy may roll out both.
    second = dataclasses.replace(DEV.endpoint, max_instances=3)

    class TwoEndpoints(type(DEV)):
        @property
        def endpoints(self):
            return {"inference-cache-dev": self.endpoint, "inference-cache-dev-embeddings": second}

    two = TwoEndpoints(**{f.name: getattr(DEV, f.name) for f in dataclasses.fields(DEV)})
    account = StubbedAws()
    name = "ml.g5.2xlarge for endpoint usage"
    account.answer("service-quotas", "us-west-2", "list_service_quotas",
                   {"Quotas": [accounts._quota(name, 8)]}, {"ServiceCode": "sagemaker"})
    (finding,) = preflight.check_instance_quotas(account.aws, two)
    account.assert_all_answered()
    assert finding.status == FAIL and "rollouts need 10" in finding.detail  # 2 x 2 + 2 x 3


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_in_both_regions_passes():
    findings = _check(preflight.check_bootstrap, accounts.answer_bootstrap, present=True)
    assert _statuses(findings) == [OK, OK]
    assert [f.detail.split(":")[0] for f in findings] == ["us-west-2", "us-east-1"]


def test_missing_bootstrap_fails_in_each_region_with_the_command():
    findings = _check(preflight.check_bootstrap, accounts.answer_bootstrap, present=False)
    assert _statuses(findings) == [FAIL, FAIL]
    assert findings[0].fix == "npx cdk bootstrap aws://111111111111/us-west-2 aws://111111111111/us-east-1"


def test_an_old_bootstrap_version_fails():
    findings = _check(preflight.check_bootstrap, accounts.answer_bootstrap, present=True, version="5")
    assert _statuses(findings) == [FAIL, FAIL] and "is 5; the stacks need 6" in findings[0].detail


def test_a_failed_bootstrap_stack_fails():
    account = StubbedAws()
    accounts.answer_bootstrap_stack(account, "us-west-2", present=True, status="ROLLBACK_COMPLETE")
    accounts.answer_bootstrap_stack(account, "us-east-1", present=True)
    account.answer("ssm", "us-east-1", "get_parameter", {"Parameter": {"Name": "v", "Value": "29"}},
                   {"Name": preflight.CDK_BOOTSTRAP_VERSION_PARAMETER})
    findings = preflight.check_bootstrap(account.aws, DEV)
    account.assert_all_answered()
    assert _statuses(findings) == [FAIL, OK] and "ROLLBACK_COMPLETE" in findings[0].detail


# --------------------------------------------------------------------------- certificate


def _certificate(answer_kwargs, settings=DEV):
    account = StubbedAws()
    accounts.answer_certificate(account, settings, **answer_kwargs)
    findings = check_certificate(account.aws, settings, NOW)
    account.assert_all_answered()
    return findings


def test_an_issued_wildcard_certificate_covering_the_domain_passes():
    (finding,) = _certificate({})
    assert finding.status == OK and "*.dev.example.com" in finding.detail


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"status": "PENDING_VALIDATION"}, "status PENDING_VALIDATION"),
        ({"domain": "*.example.com"}, "not inference.dev.example.com"),  # a wildcard covers one label only
        ({"domain": "api.dev.example.com"}, "not inference.dev.example.com"),
        ({"days_left": 3}, "expires in 3 days"),
        ({"exists": False}, "not found in us-east-1"),
    ],
)
def test_a_certificate_that_is_not_issued_for_the_domain_fails(kwargs, problem):
    (finding,) = _certificate(kwargs)
    assert finding.status == FAIL and problem in finding.detail and "us-east-1" in finding.fix


def test_wildcards_cover_exactly_one_label():
    assert preflight._covers("*.example.com", "a.example.com")
    assert preflight._covers("A.Example.com", "a.example.com.")
    assert not preflight._covers("*.example.com", "a.b.example.com")
    assert not preflight._covers("*.example.com", "example.com")


# --------------------------------------------------------------------------- deploy-time parameters and layers


def test_the_powertools_parameter_published_in_the_home_region_passes():
    (finding,) = _check(preflight.check_deploy_time_parameters, accounts.answer_deploy_time_parameters)
    assert finding.status == OK and "/aws/service/powertools/python/arm64/python3.14/" in finding.detail


def test_a_powertools_version_aws_does_not_publish_there_fails():
    (finding,) = _check(preflight.check_deploy_time_parameters, accounts.answer_deploy_time_parameters, published=False)
    assert finding.status == FAIL and "does not exist" in finding.detail
    assert "get-parameters-by-path --region us-west-2 --path /aws/service/powertools/python/arm64/python3.14" in finding.fix


def test_the_web_adapter_layer_in_the_home_region_passes():
    (finding,) = _check(preflight.check_web_adapter_layer, accounts.answer_web_adapter_layer)
    assert finding.status == OK and ":us-west-2:753240598075:layer:LambdaAdapterLayerArm64:" in finding.detail


def test_a_web_adapter_layer_not_published_in_the_region_fails():
    (finding,) = _check(preflight.check_web_adapter_layer, accounts.answer_web_adapter_layer, published=False)
    assert finding.status == FAIL and "AccessDeniedException" in finding.detail


# --------------------------------------------------------------------------- service-linked roles


def test_present_service_linked_roles_pass():
    (finding,) = _check(preflight.check_service_linked_roles, accounts.answer_service_linked_roles, present=True)
    assert finding.status == OK


def test_missing_roles_pass_when_cloudformation_deploys_as_administrator():
    (finding,) = _check(preflight.check_service_linked_roles, accounts.answer_service_linked_roles, present=False)
    assert finding.status == OK and "the deploy creates them" in finding.detail


def test_missing_roles_fail_under_narrower_execution_policies():
    (finding,) = _check(
        preflight.check_service_linked_roles, accounts.answer_service_linked_roles, present=False,
        bootstrap="arn:aws:iam::111111111111:policy/cdk-deploy-narrow",
    )
    assert finding.status == FAIL and "cdk-deploy-narrow" in finding.detail
    assert "aws iam create-service-linked-role --aws-service-name replicator.lambda.amazonaws.com" in finding.fix


# --------------------------------------------------------------------------- fixed names


def test_names_of_undeployed_stacks_that_nothing_holds_pass():
    (finding,) = _check(preflight.check_fixed_names, accounts.answer_fixed_names, deployed=("ModelStorage",))
    assert finding.status == OK


def test_a_log_group_the_service_created_before_the_stack_fails():
    held = "/aws/sagemaker/Endpoints/inference-cache-prod"
    (finding,) = _check(preflight.check_fixed_names, accounts.answer_fixed_names, settings=PROD, taken=(held,))
    assert finding.status == FAIL and f"log-group {held} (us-east-2)" in finding.detail and "cdk import" in finding.fix


def test_a_model_bucket_retained_by_an_earlier_stage_fails():
    (finding,) = _check(preflight.check_fixed_names, accounts.answer_fixed_names, taken=(DEV.model_bucket_name,))
    assert finding.status == FAIL and f"s3-bucket {DEV.model_bucket_name}" in finding.detail


def test_deployed_stacks_own_their_names_and_are_not_looked_into():
    every_stack = tuple({r.stack for r in preflight.named_resources(DEV)})
    (finding,) = _check(preflight.check_fixed_names, accounts.answer_fixed_names, deployed=every_stack)
    assert finding.status == OK and finding.detail.startswith("0 names")


# --------------------------------------------------------------------------- model versions


def test_a_published_pinned_version_passes_for_each_model_the_stage_pins():
    llm, embeddings = _check(preflight.check_model_versions, accounts.answer_model_versions, bucket=True)
    assert llm.status == OK and DEV.model.model_version in llm.detail
    assert embeddings.status == OK and DEV.embeddings.model_version in embeddings.detail


def test_a_pinned_version_without_its_manifest_fails():
    llm, embeddings = _check(preflight.check_model_versions, accounts.answer_model_versions, bucket=True,
                             published=False)
    assert llm.status == FAIL and embeddings.status == FAIL
    assert f"s3://{DEV.model_bucket_name}/models/llama-3.1-8b-instruct/_manifests/2026-11-01.json" in llm.detail


def test_no_model_bucket_yet_is_a_later_step_not_a_failure():
    (finding,) = _check(preflight.check_model_versions, accounts.answer_model_versions, bucket=False)
    assert finding.status == LATER and "npx cdk deploy 'dev/ModelStorage'" in finding.fix


def test_a_bucket_name_held_by_another_account_fails():
    account = StubbedAws()
    account.refuse("s3", "us-west-2", "head_bucket", "403", 403, {"Bucket": DEV.model_bucket_name})
    (finding,) = preflight.check_model_versions(account.aws, DEV)
    assert finding.status == FAIL and "another account" in finding.detail


def test_the_manifest_key_is_where_model_publish_writes_it():
    from cli.model_publish import MANIFESTS_DIR
    from cli.model_stage import stage_target

    bucket, base = stage_target("prod")
    assert preflight.manifest_key(PROD.model) == f"{base}{MANIFESTS_DIR}{PROD.model.model_version}.json"


# --------------------------------------------------------------------------- the command


def test_a_new_account_fails_with_every_reason_and_a_ready_one_passes():
    status, out = accounts.run(accounts.new_account())
    assert status == 1
    fails = [line.split()[1] for line in out.splitlines() if line.startswith("FAIL")]
    assert fails == ["lambda", "endpoint", "endpoint", "cdk", "cdk", "certificate", "service-linked"]
    assert any(line.startswith("later model versions") for line in out.splitlines())
    assert out.splitlines()[-1].startswith("7 FAIL, 1 later,")

    status, out = accounts.run(accounts.ready_account())
    assert status == 0
    assert not any(line.startswith(("FAIL", "later")) for line in out.splitlines())
    assert out.splitlines()[-1].startswith(f"{len(out.splitlines()) - 2} ok:")


def test_a_check_aws_refuses_is_a_fail_of_its_own_and_the_others_still_run():
    account = StubbedAws()
    accounts.answer_credentials(account, DEV)
    account.refuse("lambda", "us-west-2", "get_account_settings", "AccessDeniedException", 403)
    accounts.answer_model_versions(account, DEV, bucket=True)
    checks = [c for c in preflight.CHECKS if c[0] in ("credentials", "lambda concurrency", "model versions")]
    findings = run_checks(account.aws, DEV, checks)
    account.assert_all_answered()
    assert _statuses(findings) == [OK, FAIL, OK, OK]  # one model-versions line per pinned model
    assert findings[1].detail.startswith("GetAccountSettings: AccessDeniedException") and "ReadOnlyAccess" in findings[1].fix


def _bare_environment(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {
        **env,
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def test_without_credentials_the_command_says_so_in_one_line_and_exits_2(tmp_path):
    done = subprocess.run([str(ROOT / "bin" / "preflight"), "--stage", "dev"], capture_output=True, text=True,
                          env=_bare_environment(tmp_path), timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "preflight: error: no AWS credentials for stage dev: set AWS_PROFILE (or run `aws sso login`) for account "
        "111111111111"
    ]


def test_an_unknown_stage_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([str(ROOT / "bin" / "preflight"), "--stage", "qa"], capture_output=True, text=True,
                          env=_bare_environment(tmp_path), timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "preflight: error: unknown stage 'qa'; stages: dev, staging, prod"


def test_make_preflight_runs_the_command_for_the_stage():
    makefile = (ROOT / "Makefile").read_text()
    assert "preflight:" in makefile and "bin/preflight --stage $(STAGE)" in makefile


def test_a_stage_with_another_certificate_account_is_checked_where_cloudfront_reads_it():
    # The ARN's region is pinned to us-east-1 by the settings; the check asks ACM there.
    other = dataclasses.replace(
        DEV, domain=CustomDomain(DEV.domain.name, DEV.domain.certificate_arn.replace("0001", "0009"))
    )
    (finding,) = _certificate({"exists": False}, settings=other)
    assert finding.status == FAIL and other.domain.certificate_arn in finding.detail


def test_the_readmes_preflight_excerpt_is_what_the_command_prints():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("### Before the first deploy: `make preflight`", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    printed = accounts.run(accounts.new_account())[1] + accounts.run(accounts.ready_account())[1]
    for line in block.splitlines():
        if line == "...":
            continue
        # A line cut short with "; ..." shows the start of what is printed.
        shown = line.split("; ...")[0]
        assert any(out.startswith(shown) for out in printed.splitlines()), line
