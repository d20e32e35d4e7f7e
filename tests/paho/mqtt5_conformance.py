#!/usr/bin/env python3
"""MQTT 5 conformance checks for certmq, using the Eclipse Paho Python client.

Each check exercises one MQTT 5 feature against a running broker and names
the section of the OASIS MQTT Version 5.0 specification (07 March 2019) it
checks. Output: one line per check,

    PASS <section> <name>[: note]
    FAIL <section> <name>: <reason>

and the exit status is 0 only if every check that ran passed.

Inputs (environment):
    CERTMQ_MQTT_PORT  the broker's MQTT-over-TLS port (required)
    CERTMQ_HOST       host name to connect to (default: localhost; it must
                      match the server certificate)
    CERTMQ_CA         CA certificate (PEM) that issued the server certificate
    CERTMQ_CERTS      directory holding <name>.pem / <name>.key client
                      certificates
    CERTMQ_DEVICES    comma-separated certificate names to use, at least 2,
                      3 preferred (default: device-1,device-2,app)

Usage:
    mqtt5_conformance.py [--only NAME[,NAME...]] [--list] [--verbose]

Notes on method:
  * Every wait is on an event/condition with a timeout of at most WAIT
    seconds. Fixed sleeps appear only where the feature is about time
    (message expiry, session expiry, will delay) and in the receive-maximum
    check, where the absence of a third in-flight message can only be
    observed over a window.
  * "Must not be delivered" is checked with a sentinel: after the message
    that must not arrive has been accepted by the broker (PUBACK), a
    sentinel message is published on a topic the same client receives; once
    the sentinel has arrived, anything the broker was going to deliver
    before it has arrived too (this relies on the broker forwarding one
    publisher's messages in order, 4.6).
  * Topics live under conf/<run id>/ and client ids end in the run id, so
    runs do not see each other's state. A client id is bound to the
    certificate that first used it (certmq's client_id_policy), so every
    reconnect of a session uses the same certificate.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from importlib.metadata import version
from typing import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

WAIT = 5.0            # the longest any single wait may take (seconds)
CHECK_LIMIT = 20.0    # watchdog for a whole check (should never fire)
RUN = uuid.uuid4().hex[:8]


class CheckFailed(Exception):
    """A broker behaviour that the specification does not allow."""


def require(cond, reason: str) -> None:
    if not cond:
        raise CheckFailed(reason)


# --------------------------------------------------------------------------
# Configuration


@dataclass
class Config:
    host: str
    port: int
    ca: str
    certs: str
    devices: list[str]
    verbose: bool = False

    @staticmethod
    def from_env(verbose: bool) -> "Config":
        missing = [k for k in ("CERTMQ_MQTT_PORT", "CERTMQ_CA", "CERTMQ_CERTS")
                   if not os.environ.get(k)]
        if missing:
            sys.exit(f"missing environment variable(s): {', '.join(missing)}")
        devices = [d.strip() for d in
                   os.environ.get("CERTMQ_DEVICES", "device-1,device-2,app").split(",")
                   if d.strip()]
        if len(devices) < 2:
            sys.exit("CERTMQ_DEVICES must name at least 2 certificates")
        certs = os.environ["CERTMQ_CERTS"]
        for d in devices:
            for ext in ("pem", "key"):
                p = os.path.join(certs, f"{d}.{ext}")
                if not os.path.isfile(p):
                    sys.exit(f"no such file: {p}")
        return Config(host=os.environ.get("CERTMQ_HOST", "localhost"),
                      port=int(os.environ["CERTMQ_MQTT_PORT"]),
                      ca=os.environ["CERTMQ_CA"], certs=certs,
                      devices=devices, verbose=verbose)

    def device(self, i: int) -> str:
        """The i-th identity (wrapping round when fewer are configured)."""
        return self.devices[i % len(self.devices)]


CFG: Config = None  # type: ignore[assignment]  # set in main()


# --------------------------------------------------------------------------
# Client helper


@dataclass
class Msg:
    """A received PUBLISH, with the topic resolved through topic aliases."""
    topic: str | None       # resolved topic (None: unknown alias)
    wire_topic: str         # topic name as sent on the wire ('' with alias only)
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    mid: int
    props: Properties | None
    at: float

    def prop(self, name, default=None):
        return getattr(self.props, name, default) if self.props is not None else default

    @property
    def sub_ids(self) -> list[int]:
        v = self.prop("SubscriptionIdentifier", [])
        return list(v) if isinstance(v, list) else [v]

    @property
    def alias(self):
        return self.prop("TopicAlias")


def props(packet_type, **kw) -> Properties | None:
    """Properties(packet_type) with the given non-None values, or None."""
    kw = {k: v for k, v in kw.items() if v is not None}
    if not kw:
        return None
    p = Properties(packet_type)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def rc_value(rc) -> int:
    return rc.value if hasattr(rc, "value") else int(rc)


class Client:
    """A paho MQTT 5 client with synchronous helpers.

    Every wait is bounded by WAIT seconds. All received messages are kept in
    `self.msgs` (in arrival order); wait_for() waits for one that matches.
    """

    def __init__(self, name: str, device: str, client_id: str | None = None, *,
                 clean_start: bool = True, session_expiry: int | None = None,
                 receive_maximum: int | None = None,
                 maximum_packet_size: int | None = None,
                 topic_alias_maximum: int | None = None,
                 will: dict | None = None, manual_ack: bool = False,
                 keepalive: int = 30):
        self.name = name
        self.device = device
        self.client_id = f"{name}-{RUN}" if client_id is None else client_id
        self.cond = threading.Condition()
        self.msgs: list[Msg] = []
        self.aliases: dict[int, str] = {}
        self.connack = None            # (flags, reason, properties)
        self.disconnected = None       # (flags, reason, properties)
        self.suback: dict[int, tuple] = {}
        self.pubdone: dict[int, int] = {}
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5, reconnect_on_failure=False,
                             manual_ack=manual_ack)
        self.c.tls_set(ca_certs=CFG.ca,
                       certfile=os.path.join(CFG.certs, f"{device}.pem"),
                       keyfile=os.path.join(CFG.certs, f"{device}.key"),
                       cert_reqs=ssl.CERT_REQUIRED)
        if will:
            self.c.will_set(will["topic"], will.get("payload", b"will"),
                            qos=will.get("qos", 1), retain=will.get("retain", False),
                            properties=props(PacketTypes.WILLMESSAGE,
                                             WillDelayInterval=will.get("delay")))
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_publish = self._on_publish
        if CFG.verbose:
            self.c.on_log = lambda c, u, lvl, s: print(f"    [{self.name}] {s}")
        self._connect_args = dict(
            clean_start=clean_start, keepalive=keepalive,
            properties=props(PacketTypes.CONNECT,
                             SessionExpiryInterval=session_expiry,
                             ReceiveMaximum=receive_maximum,
                             MaximumPacketSize=maximum_packet_size,
                             TopicAliasMaximum=topic_alias_maximum))

    # ---- callbacks (network thread) ----
    def _on_connect(self, c, u, flags, reason, properties):
        with self.cond:
            self.connack = (flags, reason, properties)
            self.cond.notify_all()

    def _on_disconnect(self, c, u, flags, reason, properties):
        with self.cond:
            self.disconnected = (flags, reason, properties)
            self.cond.notify_all()

    def _on_message(self, c, u, m):
        p = getattr(m, "properties", None)
        wire = m.topic
        alias = getattr(p, "TopicAlias", None) if p is not None else None
        topic: str | None = wire
        if alias is not None:
            if wire:
                self.aliases[alias] = wire
            else:
                topic = self.aliases.get(alias)
        with self.cond:
            self.msgs.append(Msg(topic, wire, bytes(m.payload), m.qos, bool(m.retain),
                                 bool(m.dup), m.mid, p, time.monotonic()))
            self.cond.notify_all()

    def _on_subscribe(self, c, u, mid, reason_codes, properties):
        with self.cond:
            self.suback[mid] = tuple(reason_codes)
            self.cond.notify_all()

    def _on_publish(self, c, u, mid, reason, properties):
        with self.cond:
            self.pubdone[mid] = rc_value(reason)
            self.cond.notify_all()

    # ---- waiting ----
    def _wait(self, pred: Callable[[], object], timeout: float = WAIT):
        deadline = time.monotonic() + min(timeout, WAIT)
        with self.cond:
            while True:
                r = pred()
                if r:
                    return r
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def wait_for(self, pred: Callable[[Msg], bool], timeout: float = WAIT) -> Msg | None:
        """The first received message (old or new) that satisfies pred."""
        return self._wait(lambda: next((m for m in self.msgs if pred(m)), None), timeout)

    def wait_topic(self, topic: str, timeout: float = WAIT) -> Msg | None:
        return self.wait_for(lambda m: m.topic == topic, timeout)

    def wait_count(self, topic: str, n: int, timeout: float = WAIT) -> list[Msg]:
        self._wait(lambda: len(self.on(topic)) >= n, timeout)
        return self.on(topic)

    def on(self, topic: str) -> list[Msg]:
        with self.cond:
            return [m for m in self.msgs if m.topic == topic]

    def wait_disconnected(self, timeout: float = WAIT):
        return self._wait(lambda: self.disconnected, timeout)

    # ---- actions ----
    def connect(self, expect_success: bool = True) -> "Client":
        a = self._connect_args
        self.c.connect(CFG.host, CFG.port, a["keepalive"], clean_start=a["clean_start"],
                       properties=a["properties"])
        self.c.loop_start()
        self._wait(lambda: self.connack or self.disconnected)
        require(self.connack is not None,
                f"{self.name}: no CONNACK within {WAIT:.0f}s"
                + (f" (disconnected: {self.disconnected[1]})" if self.disconnected else ""))
        if expect_success:
            require(not self.connack[1].is_failure,
                    f"{self.name}: CONNACK refused: {self.connack[1]}")
        return self

    @property
    def session_present(self) -> bool:
        return bool(self.connack[0].session_present)

    @property
    def connack_props(self) -> Properties | None:
        return self.connack[2]

    def subscribe(self, *subs, sub_id: int | None = None, allow_failure=False) -> tuple:
        """subs: (filter, qos) or (filter, SubscribeOptions). Waits for SUBACK."""
        lst = [(f, o if isinstance(o, SubscribeOptions) else SubscribeOptions(qos=o))
               for f, o in subs]
        rc, mid = self.c.subscribe(lst, properties=props(PacketTypes.SUBSCRIBE,
                                                         SubscriptionIdentifier=sub_id))
        require(rc == mqtt.MQTT_ERR_SUCCESS, f"{self.name}: subscribe not sent: {rc}")
        self._wait(lambda: self.suback.get(mid) or self.disconnected)
        codes = self.suback.get(mid)
        require(codes is not None, f"{self.name}: no SUBACK for {[f for f, _ in lst]}"
                + (f": connection closed ({self._why_closed()})" if self.disconnected
                   else f" within {WAIT:.0f}s"))
        if not allow_failure:
            bad = [(f, str(c)) for (f, _), c in zip(lst, codes) if c.is_failure]
            require(not bad, f"{self.name}: SUBACK refused {bad}")
        return codes

    def publish(self, topic: str, payload=b"", qos: int = 1, retain: bool = False,
                wait: bool = True, allow_failure=False, **properties) -> int:
        """Publishes; for QoS>0 waits for PUBACK/PUBCOMP. Returns its reason code."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain,
                              properties=props(PacketTypes.PUBLISH, **properties))
        require(info.rc == mqtt.MQTT_ERR_SUCCESS, f"{self.name}: publish not sent: {info.rc}")
        if not wait:
            return 0
        self._wait(lambda: info.mid in self.pubdone or self.disconnected)
        code = self.pubdone.get(info.mid)
        require(code is not None,
                f"{self.name}: publish to {topic!r} (QoS {qos}) not acknowledged"
                + (f": connection closed ({self._why_closed()})" if self.disconnected
                   else f" within {WAIT:.0f}s"))
        if not allow_failure:
            require(code < 0x80, f"{self.name}: publish to {topic!r} refused, "
                                 f"reason code 0x{code:02X}")
        return code

    def _why_closed(self) -> str:
        flags, reason, _ = self.disconnected
        if getattr(flags, "is_disconnect_packet_from_server", False):
            return f"DISCONNECT {reason}"
        return "no DISCONNECT from the server" if flags != "dropped" else "dropped"

    def ack(self, m: Msg) -> None:
        self.c.ack(m.mid, m.qos)

    def disconnect(self, reason: int | None = None, **properties) -> None:
        """DISCONNECT, then waits for the socket to close. Without a reason code
        or properties paho sends the short form (E0 00, Remaining Length 0);
        with reason=0 it sends E0 01 00 (reason code, no property length)."""
        if self.connack is None or self.disconnected is not None:
            return
        rc = None if reason is None else mqtt.ReasonCode(PacketTypes.DISCONNECT,
                                                         identifier=reason)
        self.c.disconnect(reasoncode=rc, properties=props(PacketTypes.DISCONNECT, **properties))
        self.wait_disconnected()
        self.c.loop_stop()

    def drop(self) -> None:
        """Abnormal disconnect: close the TCP connection without DISCONNECT."""
        self.c.loop_stop()      # the network thread is gone: nothing more is sent
        s = self.c.socket()
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        with self.cond:
            self.disconnected = self.disconnected or ("dropped", None, None)

    def close(self) -> None:
        try:
            if self.connack is not None and self.disconnected is None:
                self.disconnect()
        except Exception:
            pass
        try:
            self.c.loop_stop()
        except Exception:
            pass


