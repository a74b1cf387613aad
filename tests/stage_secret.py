"""The stage secret the tests run under, and what follows from it, as the deployed pieces
derive it: the cache-key MAC key (lambdas.cache_decision.mac_key) and the /_cache/ read
credential (HMAC-SHA256 of the secret over CACHE_READ_CONTEXT, hex), which the
viewer-request function on /_cache/* checks."""

from __future__ import annotations

import hmac

from lambdas.cache_decision import mac_key
from lambdas.contract import CACHE_READ_CONTEXT, CACHE_READ_HEADER, STAGE_SECRET_HEADER

# Shaped as `bin/api-keys rotate-secret` makes one: 43 URL-safe characters.
STAGE_SECRET = "tEsT-sTaGe-SeCrEt_0123456789abcdefghijklmnop"
MAC = mac_key(STAGE_SECRET)
CACHE_READ_CREDENTIAL = hmac.digest(STAGE_SECRET.encode(), CACHE_READ_CONTEXT.encode(), "sha256").hex()
# What the viewer-request API key check adds to a request it lets through.
WITH_SECRET = {STAGE_SECRET_HEADER: STAGE_SECRET}
__all__ = ["CACHE_READ_CREDENTIAL", "CACHE_READ_HEADER", "MAC", "STAGE_SECRET", "STAGE_SECRET_HEADER", "WITH_SECRET"]
