"""stability-relay: is the data system stable or processing?

NOTIFY in; Server-Sent Events, Prometheus metrics and webhooks out.
"""

__version__ = "0.1.0"
