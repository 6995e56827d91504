"""The wiring: the one place components meet (docs/architecture.md has the picture). It builds
them in data-path order and subscribes them; it handles no event and swaps no instance.

    NOTIFY → source.Listener → fanout.Dispatch → state.Stability → observers, in this order:
             systemd, the SSE hub, the state gauges, waits, details, signals, fanout.Leading
             (while this relay leads: its term's history writer, then its webhooks)
                                                └→ source.ChannelRelay → the hub (named
                                                   events), the feeds
    source.Leadership (the election) → fanout.Leading: a fresh term each time it is elected
    HTTP → http.sockets (accept) → http.access (CORS, auth, limits) → http.routes

The listener is built first and told later whom to tell (``Listener.subscribe``): those who
hear it come after it on the data path. The election is built after ``Leading``, its callback.

Startup: SSE hub, feeds, read pool, details, estimates' sampler, signals → HTTP (serving
``unknown``) → listener → leader election (a term starts once elected) → systemd ``READY=1``.
Shutdown, within one ``http.shutdown_timeout``: ``STOPPING=1`` (an election starts nothing from
now on) → stop accepting → waits answer → listener → SSE streams → feeds → the term: webhooks
finish what is on the wire (still leader), then the history writer → leave the election → HTTP
handlers → fresh reads → signals → estimates' sampler → details → read pool (its users close
first: relay/state/readpool.py) → systemd. Each step gets what is left of the deadline.
"""

from __future__ import annotations

import asyncio
import resource
import signal
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

import aiohttp
from aiohttp import web

from relay import logs
from relay.config import Config
from relay.errors import ConfigError
from relay.fanout import takeover
from relay.fanout.dispatch import Dispatch
from relay.fanout.enrich import pool_call
from relay.fanout.feeds import Feeds
from relay.fanout.gauges import StateGauges
from relay.fanout.leading import Leading
from relay.fanout.sse import Capacity, Hub
from relay.fanout.systemd import Notifier
from relay.fanout.webhooks import WebhookSender
from relay.http.access import AddressLimit
from relay.http.auth import Authenticator
from relay.http.loopguard import LoopErrors
from relay.http.routes import Served, build_app
from relay.http.serverlog import quiet_malformed_requests
from relay.http.sockets import GuardedSite
from relay.logs import get_logger
from relay.metrics import Metrics
from relay.shutdown import ShutdownStep, cut_off, run_steps
from relay.source import pg
from relay.source.election import Leadership
from relay.source.listener import Listener
from relay.state.details import Details
from relay.state.eta import Estimates, Sampler
from relay.state.history import History, HistoryWriter
from relay.state.readpool import ReadPool
from relay.state.signals import SignalsReader
from relay.state.stability import Stability
from relay.state.waits import Waits, fresh_reads

log = get_logger("relay.app")

# What SIGHUP applies; every other change needs a restart (and is logged as such).
RELOADABLE = ("auth", "webhooks")