class Clients:
    """Makes clients for one check and closes them all at its end."""

    def __init__(self):
        self.all: list[Client] = []

    def new(self, name: str, device_index: int = 0, connect: bool = True, **kw) -> Client:
        c = Client(name, CFG.device(device_index), **kw)
        self.all.append(c)
        return c.connect() if connect else c

    def reconnect(self, old: Client, **kw) -> Client:
        """A new connection with the same client id and certificate."""
        c = Client(old.name, old.device, old.client_id, **kw)
        self.all.append(c)
        return c.connect()

    def close(self):
        for c in reversed(self.all):
            c.close()


def topic(check: str, *rest: str) -> str:
    return "/".join(("conf", RUN, check) + rest)


def sentinel(pub: Client, sub: Client, t: str) -> Msg:
    """Publishes a sentinel on t (which sub receives) and waits for it.

    paho hands a QoS 2 message to on_message only on PUBREL, so a QoS 2
    PUBLISH that arrived before the sentinel may still be waiting for its
    PUBREL: wait for those too (paho keeps them in Client._in_messages)."""
    payload = f"sentinel-{uuid.uuid4().hex[:6]}".encode()
    pub.publish(t, payload, qos=1)
    m = sub.wait_for(lambda m: m.topic == t and m.payload == payload)
    require(m is not None, f"{sub.name}: sentinel on {t} not received within {WAIT:.0f}s")
    pending = lambda: not sub.c._in_messages            # noqa: E731
    while not sub._wait(pending, 0.05) and time.monotonic() - m.at < WAIT:
        pass
    return m


