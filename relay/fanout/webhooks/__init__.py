"""Webhooks: every stability transition sent to CI endpoints, chat (Slack, Teams, Discord) and
push monitors (Healthchecks.io, Uptime Kuma, Gatus), retried, deduplicated, and not lost across
restarts (docs/webhooks.md).

| module | job |
|---|---|
| ``sender``    | the targets: start, each change told, reload, close; the policies |
| ``target``    | one target's hysteresis, filter and signals; what it persists |
| ``mailbox``   | what one target owes, bounded, newest superseding older |
| ``owed``      | a transition or signal event owed, its id and request |
| ``worker``    | one target's task: send in order, retry, repeat for monitors |
| ``retry``     | the wait before the next attempt (schedule, Retry-After) |
| ``delivery``  | one HTTP attempt and what its answer means (retry, fail, disable) |
| ``payloads``  | the Standard Webhooks JSON envelope, the Slack message, the shared texts |
| ``kinds``     | each kind's request (method, URL, headers, body), repeats and tests |
| ``template``  | the template kind's placeholders filled, structurally |
| ``signing``   | Standard Webhooks ids and HMAC-SHA256 signatures |
| ``statefile`` | the small JSON file that carries delivery state across restarts |
| ``records``   | what that file holds per target, and its format |
"""

from relay.fanout.webhooks.delivery import send_test
from relay.fanout.webhooks.sender import WebhookSender

__all__ = ["WebhookSender", "send_test"]
