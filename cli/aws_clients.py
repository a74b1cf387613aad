"""boto3 clients by (service, region) for the operator commands that talk to a stage's
account (bin/preflight, bin/workspace-host)."""

from __future__ import annotations


class AwsClients:
    """One boto3 client per (service, region), from one session. `clients` pre-made
    (tests: clients with a Stubber attached) are handed out instead; with `only_given`
    any other client is an error, so a test sees every call a check makes."""

    def __init__(self, session=None, clients: dict[tuple[str, str], object] | None = None, only_given: bool = False):
        self._session = session
        self._clients = dict(clients or {})
        self._only_given = only_given

    def __call__(self, service: str, region: str):
        key = (service, region)
        if key not in self._clients:
            if self._only_given:
                raise AssertionError(f"no {service} client for {region} was given")
            if self._session is None:
                import boto3

                self._session = boto3.session.Session()
            self._clients[key] = self._session.client(service, region_name=region)
        return self._clients[key]