def before(client: Client, stop: Msg, pred: Callable[[Msg], bool]) -> list[Msg]:
    """Messages matching pred that the client received before `stop`. A QoS 2
    message that completed after `stop` (see sentinel()) counts as before it."""
    with client.cond:
        idx = client.msgs.index(stop)
        return [m for i, m in enumerate(client.msgs)
                if pred(m) and (i < idx or m.qos == 2)]


def subopts(qos=1, no_local=False, rap=False, rh=0) -> SubscribeOptions:
    return SubscribeOptions(qos=qos, noLocal=no_local, retainAsPublished=rap,
                            retainHandling=rh)


# --------------------------------------------------------------------------
# Checks

CHECKS: list[tuple[str, str, Callable]] = []


def check(section: str, name: str):
    def deco(fn):
        CHECKS.append((section, name, fn))
        return fn
    return deco


@check("4.3,3.8.4", "qos_end_to_end_and_downgrade")
def check_qos(cl: Clients):
    sub = cl.new("qos-sub", 0)
    pub = cl.new("qos-pub", 1)
    filters = [topic("qos", f"s{q}") for q in range(3)]
    granted = sub.subscribe(*[(f, q) for q, f in enumerate(filters)])
    granted = [rc_value(g) for g in granted]
    for q, g in enumerate(granted):
        require(g <= q, f"SUBACK granted QoS {g} above the requested {q}")
    for sq, f in enumerate(filters):
        for pq in range(3):
            pub.publish(f, f"p{pq}".encode(), qos=pq)
    wrong = []
    for sq, f in enumerate(filters):
        got = sub.wait_count(f, 3)
        require(len(got) == 3, f"subscription QoS {sq}: {len(got)} of 3 messages arrived")
        for pq in range(3):
            ms = [m for m in got if m.payload == f"p{pq}".encode()]
            require(len(ms) == 1, f"subscription QoS {sq}: message published at QoS {pq} "
                                  f"arrived {len(ms)} times")
            want = min(pq, granted[sq])
            if ms[0].qos != want:
                wrong.append(f"pub QoS {pq} -> sub QoS {granted[sq]} arrived at QoS "
                             f"{ms[0].qos}, want {want}")
    require(not wrong, "; ".join(wrong) + " (MQTT-3.8.4-8)")
    if granted != [0, 1, 2]:
        return f"granted QoS {granted} for requested [0, 1, 2]"


@check("3.3.4,3.3.2.3.8", "overlapping_subscriptions")
def check_overlap(cl: Clients):
    sub = cl.new("ovl-sub", 0)
    pub = cl.new("ovl-pub", 1)
    sub.subscribe(("#", 1), sub_id=11)
    sub.subscribe(("a/b/#", 2), sub_id=22)
    t = f"a/b/{RUN}/c"
    pub.publish(t, b"overlap", qos=2)
    first = sub.wait_topic(t)
    require(first is not None, "message matching both subscriptions not delivered")
    sentinel(pub, sub, topic("overlap", "sentinel"))       # matches '#' only
    copies = sub.on(t)        # sentinel() waited for QoS 2 copies still in flight
    desc = ", ".join(f"QoS {m.qos} ids {sorted(m.sub_ids)}" for m in copies)
    require(any(m.qos == 2 for m in copies),
            f"no copy at the maximum QoS of the matching subscriptions (2): {desc} "
            "(MQTT-3.3.4-2)")
    if len(copies) == 1:
        require(sorted(copies[0].sub_ids) == [11, 22],
                f"single copy carries subscription identifiers {sorted(copies[0].sub_ids)}, "
                "want [11, 22] (MQTT-3.3.4-3, -4)")
        return
    # Several copies: the spec allows one per matching subscription (each with its
    # own identifier, MQTT-3.3.4-5), but this check asks for exactly one.
    per_copy_ok = all(len(m.sub_ids) == 1 for m in copies) and \
        sorted(i for m in copies for i in m.sub_ids) == [11, 22]
    raise CheckFailed(f"{len(copies)} copies delivered ({desc}), want exactly one"
                      + (" (each carrying its own identifier, which 3.3.4 permits)"
                         if per_copy_ok else ""))


