"""botocore's Stubber at the boto3 boundary, counting every call the client attempted.

A Stubber refuses a call nobody queued a response for by raising from inside the call.
Code under test that catches every exception swallows that refusal: the origin adapter
catches any failure of the store (a store never fails the client's request), and its
endpoint turns any botocore error into a 502. A "not stored" or "not retried" test built
on the refusal alone passes whether or not the call was made. This Stubber records each
attempted call before the Stubber sees it, so a test asserts the calls themselves, and
`assert_calls_as_queued` fails on a call beyond the queue as on a response left unused.
"""

from __future__ import annotations

from botocore import xform_name
from botocore.stub import Stubber


class CountingStubber(Stubber):
    def __init__(self, client) -> None:
        super().__init__(client)
        self.calls: list[str] = []  # every call attempted, as the client method's name (put_object)
        self.queued: list[str] = []  # the calls a response (or error) was queued for, in order

    def activate(self) -> None:
        # provide-client-params comes before the Stubber's own checks (before-parameter-build).
        self.client.meta.events.register_first("provide-client-params.*.*", self._record, unique_id=self._record_id)
        super().activate()

    def deactivate(self) -> None:
        super().deactivate()
        self.client.meta.events.unregister("provide-client-params.*.*", self._record, unique_id=self._record_id)

    @property
    def _record_id(self) -> str:
        return f"counting-stubber-{id(self)}"

    def _record(self, model, **_) -> None:
        self.calls.append(xform_name(model.name))

    def add_response(self, method, service_response, expected_params=None) -> None:
        super().add_response(method, service_response, expected_params)
        self.queued.append(method)

    def add_client_error(self, method, *args, **kwargs) -> None:
        super().add_client_error(method, *args, **kwargs)
        self.queued.append(method)

    def assert_calls_as_queued(self) -> None:
        """Exactly the calls queued were made, in order, each with the expected parameters."""
        self.assert_no_pending_responses()
        assert self.calls == self.queued, f"calls made {self.calls}, queued {self.queued}"
