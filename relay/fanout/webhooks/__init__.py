"""Webhooks: every stability transition sent to CI endpoints, chat (Slack, Teams, Discord) and
push monitors (Healthchecks.io, Uptime Kuma, Gatus), retried, deduplicated, and not lost across
restarts (docs/webhooks.md).

| module | job |
|---|---|
| ``sender``    | per-target hysteresis, filter, mailbox and delivery task; start/stop |
| ``delivery``  | one HTTP attempt and what its answer means (retry, fail, disable) |
| ``payloads``  | the Standard Webhooks JSON envelope, the Slack message, the shared texts |
| ``kinds``     | each kind's request (method, URL, headers, body), repeats and tests |
| ``template``  | the template kind's placeholders filled, structurally |
| ``signing``   | Standard Webhooks ids and HMAC-SHA256 signatures |
| ``statefile`` | the small JSON file that carries delivery state across restarts |
"""

from relay.fanout.webhooks.delivery import Outcome, Result, send_test
from relay.fanout.webhooks.payloads import Transition
from relay.fanout.webhooks.sender import Target, WebhookSender
from relay.fanout.webhooks.signing import sign

__all__ = [
    "Outcome",
    "Result",
    "Target",
    "Transition",
    "WebhookSender",
    "send_test",
    "sign",
]