@check("3.8.2.1.2", "subscription_identifier")
def check_sub_id(cl: Clients):
    sub = cl.new("sid-sub", 0)
    pub = cl.new("sid-pub", 1)
    t1, t2 = topic("subid", "with"), topic("subid", "without")
    sub.subscribe((t1, 1), sub_id=7)
    sub.subscribe((t2, 1))
    pub.publish(t1, b"1")
    pub.publish(t2, b"2")
    m1, m2 = sub.wait_topic(t1), sub.wait_topic(t2)
    require(m1 is not None and m2 is not None, "messages not delivered")
    require(m1.sub_ids == [7], f"subscription with identifier 7: message carries {m1.sub_ids}")
    require(m2.sub_ids == [], f"subscription without identifier: message carries {m2.sub_ids}")


@check("3.8.3.1", "no_local")
def check_no_local(cl: Clients):
    sub = cl.new("nl-sub", 0)
    other = cl.new("nl-other", 1)
    t = topic("nolocal")
    sub.subscribe((t, subopts(qos=1, no_local=True)))
    sub.publish(t, b"own")
    stop = sentinel(other, sub, t)
    own = before(sub, stop, lambda m: m.topic == t and m.payload == b"own")
    require(not own, "own message delivered despite No Local=1 (MQTT-3.8.3-3)")


@check("3.8.3.1", "retain_as_published")
def check_rap(cl: Clients):
    s0 = cl.new("rap0", 0)
    s1 = cl.new("rap1", 2)
    pub = cl.new("rap-pub", 1)
    t = topic("rap")
    try:
        s0.subscribe((t, subopts(rap=False)))
        s1.subscribe((t, subopts(rap=True)))
        pub.publish(t, b"r", qos=1, retain=True)
        m0, m1 = s0.wait_topic(t), s1.wait_topic(t)
        require(m0 is not None and m1 is not None, "retained publish not delivered to both")
        require(not m0.retain, "Retain As Published=0: live message forwarded with RETAIN=1 "
                               "(MQTT-3.3.1-12)")
        require(m1.retain, "Retain As Published=1: live message forwarded with RETAIN=0 "
                           "(MQTT-3.3.1-13)")
    finally:
        pub.publish(t, b"", qos=1, retain=True, allow_failure=True)


@check("3.8.3.1", "retain_handling")
def check_retain_handling(cl: Clients):
    pub = cl.new("rh-pub", 1)
    t = topic("rh")
    try:
        pub.publish(t, b"stored", qos=1, retain=True)
        problems = []
        subs = {}
        for rh in (0, 1, 2):
            s = cl.new(f"rh{rh}", rh % 2 * 2)   # devices 0, 2, 0
            s.subscribe((t, subopts(rh=rh)))
            s.subscribe((t, subopts(rh=rh)))   # the same filter again: replaces it
            subs[rh] = s
        pub.publish(t, b"live", qos=1)
        want = {0: 2, 1: 1, 2: 0}   # retained copies expected per subscriber
        for rh, s in subs.items():
            stop = s.wait_for(lambda m: m.topic == t and m.payload == b"live")
            require(stop is not None, f"RH={rh}: live message not delivered")
            n = len(before(s, stop, lambda m: m.payload == b"stored"))
            if n != want[rh]:
                problems.append(f"RH={rh}: {n} retained copies for two SUBSCRIBEs, want "
                                f"{want[rh]} (MQTT-3.3.1-{9 + rh}"
                                + (", MQTT-3.8.4-4)" if rh == 0 else ")"))
        require(not problems, "; ".join(problems))
    finally:
        pub.publish(t, b"", qos=1, retain=True, allow_failure=True)


@check("3.3.1.3", "retained_messages")
def check_retained(cl: Clients):
    pub = cl.new("ret-pub", 1)
    t = topic("retained")
    try:
        pub.publish(t, b"v1", qos=1, retain=True)
        s1 = cl.new("ret-s1", 0)
        s1.subscribe((t, 1))
        m = s1.wait_topic(t)
        require(m is not None, "retained message not delivered to a new subscriber")
        require(m.payload == b"v1" and m.retain,
                f"new subscriber got payload {m.payload!r} RETAIN={int(m.retain)}, "
                "want b'v1' RETAIN=1 (MQTT-3.3.1-9)")
        pub.publish(t, b"v2", qos=1, retain=True)
        s2 = cl.new("ret-s2", 2)
        s2.subscribe((t, 1))
        m = s2.wait_topic(t)
        require(m is not None and m.payload == b"v2" and m.retain,
                f"after replacing: new subscriber got "
                f"{(m.payload, m.retain) if m else None}, want (b'v2', RETAIN=1)"
                " (MQTT-3.3.1-5)")
        stop = sentinel(pub, s2, t)
        stale = before(s2, stop, lambda m: m.payload == b"v1")
        require(not stale, "replaced retained message v1 still delivered")
        pub.publish(t, b"", qos=1, retain=True)
        s3 = cl.new("ret-s3", 0)
        s3.subscribe((t, 1))
        stop = sentinel(pub, s3, t)
        left = before(s3, stop, lambda m: m.retain)
        require(not left, f"after an empty retained publish a new subscriber still got "
                          f"{[m.payload for m in left]} (MQTT-3.3.1-6)")
    finally:
        pub.publish(t, b"", qos=1, retain=True, allow_failure=True)


