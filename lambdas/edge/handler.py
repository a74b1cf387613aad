"""Lambda@Edge origin-request handler. For now it forwards every request unchanged;
the cache decision and the edge lookup replace this pass-through."""


def handler(event, context):
    return event["Records"][0]["cf"]["request"]