class Relay:
    """The whole daemon. ``start()`` then ``aclose()``; both idempotent, not reopenable (a
    closed relay refuses to start)."""

    def __init__(self, config: Config, *, notifier: Notifier | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        # What the servers refused (a pooler's `options`), remembered for this relay's
        # connections: the listener's, the hold flag's, the election's and the read pool's.
        self.connector = pg.Connector()
        # source: the listener first. What hears it is built below and subscribed then.
        # Besides its own: the channels relayed as named events and the feeds' (the dispatch's).
        relayed = (*config.channels, *(c for feed in config.feeds for c in feed.channels))
        self.listener = Listener(
            config.database,
            config.stability,
            self.metrics,
            activities=config.activities,
            profile=config.profile,
            extra_channels=relayed,
            connector=self.connector,
        )
        self.metrics.watch_database(
            lambda: self.listener.refusal_kind,
            lambda: self.listener.pooled,
            lambda: self.listener.backoff_stuck,
        )

        # state
        self.stability = Stability({a.name: a.label for a in config.activities})
        # The one pool for short reads and writes: the details, fresh reads, history, signals
        # and the feeds' enrichment read on it.
        self.read_pool = ReadPool(config.database, config.details, self.connector)
        self.estimates = Estimates()
        self.details = Details(
            config.database,
            config.details,
            self.metrics,
            self.stability,
            self.read_pool,
            self.estimates,
        )
        # While the system is busy, a details round every few seconds: the estimates' samples.
        self.eta_sampler = Sampler(self.stability, self.details.fetch)
        # Stalled, overdue, depth and lag: read on the read pool while work is active.
        self.signals = SignalsReader(
            config.activities,
            config.signals,
            self.stability,
            self.read_pool,
            self.metrics,
        )
        self.metrics.watch_signals(
            self.signals.value,
            [(a.name, a.age_column is not None) for a in config.activities],
            lambda: self.signals.refusal is not None,
        )
        self.details.signals = self.signals.details
        self.fresh = fresh_reads(self.read_pool, config.wait, self.metrics)
        self.waits = Waits(
            self.stability,
            self.fresh,
            config.wait,
            self.metrics,
            eta=lambda: self.estimates.latest,
        )
        self.history = History(self.read_pool, list(config.activity_names))

        # fan-out
        self.notifier = notifier or Notifier()  # systemd; a no-op without $NOTIFY_SOCKET
        self.notifier.follow(self.stability)
        # One limit on open streams for the live stream and every feed, and how they are held.
        refusal = takeover.fast_path_refusal()
        self.capacity = Capacity(config.http.max_clients, takeover=refusal is None)
        self.metrics.sse_takeover.set(1 if refusal is None else 0)
        self._sse_path_reason = refusal
        self.hub = Hub(self.stability, config.http, self.metrics, self.capacity)
        # Feeds that enrich call their functions on the read pool.
        self.feeds = Feeds(
            config.feeds,
            self.stability,
            config.http,
            self.metrics,
            self.capacity,
            call=pool_call(self.read_pool),
        )
        self.gauges = StateGauges(
            self.metrics,
            self.stability,
            lambda: self.capacity.open,
            lambda: self.listener.connected.is_set(),
        )
        self.metrics.sse_clients_limit.set(config.http.max_clients)
        # What the listener hears: the truth to the state, payloads to the hub and the feeds.
        self.dispatch = Dispatch(
            self.stability,
            self.waits,
            self.hub,
            self.feeds,
            self.metrics,
            hub_channels=config.channels,
        )
        self.listener.subscribe(self.dispatch)
        # Several relays on one database: only the elected one writes the history and sends
        # webhooks, each term with a history writer and a sender of its own.
        self.leading = Leading(
            self.metrics,
            history=lambda: HistoryWriter(self.stability, self.read_pool, config.history.retention),
            webhooks=lambda hooks: WebhookSender(
                hooks,
                self.stability,
                self.metrics,
                state_directory=config.state_directory,
                public_url=config.http.public_url,
                eta=lambda: self.estimates.latest,
            ),
            hooks=config.webhooks,
            close_timeout=config.http.shutdown_timeout,
        )
        # Only a relay whose listener knows the state campaigns (never a standby's, a refused
        # pooler's or one not yet connected).
        self.leadership = Leadership(
            config.database,
            self.leading.on_leadership,
            eligible=lambda: self.listener.connected.is_set(),
            connector=self.connector,
        )
        # Who hears a transition, in the order they are told.
        for observer in (
            self.notifier.on_transition,  # systemd: STATUS= (READY=1 once the state is known)
            self.hub.publish_state,  # the live stream
            self.gauges.on_transition,  # the state's metrics
            self.waits.on_change,  # long polls whose condition now holds
            self.details.on_change,  # details requests waiting for the state they read
            self.signals.on_change,  # a new busy period: read its signals; an ended one: clear
            self.leading.on_change,  # while this relay leads: the history, then the webhooks
        ):
            self.stability.subscribe(observer)

        # HTTP
        self.authenticator = Authenticator(config.auth)
        self.address_limit = AddressLimit(config.http, self.metrics)
        self._served = Served(
            cors=config.cors,
            authenticator=self.authenticator,
            address_limit=self.address_limit,
            stability=self.stability,
            listener=self.listener,
            hub=self.hub,
            feeds=self.feeds,
            details=self.details,
            waits=self.waits,
            history=self.history,
            registry=self.metrics.registry,
        )
        self._runner: web.AppRunner | None = None
        self._restore_loop_handler: Callable[[], None] = lambda: None
        self._site: web.TCPSite | None = None
        self._state = "new"

    @property
    def webhooks(self) -> WebhookSender | None:
        """The webhook sender of this relay's term as leader, or of its next term."""
        return self.leading.webhooks

    @property
    def port(self) -> int:
        """The bound port (useful with ``listen: 127.0.0.1:0``)."""
        assert self._runner is not None
        address = self._runner.addresses[0]
        return int(address[1])

    async def start(self) -> None:
        if self._state == "running":
            return
        if self._state != "new":  # closed, or a start under way or failed half-way: close it
            raise RuntimeError(f"relay cannot start: it is {self._state}")
        self._state = "starting"
        warn_if_fd_limit_low(self.config.http.max_clients, self.config.http.fd_reserve)
        self._restore_loop_handler = LoopErrors(self.metrics.loop_errors).install(
            asyncio.get_running_loop()
        )
        warn_if_unprotected(self.config)
        if self._sse_path_reason is None:
            log.info("sse_path", path="takeover", aiohttp=aiohttp.__version__)
        else:
            log.warning(
                "sse_path",
                path="public",
                reason=self._sse_path_reason,
                note="streams stay in their handlers: about 12 KB each instead of 2 KB",
            )
        await self.hub.start()
        await self.feeds.start()
        await self.read_pool.start()
        await self.details.start()
        await self.eta_sampler.start()
        await self.signals.start()
        quiet_malformed_requests()
        self._runner = web.AppRunner(
            build_app(self._served),
            handler_cancellation=True,  # a client that goes away cancels its SSE handler
            access_log=None,
            max_line_size=self.config.http.max_header_size,
            max_field_size=self.config.http.max_header_size,
            shutdown_timeout=self.config.http.shutdown_timeout,
            # Also a deadline for a connection's first request: idle and slow-loris sockets
            # are closed after it (an open event stream is the relay's, not aiohttp's).
            keepalive_timeout=self.config.http.idle_timeout,
        )
        await self._runner.setup()
        listen = self.config.http.listen
        # The relay accepts its own connections: per-address limits, a descriptor reserve.
        self._site = GuardedSite(self._runner, self.config.http, self.metrics, backlog=4096)
        await self._site.start()
        await self.listener.start()
        await self.leadership.start()  # a term (history, webhooks) starts once elected
        await self.notifier.start()
        self._state = "running"
        log.info("serving", listen=f"{listen.host}:{self.port}")

    async def aclose(self) -> None:
        """Stop in a fixed order, all of it within one ``http.shutdown_timeout``
        (``relay/shutdown.py``: each step gets what is left of it)."""
        if self._state in ("closing", "closed"):
            return
        self._state = "closing"
        self.notifier.stopping()
        self.leading.stopping()  # elected from now on: start nothing
        # Each closes within the time it is given; stopping the accepting socket has no
        # timeout of its own and is cancelled when it is up (cut_off).
        steps: list[tuple[str, ShutdownStep]] = [
            ("stop_accepting", cut_off(self._stop_accepting)),
            ("waits", self.waits.aclose),  # long polls answer now, not at cleanup
            ("listener", self.listener.aclose),
            ("sse", self.hub.aclose),
            ("feeds", self.feeds.aclose),
            # The term: webhooks finish what is on the wire while still the leader, then the
            # history writer.
            ("leading", self.leading.aclose),
            ("leadership", self.leadership.aclose),
            ("http", self._http_cleanup),
            ("fresh_reads", self.fresh.aclose),
            ("signals", self.signals.aclose),
            ("eta_sampler", self.eta_sampler.aclose),
            ("details", self.details.aclose),
            # Last of the state: every user of the pool has closed (relay/state/readpool.py).
            ("read_pool", self.read_pool.aclose),
            ("systemd", self.notifier.aclose),
        ]
        await run_steps(steps, self.config.http.shutdown_timeout)
        self._restore_loop_handler()
        self._state = "closed"
        log.info("stopped")

    async def _stop_accepting(self) -> None:
        if self._site is not None:
            await self._site.stop()

    async def _http_cleanup(self, timeout: float) -> None:
        """The runner's cleanup, with its handlers given ``timeout`` rather than the whole
        ``shutdown_timeout`` again (which is what ``AppRunner.cleanup()`` alone grants)."""
        if self._runner is None:
            return
        server = self._runner.server
        if server is not None:
            server.pre_shutdown()  # closes idle keep-alive connections
            await server.shutdown(timeout)  # handlers get what is left, then are cancelled
        await self._runner.cleanup()  # no connections left: returns at once

    def reload(self, config: Config) -> None:
        """Apply a new config's tokens and webhook targets; other changes need a restart."""
        logs.redactor.update([*self.config.secrets(), *config.secrets()])
        self.authenticator.replace(config.auth)
        self.leading.reload(config.webhooks)
        ignored = [
            section
            for section in Config.model_fields
            if section not in RELOADABLE
            and getattr(config, section) != getattr(self.config, section)
        ]
        self.config = self.config.model_copy(
            update={"auth": config.auth, "webhooks": config.webhooks}
        )
        log.info("reloaded", applied=list(RELOADABLE), needs_restart=ignored)


def warn_if_unprotected(config: Config) -> None:
    if config.auth is None and not config.http.listen.is_loopback:
        log.warning(
            "no_authentication_on_public_address",
            listen=str(config.http.listen),
            hint="anyone who can reach this address can read the status and details; "
            "configure `auth` or bind to 127.0.0.1 behind a proxy that authenticates",
        )


def warn_if_fd_limit_low(max_clients: int, reserve: int) -> None:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < max_clients + reserve:
        log.warning(
            "open_file_limit_low",
            limit=soft,
            max_clients=max_clients,
            fd_reserve=reserve,
            hint="raise LimitNOFILE (systemd) or ulimit -n, or lower http.max_clients",
        )


async def serve(
    config: Config,
    reload: Callable[[], Config] | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run until SIGTERM or SIGINT (a second one forces the exit); SIGHUP reloads.

    ``environ`` carries systemd's ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` (the CLI passes
    the process environment; nothing here reads it on its own).
    """
    relay = Relay(config, notifier=Notifier.from_environ(environ or {}))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_reload() -> None:
        if reload is None:
            log.warning("reload_ignored", reason="no config file to reload")
            return
        try:
            relay.reload(reload())
        except ConfigError as error:
            log.error("reload_rejected", problems=error.problems, note="the old config is kept")

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("forced_exit", signal=signal.Signals(signum).name)
            raise SystemExit(1)
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    try:
        await relay.start()
        await stop.wait()
    finally:
        await relay.aclose()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with suppress(Exception):
                loop.remove_signal_handler(signum)
    return 0


def run(
    config: Config,
    reload: Callable[[], Config] | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    return asyncio.run(serve(config, reload, environ))


__all__: list[Any] = ["Relay", "run", "serve"]