@check("4.8.2", "shared_subscription")
def check_shared(cl: Clients):
    group = f"g{RUN}"
    t = topic("shared")
    end = topic("shared-end")
    members = [cl.new("shr-a", 0), cl.new("shr-b", 2)]
    pub = cl.new("shr-pub", 1)
    for m in members:
        m.subscribe((f"$share/{group}/{t}", 1), (end, 1))
    n = 10
    for i in range(n):
        pub.publish(t, f"m{i}".encode(), qos=1)
    done = members[0]._wait(lambda: sum(len(m.on(t)) for m in members) >= n)
    pub.publish(end, b"end", qos=1)
    for m in members:
        require(m.wait_topic(end) is not None, f"{m.name}: end marker not delivered")
    got = [x.payload for m in members for x in m.on(t)]
    counts = [len(m.on(t)) for m in members]
    require(done, f"only {len(set(got))} of {n} messages delivered to the group")
    dups = sorted({p.decode() for p in got if got.count(p) > 1})
    require(not dups, f"messages delivered to more than one member: {dups} "
                      f"(per member: {counts})")
    require(len(set(got)) == n, f"{n - len(set(got))} messages lost")
    return f"split {counts[0]}/{counts[1]}"


@check("4.7.2", "dollar_topics_not_matched_by_wildcards")
def check_dollar(cl: Clients):
    """Needs the broker to accept PUBLISH to $conformance/... (certmq's authz:
    '#' never covers $-topics, so a rule must name $conformance/#)."""
    wild = cl.new("dlr-wild", 0)
    pub = cl.new("dlr-pub", 1)
    t = f"$conformance/{RUN}/x"
    wild.subscribe(("#", 1))
    wild.subscribe((f"+/{RUN}/x", 1))
    code = pub.publish(t, b"dollar", qos=1, allow_failure=True)
    require(code < 0x80, f"precondition: PUBLISH to {t} refused (0x{code:02X}); the broker's "
                         "authz must allow publish/subscribe on $conformance/# for this check")
    stop = sentinel(pub, wild, topic("dollar-sentinel"))
    bad = before(wild, stop, lambda m: (m.topic or "").startswith("$"))
    require(not bad, f"'#' or '+/{RUN}/x' matched {sorted({m.topic for m in bad})} "
                     "(MQTT-4.7.2-1)")
    # Control: an exact subscription to the $-topic should receive it; without
    # it the pass above could also mean the broker drops $-topic messages.
    ctrl = cl.new("dlr-ctrl", 2)
    try:
        ctrl.subscribe((t, 1))
    except CheckFailed as e:
        return f"wildcards did not match; control inconclusive: {e}"
    pub.publish(t, b"dollar-2", qos=1)
    if ctrl.wait_topic(t) is None:
        return "wildcards did not match; control inconclusive: the exact subscription " \
               "received nothing either"
    return None


@check("3.3.2.3.4", "topic_alias_client_to_server")
def check_alias_c2s(cl: Clients):
    sub = cl.new("tac-sub", 0)
    pub = cl.new("tac-pub", 1)
    tam = getattr(pub.connack_props, "TopicAliasMaximum", 0)
    require(tam >= 1, f"CONNACK Topic Alias Maximum is {tam}: the broker accepts no aliases "
                      "(3.2.2.3.8), nothing to check")
    t = topic("alias-c2s")
    sub.subscribe((t, 1))
    pub.publish(t, b"set", qos=1, TopicAlias=1)
    pub.publish("", b"use", qos=1, TopicAlias=1)
    got = sub.wait_count(t, 2)
    require(pub.disconnected is None,
            f"publisher disconnected: {pub.disconnected and pub.disconnected[1]}")
    payloads = [m.payload for m in got]
    require(payloads == [b"set", b"use"],
            f"subscriber got {payloads} on {t}, want [b'set', b'use'] "
            f"(other topics: {[m.topic for m in sub.msgs if m.topic != t]})")


@check("3.3.2.3.4,3.1.2.11.5", "topic_alias_server_to_client")
def check_alias_s2c(cl: Clients):
    maxa = 5
    sub = cl.new("tas-sub", 0, topic_alias_maximum=maxa)
    plain = cl.new("tas-plain", 2)             # Topic Alias Maximum absent = 0
    pub = cl.new("tas-pub", 1)
    ts = [topic("alias-s2c", str(i)) for i in range(2)]
    for s in (sub, plain):
        s.subscribe(*[(t, 1) for t in ts])
    order = [ts[0], ts[0], ts[1], ts[0], ts[1], ts[1]]
    for i, t in enumerate(order):
        pub.publish(t, f"{i}".encode(), qos=1)
    for s in (sub, plain):
        s._wait(lambda: len(s.msgs) >= len(order))
        got = [(m.topic, m.payload.decode()) for m in s.msgs]
        want = [(t, str(i)) for i, t in enumerate(order)]
        require(got == want, f"{s.name}: received {got}, want {want}"
                + (f" (aliases seen: {[(m.wire_topic, m.alias) for m in s.msgs]})"
                   if any(m.alias for m in s.msgs) else ""))
    bad = [m.alias for m in sub.msgs if m.alias is not None and not 1 <= m.alias <= maxa]
    require(not bad, f"aliases {bad} outside 1..{maxa} (MQTT-3.1.2-26)")
    aliased = [m for m in plain.msgs if m.alias is not None]
    require(not aliased, "Topic Alias sent to a client whose Topic Alias Maximum is 0 "
                         "(MQTT-3.1.2-27)")
    used = [m for m in sub.msgs if m.alias is not None]
    if not used:
        return "broker sent no topic aliases (allowed)"
    return (f"broker used aliases {sorted({m.alias for m in used})}; "
            f"{sum(1 for m in used if not m.wire_topic)} of {len(order)} PUBLISHes topic-less")


@check("4.9,3.3.4", "receive_maximum")
def check_receive_maximum(cl: Clients):
    sub = cl.new("rm-sub", 0, receive_maximum=2, manual_ack=True)
    pub = cl.new("rm-pub", 1)
    t = topic("recvmax")
    sub.subscribe((t, 1))
    n = 5
    for i in range(n):
        pub.publish(t, f"{i}".encode(), qos=1)
    got = sub.wait_count(t, 2)
    require(len(got) >= 2, f"only {len(got)} messages arrived before any PUBACK")
    # Absence can only be observed over a window: give a third message 1 s.
    time.sleep(1.0)
    got = sub.on(t)
    require(len(got) == 2, f"{len(got)} unacknowledged QoS 1 messages sent with "
                           "Receive Maximum 2 (MQTT-3.3.4-9, MQTT-4.9.0-2)")
    sub.ack(got[0])
    got = sub.wait_count(t, 3)
    require(len(got) >= 3, "no further message after one PUBACK")
    time.sleep(0.5)
    require(len(sub.on(t)) == 3, f"{len(sub.on(t))} messages after one PUBACK, want 3 "
                                 "(2 in flight)")
    for m in sub.on(t):
        if m is not got[0]:
            sub.ack(m)
    got = sub.wait_count(t, n)
    for m in got[3:]:
        sub.ack(m)
    require(len(got) == n, f"{len(got)} of {n} messages after acknowledging")
    require([m.payload for m in got] == [f"{i}".encode() for i in range(n)],
            f"order {[m.payload for m in got]}")


