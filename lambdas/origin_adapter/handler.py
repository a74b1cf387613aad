"""Origin adapter behind the function URL. For now it passes the request body to the
SageMaker endpoint unchanged and returns the endpoint's answer unchanged."""

import base64
import os

import boto3

ENDPOINT_NAME = os.environ.get("ENDPOINT_NAME", "")
_runtime = boto3.client("sagemaker-runtime")


def handler(event, context):
    body = event.get("body") or ""
    payload = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()
    content_type = (event.get("headers") or {}).get("content-type", "application/json")
    answer = _runtime.invoke_endpoint(EndpointName=ENDPOINT_NAME, ContentType=content_type, Body=payload)
    return {
        "statusCode": 200,
        "headers": {"content-type": answer.get("ContentType", "application/json")},
        "body": base64.b64encode(answer["Body"].read()).decode(),
        "isBase64Encoded": True,
    }
