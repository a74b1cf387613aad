"""The Lambda@Edge origin-request function (stdlib only)."""