@check("3.1.2.11.4", "client_maximum_packet_size")
def check_max_packet(cl: Clients):
    limit = 256
    sub = cl.new("mps-sub", 0, maximum_packet_size=limit)
    pub = cl.new("mps-pub", 1)
    t = topic("maxpkt")
    sub.subscribe((t, 1))
    pub.publish(t, b"L" * 1000, qos=1)
    pub.publish(t, b"small", qos=1)
    stop = sub.wait_for(lambda m: m.topic == t and m.payload == b"small")
    require(sub.disconnected is None,
            f"subscriber disconnected ({sub.disconnected and sub.disconnected[1]}) instead of "
            "the broker discarding the oversized message (MQTT-3.1.2-25)")
    require(stop is not None, "the message that fits was not delivered")
    big = before(sub, stop, lambda m: len(m.payload) == 1000)
    require(not big, f"a PUBLISH larger than the client's Maximum Packet Size {limit} was "
                     "sent (MQTT-3.1.2-24)")


@check("3.3.2.3.3", "message_expiry_interval")
def check_expiry(cl: Clients):
    """(a) queued for an offline persistent session, (b) retained (3.3.1.3:
    an expired retained message is discarded). Same 2.5 s wait for both."""
    life = 30
    s = cl.new("mei-sub", 0, session_expiry=30)
    pub = cl.new("mei-pub", 1)
    t = topic("expiry")
    r_short, r_long = topic("expiry", "ret-short"), topic("expiry", "ret-long")
    s.subscribe((t, 1))
    s.disconnect()
    try:
        pub.publish(t, b"short", qos=1, MessageExpiryInterval=1)
        pub.publish(t, b"long", qos=1, MessageExpiryInterval=life)
        pub.publish(r_short, b"short", qos=1, retain=True, MessageExpiryInterval=1)
        pub.publish(r_long, b"long", qos=1, retain=True, MessageExpiryInterval=life)
        sent = time.monotonic()
        time.sleep(2.5)       # the feature is about time: let the 1 s messages expire
        problems, notes = [], []

        def check_remaining(m: Msg, what: str):
            waited = time.monotonic() - sent
            mei = m.prop("MessageExpiryInterval")
            if mei is None:
                problems.append(f"{what}: forwarded without Message Expiry Interval "
                                "(MQTT-3.3.2-6)")
            elif not 1 <= mei <= life - int(waited) + 1:
                problems.append(f"{what}: remaining Message Expiry Interval {mei} after "
                                f"{waited:.1f}s, want about {life - waited:.0f} (MQTT-3.3.2-6)")
            else:
                notes.append(f"{what} {mei}s left after {waited:.1f}s")

        # (a) offline persistent session
        s2 = cl.reconnect(s, clean_start=False, session_expiry=30)
        if not s2.session_present:
            problems.append("queued: session not resumed (Session Present=0, see "
                            "offline_queueing), nothing to check")
        else:
            m = s2.wait_for(lambda m: m.payload == b"long")
            if m is None:
                problems.append("queued: the unexpired message was not delivered")
            else:
                if before(s2, m, lambda x: x.payload == b"short"):
                    problems.append("queued: a message delivered after its expiry interval "
                                    "(MQTT-3.3.2-5)")
                check_remaining(m, "queued")
        # (b) retained
        r = cl.new("mei-ret", 2)
        r.subscribe((r_short, 1), (r_long, 1))
        m = r.wait_topic(r_long)
        if m is None:
            problems.append("retained: the unexpired retained message was not delivered")
        else:
            stop = sentinel(pub, r, r_short)
            if before(r, stop, lambda x: x.topic == r_short and x.payload == b"short"):
                problems.append("retained: an expired retained message was delivered to a new "
                                "subscriber (MQTT-3.3.2-5)")
            check_remaining(m, "retained")
        require(not problems, "; ".join(problems)
                + (f" (passed: {'; '.join(notes)})" if notes else ""))
        return "; ".join(notes)
    finally:
        for rt in (r_short, r_long):
            pub.publish(rt, b"", qos=1, retain=True, allow_failure=True)


@check("3.3.2.3", "publish_properties_passthrough")
def check_props(cl: Clients):
    sub = cl.new("pp-sub", 0)
    pub = cl.new("pp-pub", 1)
    t = topic("props")
    sub.subscribe((t, 1))
    up = [("k1", "v1"), ("k2", "v2"), ("k1", "v3")]
    sent = dict(PayloadFormatIndicator=1, ContentType="application/json; charset=utf-8",
                ResponseTopic=topic("props", "reply"), CorrelationData=b"\x00\x01corr\xff",
                UserProperty=up)
    pub.publish(t, b'{"a": 1}', qos=1, **sent)
    m = sub.wait_topic(t)
    require(m is not None, "message not delivered")
    diffs = []
    for k, v in sent.items():
        got = m.prop(k)
        if k == "UserProperty" and got is not None:
            got = [tuple(x) for x in got]
        if got != v:
            diffs.append(f"{k}: sent {v!r}, got {got!r}")
    require(m.payload == b'{"a": 1}', f"payload changed to {m.payload!r}")
    require(not diffs, "; ".join(diffs))


