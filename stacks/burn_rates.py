"""Error-budget burn-rate alerting policy (Google SRE workbook, "Alerting on SLOs"),
over a 30-day SLO window: 14.4x for 1 h spends 2 % of the budget, 6x for 6 h spends 5 %.
Each rule needs its long window AND a short window (1/12 of it) above the rate, so an
alert also stops soon after the errors do.

Pure Python (no CDK import): the SLA settings validate against the fast rate.
"""

SLO_WINDOW_DAYS = 30
FAST_BURN_RATE = 14.4
FAST_BURN_WINDOWS_SECONDS = (3600, 300)
SLOW_BURN_RATE = 6.0
SLOW_BURN_WINDOWS_SECONDS = (21_600, 1_800)