@check("3.1.2.4,4.1", "offline_queueing")
def check_offline(cl: Clients):
    s = cl.new("oq-sub", 0, session_expiry=30)
    pub = cl.new("oq-pub", 1)
    t = topic("offline")
    s.subscribe((t, 1))
    s.disconnect()
    for i in range(3):
        pub.publish(t, f"{i}".encode(), qos=1)
    s2 = cl.reconnect(s, clean_start=False, session_expiry=30)
    if not s2.session_present:
        got = s2.wait_count(t, 3, timeout=1.0)   # anything delivered anyway?
        raise CheckFailed("CONNACK Session Present=0 on reconnect (Clean Start=0, Session "
                          "Expiry 30 s) (MQTT-3.2.2-3); queued messages delivered: "
                          f"{[m.payload.decode() for m in got]} of ['0', '1', '2']")
    got = s2.wait_count(t, 3)
    require([m.payload for m in got] == [b"0", b"1", b"2"],
            f"queued messages delivered: {[m.payload for m in got]}, want [0, 1, 2]")


def vacuous_note(cl: Clients, control: Client) -> str | None:
    """Reconnects a control session (Session Expiry 30 s, not expired, no Clean
    Start): if the broker does not resume even that one, a pass that expects
    'no session' says nothing about this feature."""
    c2 = cl.reconnect(control, clean_start=False, session_expiry=30)
    if c2.session_present:
        return None
    return "vacuous: the broker resumed no session at all (control session with Session " \
           "Expiry 30 s also got Session Present=0, see offline_queueing)"


@check("3.1.2.11.2", "session_expiry")
def check_session_expiry(cl: Clients):
    s = cl.new("se-sub", 0, session_expiry=2)
    control = cl.new("se-control", 0, session_expiry=30)
    pub = cl.new("se-pub", 1)
    t = topic("sexp")
    s.subscribe((t, 1))
    control.subscribe((topic("sexp", "control"), 1))
    s.disconnect()
    control.disconnect()
    pub.publish(t, b"queued", qos=1)
    time.sleep(3.5)        # the feature is about time: outlive the 2 s session expiry
    s2 = cl.reconnect(s, clean_start=False)
    present = s2.session_present
    stop_t = topic("sexp", "sentinel")
    s2.subscribe((stop_t, 1))
    stop = sentinel(pub, s2, stop_t)
    queued = before(s2, stop, lambda m: m.topic == t)
    require(not present, "Session Present=1 after the Session Expiry Interval had passed "
                         "(MQTT-4.1.0-2)")
    require(not queued, "messages of an expired session delivered (MQTT-4.1.0-2)")
    return vacuous_note(cl, control)


@check("3.1.2.4", "clean_start_discards_session")
def check_clean_start(cl: Clients):
    s = cl.new("cs-sub", 0, session_expiry=30)
    control = cl.new("cs-control", 0, session_expiry=30)
    pub = cl.new("cs-pub", 1)
    t = topic("clean")
    s.subscribe((t, 1))
    control.subscribe((topic("clean", "control"), 1))
    s.disconnect()
    control.disconnect()
    pub.publish(t, b"queued", qos=1)
    s2 = cl.reconnect(s, clean_start=True, session_expiry=30)
    require(not s2.session_present, "Session Present=1 after Clean Start=1 (MQTT-3.2.2-2)")
    pub.publish(t, b"after", qos=1)      # the old subscription must be gone too
    stop_t = topic("clean", "sentinel")
    s2.subscribe((stop_t, 1))
    stop = sentinel(pub, s2, stop_t)
    old = before(s2, stop, lambda m: m.topic == t)
    require(not old, f"discarded session still delivered {[m.payload for m in old]} "
                     "(MQTT-3.1.2-4)")
    return vacuous_note(cl, control)


@check("3.2.2.3.7", "assigned_client_identifier")
def check_assigned_id(cl: Clients):
    c = Client("aci", CFG.device(0), client_id="")
    cl.all.append(c)
    c.connect(expect_success=False)
    reason = c.connack[1]
    if reason.is_failure:
        require(rc_value(reason) == 0x85,
                f"empty client id refused with {reason}, not 0x85 (3.1.3.1)")
        return "empty client id refused with 0x85 Client Identifier not valid (allowed by 3.1.3.1)"
    aci = getattr(c.connack_props, "AssignedClientIdentifier", None)
    require(aci, "CONNACK accepted an empty client id without an Assigned Client "
                 "Identifier (MQTT-3.2.2-16, MQTT-3.1.3-7)")
    return f"assigned {aci!r}"


@check("3.2.2.3.14", "server_keep_alive")
def check_server_keep_alive(cl: Clients):
    c = cl.new("ska", 0, keepalive=30)
    ska = getattr(c.connack_props, "ServerKeepAlive", None)
    if ska is None:
        return "no Server Keep Alive in CONNACK (client's 30 s applies)"
    require(0 <= ska <= 65535, f"Server Keep Alive {ska}")
    return f"Server Keep Alive {ska} s (client asked 30 s)"


@check("3.1.2.5", "will_on_abnormal_disconnect")
def check_will(cl: Clients):
    wt = topic("will", "abnormal")
    watch = cl.new("will-watch", 1)
    watch.subscribe((wt, 1))
    w = cl.new("will-client", 0, will=dict(topic=wt, payload=b"gone", qos=1))
    w.drop()
    m = watch.wait_topic(wt)
    require(m is not None, f"no Will Message within {WAIT:.0f}s of the connection closing "
                           "without DISCONNECT (MQTT-3.1.2-8)")
    require(m.payload == b"gone", f"will payload {m.payload!r}")


@check("3.14.4", "no_will_on_normal_disconnect")
def check_no_will(cl: Clients):
    """Both encodings of a normal DISCONNECT: E0 00 (paho's disconnect()) and
    E0 01 00 (paho's disconnect(reasoncode=0x00): a reason code and no property
    length, valid per 3.14.2.2.1 'If the Remaining Length is less than 2, a
    value of 0 is used')."""
    wt = topic("will", "normal")
    watch = cl.new("nw-watch", 1)
    watch.subscribe((wt, 1))
    bad = []
    for name, form, reason in (("nw-short", "E0 00", None), ("nw-reason", "E0 01 00", 0)):
        payload = f"will {form}".encode()
        w = cl.new(name, 0, will=dict(topic=wt, payload=payload, qos=1))
        w.disconnect(reason)
        stop = sentinel(watch, watch, wt)
        if before(watch, stop, lambda m: m.payload == payload):
            bad.append(form)
    require(not bad, f"Will Message published after a normal DISCONNECT encoded as "
                     f"{' and '.join(bad)} (MQTT-3.14.4-3)")


@check("3.1.3.2.2", "will_delay_interval")
def check_will_delay(cl: Clients):
    delay = 2
    wt = topic("will", "delay")
    watch = cl.new("wd-watch", 1)
    watch.subscribe((wt, 1))
    w = cl.new("wd-client", 0, session_expiry=30,
               will=dict(topic=wt, payload=b"late", qos=1, delay=delay))
    w.drop()
    t0 = time.monotonic()
    m = watch.wait_topic(wt, timeout=delay + 3)
    require(m is not None, f"no Will Message within {delay + 3}s (Will Delay {delay}s)")
    after = m.at - t0
    require(after >= delay - 0.5, f"Will Message published {after:.1f}s after the connection "
                                  f"closed, before its Will Delay Interval of {delay}s "
                                  "(Session Expiry 30 s, so the session had not ended; "
                                  "MQTT-3.1.2-8)")
    return f"will published after {after:.1f}s"


@check("3.1.3.2.2", "will_delay_cancelled_by_reconnect")
def check_will_delay_cancel(cl: Clients):
    delay = 2
    wt = topic("will", "cancel")
    watch = cl.new("wc-watch", 1)
    watch.subscribe((wt, 1))
    w = cl.new("wc-client", 0, session_expiry=30,
               will=dict(topic=wt, payload=b"late", qos=1, delay=delay))
    w.drop()
    t0 = time.monotonic()
    w2 = cl.reconnect(w, clean_start=False, session_expiry=30)
    back = time.monotonic() - t0
    require(back < delay, f"reconnect took {back:.1f}s, not within the {delay}s delay")
    # The feature is about time: watch past the delay for a will that must not come.
    m = watch.wait_topic(wt, timeout=delay + 1.5)
    require(m is None, f"Will Message published {m.at - t0:.1f}s after the drop although the "
                       f"client reconnected to its session (Clean Start=0, Session Expiry "
                       f"30 s) after {back:.1f}s, within the Will Delay Interval of {delay}s "
                       f"(MQTT-3.1.3-9; CONNACK Session Present={int(w2.session_present)})"
                       if m else "")
    require(w2.session_present, "reconnect within the delay found no session (Session "
                                "Present=0)")


@check("3.1.4", "session_takeover")
def check_takeover(cl: Clients):
    first = cl.new("tko", 0)
    second = cl.reconnect(first)
    d = first.wait_disconnected()
    require(d is not None, "first connection not closed after a second CONNECT with the "
                           "same client id (MQTT-3.1.4-3)")
    flags, reason, _ = d
    require(getattr(flags, "is_disconnect_packet_from_server", False),
            f"first connection closed without a DISCONNECT packet ({reason})")
    require(reason is not None and rc_value(reason) == 0x8E,
            f"DISCONNECT reason {reason}, want 0x8E Session taken over")
    require(second.disconnected is None, "second connection closed too")


@check("4.4", "redelivery_with_dup")
def check_redelivery(cl: Clients):
    s = cl.new("dup-sub", 0, session_expiry=30, manual_ack=True)
    pub = cl.new("dup-pub", 1)
    t = topic("dup")
    s.subscribe((t, 1))
    pub.publish(t, b"unacked", qos=1)
    m = s.wait_topic(t)
    require(m is not None, "message not delivered")
    require(not m.dup, "first delivery has DUP=1")
    s.drop()                                  # no PUBACK ever sent
    s2 = cl.reconnect(s, clean_start=False, session_expiry=30)
    if not s2.session_present:
        r = s2.wait_topic(t, timeout=1.0)        # resent anyway?
        raise CheckFailed("Session Present=0 on reconnect of a persistent session (Clean "
                          "Start=0, Session Expiry 30 s) (MQTT-3.2.2-3); unacknowledged "
                          f"message {'resent' if r else 'not resent'}")
    r = s2.wait_topic(t)
    require(r is not None, "unacknowledged QoS 1 message not resent after reconnect "
                           "(MQTT-4.4.0-1)")
    require(r.payload == b"unacked", f"resent payload {r.payload!r}")
    require(r.dup, "resent PUBLISH has DUP=0 (MQTT-3.3.1-1)")
    require(r.mid == m.mid, f"resent with packet id {r.mid}, original {m.mid} (MQTT-4.4.0-1)")


# --------------------------------------------------------------------------
# Runner


def run_one(section: str, name: str, fn: Callable) -> bool:
    result: dict = {}

    def target():
        cl = Clients()
        try:
            result["note"] = fn(cl)
            result["ok"] = True
        except CheckFailed as e:
            result["why"] = str(e)
        except Exception as e:          # a client error, not a verdict on the broker
            result["why"] = f"{type(e).__name__}: {e}"
            if CFG.verbose:
                traceback.print_exc()
        finally:
            cl.close()

    th = threading.Thread(target=target, name=name, daemon=True)
    th.start()
    th.join(CHECK_LIMIT)
    if th.is_alive():
        result = {"why": f"check did not finish within {CHECK_LIMIT:.0f}s"}
    if result.get("ok"):
        note = result.get("note")
        print(f"PASS {section} {name}" + (f": {note}" if note else ""), flush=True)
        return True
    print(f"FAIL {section} {name}: {result.get('why', 'unknown')}", flush=True)
    return False


def main() -> int:
    global CFG
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", default=[],
                    help="run only this check (repeatable, or comma-separated)")
    ap.add_argument("--list", action="store_true", help="list the checks and exit")
    ap.add_argument("--verbose", "-v", action="store_true", help="log MQTT packets")
    args = ap.parse_args()
    if args.list:
        for section, name, _ in CHECKS:
            print(f"{name}  ({section})")
        return 0
    only = {n.strip() for o in args.only for n in o.split(",") if n.strip()}
    unknown = only - {n for _, n, _ in CHECKS}
    if unknown:
        print(f"unknown check(s): {', '.join(sorted(unknown))}; see --list", file=sys.stderr)
        return 2
    CFG = Config.from_env(args.verbose)
    selected = [c for c in CHECKS if not only or c[1] in only]
    ok = [run_one(*c) for c in selected]
    print(f"# {sum(ok)}/{len(ok)} passed (paho-mqtt {version('paho-mqtt')}, "
          f"run {RUN})")
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
