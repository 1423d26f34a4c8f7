"""MQTT interoperability cases, driven by paho-mqtt 2.x, run against printgate and Mosquitto.

The cases cover those of the Eclipse Paho interoperability suite (`client_test.py` for MQTT
3.1.1, `client_test5.py` for MQTT 5), written anew for this project, plus printgate's own
(keep-alive 0, empty client ids). Every case logs in with the user name and password given,
uses client ids and topics of its own under TOPIC_ROOT (so the broker's other retained topics,
e.g. printgate's `printgate/...`, never meet it), and the cases of a suite run at the same time,
each in its own thread, so a suite takes as long as its slowest case.

Usage: interop.py HOST PORT USER PASSWORD TOPIC_ROOT (v311 | v5 | CASE...)
Prints one JSON line per case, {"case": ..., "ok": bool, "error": ..., ...}, and exits 0 when
every case passed, 1 when not (the caller compares brokers case by case).
"""
import json
import socket
import struct
import sys
import threading
import time
import traceback

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

host, port, user, password, root = sys.argv[1:6]
port = int(port)
selection = sys.argv[6:]
WAIT = 5.0
# How long to wait for something that must not arrive.
QUIET = 0.7
# Logins in progress at once: brokers limit connections that have not logged in yet per source
# address (printgate: 8), and every case connects from loopback.
LOGINS = threading.BoundedSemaphore(4)


class Failed(Exception):
    pass


def check(cond, what, **detail):
    if not cond:
        raise Failed(what + (" " + json.dumps(detail, default=str) if detail else ""))


def props(kind, **values):
    p = Properties(kind)
    for k, v in values.items():
        setattr(p, k, v)
    return p


class Peer:
    """One MQTT client identity (client id) of a case, connected with a fresh paho client each
    time; what it receives is kept across its connections."""

    def __init__(self, case, name, v5):
        self.case = case
        self.id = f"{case.prefix}-{name}" if name is not None else ""
        self.v5 = v5
        self.c = None
        self.cond = threading.Condition()
        self.messages = []
        self.subacks = []
        self.disconnects = []
        self.connack = None

    # -- paho callbacks -------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, rc, properties):
        with self.cond:
            self.connack = {
                "rc": rc.value,
                "present": bool(flags.session_present),
                "props": properties,
            }
            self.cond.notify_all()

    def _on_message(self, client, userdata, msg):
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, codes, properties):
        with self.cond:
            self.subacks.append([c.value for c in codes])
            self.cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, rc, properties):
        with self.cond:
            self.disconnects.append(rc.value if hasattr(rc, "value") else rc)
            self.cond.notify_all()

    # -- blocking helpers -----------------------------------------------------------------
    def wait(self, pred, timeout=WAIT):
        with self.cond:
            return self.cond.wait_for(pred, timeout)

    def connect(self, clean=True, keepalive=30, properties=None, will=None, manual_ack=False):
        """Connect and wait for the CONNACK; returns it (rc, present, props)."""
        protocol = mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311
        kwargs = {} if self.v5 else {"clean_session": clean}
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.id,
            protocol=protocol,
            manual_ack=manual_ack,
            **kwargs,
        )
        c.username_pw_set(user, password)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_disconnect = self._on_disconnect
        if will is not None:
            c.will_set(*will)
        with self.cond:
            self.connack = None
            self.disconnects = []
        self.c = c
        with LOGINS:
            if self.v5:
                c.connect(host, port, keepalive=keepalive, clean_start=clean, properties=properties)
            else:
                c.connect(host, port, keepalive=keepalive)
            c.loop_start()
            self.wait(lambda: self.connack is not None or self.disconnects)
        check(self.connack is not None or self.disconnects, "no CONNACK")
        check(self.connack is not None, "disconnected before CONNACK", got=self.disconnects)
        check(self.connack["rc"] == 0, "CONNACK refused", rc=self.connack["rc"])
        return self.connack

    def subscribe(self, filters, properties=None):
        """Subscribe to [(filter, qos or SubscribeOptions)]; the SUBACK's codes."""
        n = len(self.subacks)
        if self.v5:
            self.c.subscribe(filters, properties=properties)
        else:
            self.c.subscribe(filters)
        check(self.wait(lambda: len(self.subacks) > n or self.disconnects), "no SUBACK")
        check(len(self.subacks) > n, "disconnected instead of SUBACK", got=self.disconnects)
        return self.subacks[n]

    def unsubscribe(self, filters):
        done = threading.Event()
        self.c.on_unsubscribe = lambda *a: done.set()
        self.c.unsubscribe(filters)
        check(done.wait(WAIT), "no UNSUBACK")

    def publish(self, topic, payload, qos=0, retain=False, properties=None, wait=True):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if wait and qos > 0:
            info.wait_for_publish(WAIT)
            check(info.is_published(), f"QoS {qos} publish to {topic} not acknowledged")
        return info

    def got(self, n, timeout=WAIT):
        """Wait until at least n messages arrived; then wait QUIET for any extra ones."""
        self.wait(lambda: len(self.messages) >= n, timeout)
        time.sleep(QUIET)
        return list(self.messages)

    def clear(self):
        with self.cond:
            self.messages = []

    def disconnect(self, properties=None):
        if self.c is None:
            return
        if self.v5:
            self.c.disconnect(properties=properties)
        else:
            self.c.disconnect()
        self.c.loop_stop()
        self.c = None

    def pause(self):
        """Stop reading from the socket (no acks, no pings), the connection stays open."""
        self.c.loop_stop()

    def terminate(self):
        """End the connection without a DISCONNECT (the broker must then send the will)."""
        c, self.c = self.c, None
        c.loop_stop()
        sock = c.socket()
        if sock is not None:
            sock.close()


class Case:
    def __init__(self, name, v5):
        self.name = name
        self.v5 = v5
        self.prefix = f"{root.replace('/', '_')}-{'v5' if v5 else 'v311'}-{name}"
        base = f"{root}/{'v5' if v5 else 'v311'}/{name}"
        self.base = base
        self.topics = [base + t for t in ("/TopicA", "/TopicA/B", "/Topic/C", "/TopicA/C", "//TopicA")]
        self.wild = [base + t for t in ("/TopicA/+", "/+/C", "/#", "//#", "//+", "/+/+", "/TopicA/#")]
        self.peers = []

    def peer(self, name):
        p = Peer(self, name, self.v5)
        self.peers.append(p)
        return p

    def close(self):
        for p in self.peers:
            try:
                p.disconnect()
            except Exception:
                pass


def opts(qos, **kw):
    return SubscribeOptions(qos=qos, **kw)


def sub(case, qos, **kw):
    return opts(qos, **kw) if case.v5 else qos


# -- raw packets, for what paho will not send -----------------------------------------------
def mqtt_string(b):
    return struct.pack("!H", len(b)) + b


def raw_connect(level, flags, keepalive, client_id, name=b"MQTT"):
    body = mqtt_string(name) + bytes([level, 0xC0 | flags]) + struct.pack("!H", keepalive)
    if level == 5:
        body += b"\x00"
    body += mqtt_string(client_id.encode()) + mqtt_string(user.encode()) + mqtt_string(password.encode())
    assert len(body) < 128
    return bytes([0x10, len(body)]) + body


def read_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return buf
        buf += chunk
    return buf


def read_connack(s):
    head = read_exact(s, 2)
    if len(head) < 2 or head[0] != 0x20:
        return None
    return read_exact(s, head[1])


def closed_soon(s):
    """Whether the broker closes the socket (anything it sends first is skipped)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            if s.recv(256) == b"":
                return True
        except socket.timeout:
            return False
        except ConnectionError:
            return True
    return False


def raw_socket():
    return socket.create_connection((host, port), timeout=WAIT)


def raw_login(level, flags, keepalive, client_id, name=b"MQTT"):
    """A raw connection that sent this CONNECT; returns (socket, CONNACK body or None)."""
    with LOGINS:
        s = raw_socket()
        s.sendall(raw_connect(level, flags, keepalive, client_id, name))
        try:
            return s, read_connack(s)
        except (socket.timeout, ConnectionError):
            return s, None


# -- the cases ------------------------------------------------------------------------------
CASES = {}


def case(*versions):
    def register(f):
        for v in versions:
            CASES.setdefault(v, {})[f.__name__.replace("_", "-")] = f
        return f

    return register


@case("v311", "v5")
def basic(t):
    a = t.peer("a")
    a.connect()
    a.disconnect()
    ack = a.connect()
    check(not ack["present"], "session present after a clean connect")
    a.subscribe([(t.topics[0], sub(t, 2))])
    for q in range(3):
        a.publish(t.topics[0], f"qos {q}", q)
    got = a.got(3)
    check(len(got) == 3, "own messages back", got=[m.payload for m in got])
    a.disconnect()
    # A second CONNECT on the same connection is a protocol violation: the broker closes it.
    level = 5 if t.v5 else 4
    s, ack = raw_login(level, 0x02, 30, t.prefix + "-raw")
    check(ack is not None and ack[1] == 0, "raw CONNECT accepted")
    s.sendall(raw_connect(level, 0x02, 30, t.prefix + "-raw"))
    check(closed_soon(s), "a second CONNECT on one connection closes it")
    # A wrong protocol name: refused (with or without a CONNACK) and closed.
    s, _ = raw_login(level, 0x02, 30, t.prefix + "-hj", name=b"hj")
    check(closed_soon(s), "a CONNECT with protocol name 'hj' is refused")


@case("v311", "v5")
def retained(t):
    up = props(PacketTypes.PUBLISH, UserProperty=[("a", "2"), ("c", "3")]) if t.v5 else None
    a = t.peer("a")
    a.connect()
    for q, topic in enumerate(t.topics[1:4]):
        a.publish(topic, f"qos {q}", q, retain=True, properties=up)
    a.publish(t.topics[1], "qos 0 replaced", 0, retain=True, properties=up)
    b = t.peer("b")
    b.connect()
    b.subscribe([(t.wild[5], sub(t, 2))])
    got = b.got(3)
    check(len(got) == 3, "three retained messages on subscribe", got=[(m.topic, m.payload) for m in got])
    check(all(m.retain for m in got), "retain flag set on retained messages")
    check(sorted(m.qos for m in got) == [0, 1, 2], "retained QoS kept", got=[m.qos for m in got])
    by_topic = {m.topic: m.payload for m in got}
    check(by_topic.get(t.topics[1]) == b"qos 0 replaced", "a retained message replaces the old one", got=by_topic)
    if t.v5:
        for m in got:
            ups = sorted(getattr(m.properties, "UserProperty", []))
            check(ups == [("a", "2"), ("c", "3")], "user properties kept with retained message", got=ups)
    # A live message to a subscriber carries retain 0 (3.1.1 3.3.1-9; MQTT 5 without RAP).
    b.clear()
    a.publish(t.topics[1], "live", 1, retain=True)
    got = b.got(1)
    check(len(got) == 1 and not got[0].retain, "live publish delivered with retain 0", got=[(m.payload, m.retain) for m in got])
    # Clear with empty payloads: nothing retained is left.
    for q, topic in enumerate(t.topics[1:4]):
        a.publish(topic, b"", q, retain=True)
    time.sleep(0.3)
    c = t.peer("c")
    c.connect()
    c.subscribe([(t.wild[5], sub(t, 2))])
    got = c.got(0, timeout=0)
    check(got == [], "no retained message after clearing", got=[(m.topic, m.payload) for m in got])


@case("v311", "v5")
def will(t):
    wp = props(PacketTypes.WILLMESSAGE, WillDelayInterval=0, UserProperty=[("a", "2"), ("c", "3")]) if t.v5 else None
    b = t.peer("b")
    b.connect(clean=True)
    b.subscribe([(t.topics[2], sub(t, 2))])
    a = t.peer("a")
    a.connect(will=(t.topics[2], "client not disconnected", 1, False, wp), keepalive=2)
    a.terminate()
    got = b.got(1)
    check(len(got) == 1 and got[0].payload == b"client not disconnected", "will delivered", got=[m.payload for m in got])
    if t.v5:
        ups = getattr(got[0].properties, "UserProperty", [])
        check(ups == [("a", "2"), ("c", "3")], "will user properties in order", got=ups)
    # A normal DISCONNECT discards the will.
    b.clear()
    a.connect(will=(t.topics[2], "must not arrive", 1, False, wp))
    a.disconnect()
    got = b.got(0, timeout=0)
    check(got == [], "no will after DISCONNECT", got=[m.payload for m in got])


@case("v311", "v5")
def zero_length_clientid(t):
    if t.v5:
        # MQTT 5: clean start 0 or 1, the broker assigns an id either way.
        for clean in (False, True):
            z = t.peer(None)
            ack = z.connect(clean=clean)
            check(ack["rc"] == 0, "empty id accepted", clean=clean)
            z.disconnect()
        return
    s, ack = raw_login(4, 0x00, 30, "")
    check(ack == b"\x00\x02", "3.1.1 persistent session with empty id: return code 2",
          got=ack.hex() if ack else None)
    check(closed_soon(s), "closed after the refusal")
    z = t.peer(None)
    z.connect(clean=True)
    z.subscribe([(t.topics[0], 1)])
    z.publish(t.topics[0], "hello", 1)
    got = z.got(1)
    check(len(got) == 1, "a clean session with empty id works", got=[m.payload for m in got])


@case("v311", "v5")
def offline_message_queueing(t):
    a = t.peer("a")
    if t.v5:
        a.connect(clean=True, properties=props(PacketTypes.CONNECT, SessionExpiryInterval=99999))
    else:
        a.connect(clean=False)
    a.subscribe([(t.wild[5], sub(t, 2))])
    a.disconnect()
    b = t.peer("b")
    b.connect()
    for q, topic in enumerate(t.topics[1:4]):
        b.publish(topic, f"qos {q}", q)
    b.disconnect()
    ack = a.connect(clean=False)
    check(ack["present"], "session present on reconnect")
    got = a.got(3)
    check(len(got) in (2, 3), "queued messages delivered", got=[m.payload for m in got])
    check({m.payload for m in got} >= {b"qos 1", b"qos 2"}, "QoS 1 and 2 were queued", got=[m.payload for m in got])
    a.disconnect()


@case("v311", "v5")
def overlapping_subscriptions(t):
    a = t.peer("a")
    a.connect()
    a.subscribe([(t.wild[6], sub(t, 2)), (t.wild[0], sub(t, 1))])
    a.publish(t.topics[3], "overlapping topic filters", 2)
    got = a.got(1)
    qos = sorted(m.qos for m in got)
    check(qos in ([2], [1, 2]), "one message at QoS 2, or one per subscription", got=qos)


@case("v311", "v5")
def keepalive(t):
    b = t.peer("b")
    b.connect(keepalive=0)
    b.subscribe([(t.topics[4], sub(t, 2))])
    a = t.peer("a")
    a.connect(keepalive=2, will=(t.topics[4], "keepalive expiry", 1, False, None))
    started = time.monotonic()
    a.pause()  # silent: no PINGREQ
    got = b.got(1, timeout=10)
    check(len(got) == 1 and got[0].payload == b"keepalive expiry", "will after keep-alive expiry",
          got=[m.payload for m in got])
    check(time.monotonic() - started >= 2.9, "not before 1.5 x keep-alive")
    check(b.disconnects == [], "the keep-alive 0 client stays connected", got=b.disconnects)


@case("v311", "v5")
def redelivery_on_reconnect(t):
    expiry = props(PacketTypes.CONNECT, SessionExpiryInterval=99999) if t.v5 else None
    b = t.peer("b")
    b.connect(clean=False, properties=expiry)
    b.subscribe([(t.wild[6], sub(t, 2))])
    b.pause()  # stops reading: nothing is acknowledged
    a = t.peer("a")
    a.connect()
    a.publish(t.topics[1], "q1", 1)
    a.publish(t.topics[3], "q2", 2)
    time.sleep(0.5)
    b.terminate()
    b.clear()
    b.connect(clean=False, properties=expiry)
    got = b.got(2)
    check(sorted(m.payload for m in got) == [b"q1", b"q2"], "unacknowledged messages sent again",
          got=[m.payload for m in got])


@case("v311", "v5")
def subscribe_failure(t):
    # A filter this user may not subscribe to (the reference Mosquitto's ACL denies it): the
    # SUBACK says so and the connection stays up. Neither broker refuses it today (Mosquitto's
    # file ACL filters deliveries instead, printgate lets this user subscribe anywhere).
    a = t.peer("a")
    a.connect()
    codes = a.subscribe([(f"{t.base}/nosubscribe", sub(t, 2))])
    check(codes and codes[0] >= 0x80, "failure return code", got=codes)
    a.subscribe([(t.topics[0], sub(t, 1))])


@case("v311", "v5")
def dollar_topics(t):
    b = t.peer("b")
    b.connect(keepalive=0)
    uniq = t.prefix
    b.subscribe([(f"+/{uniq}/x", sub(t, 2)), (f"#", sub(t, 0))])
    time.sleep(QUIET)  # other retained messages of the broker
    b.clear()
    # A wildcard at the first level never matches a topic starting with '$' (4.7.2-1); the
    # publish is answered (or refused) without losing the connection.
    b.publish(f"$dollar/{uniq}/x", "", 1)
    b.publish(f"$SYS/{uniq}/x", "", 1)
    b.publish(f"{t.base}/{uniq}/x", "control", 1)
    got = [m for m in b.got(1) if uniq in m.topic]
    check([m.topic for m in got] == [f"{t.base}/{uniq}/x"], "only the non-$ topic delivered",
          got=[m.topic for m in got])
    check(b.disconnects == [], "still connected", got=b.disconnects)


@case("v311", "v5")
def unsubscribe(t):
    b = t.peer("b")
    b.connect()
    for topic in t.topics[0:3]:
        b.subscribe([(topic, sub(t, 2))])
    b.unsubscribe([t.topics[0]])
    b.unsubscribe([t.base + "/never-subscribed"])
    a = t.peer("a")
    a.connect()
    for i, topic in enumerate(t.topics[0:3]):
        a.publish(topic, f"topic {i}", 1)
    got = b.got(2)
    check(sorted(m.topic for m in got) == sorted(t.topics[1:3]), "only the still subscribed topics",
          got=[m.topic for m in got])


@case("v311")
def keepalive0(t):
    """Keep-alive 0 (keep-alive off): silent for longer than any keep-alive a broker could be
    applying, then the client's own publish comes back."""
    a = t.peer("a")
    a.connect(keepalive=0)
    a.subscribe([(t.topics[0], sub(t, 1))])
    time.sleep(3.0)
    a.publish(t.topics[0], "hello", 1)
    got = a.got(1)
    check(len(got) == 1 and a.disconnects == [], "own message back", got=[m.payload for m in got])


CASES["v5"]["keepalive0"] = keepalive0


@case("v311")
def keepalive_enforced(t):
    """keep-alive 1 and then silence: dropped by the broker, not before 1.5 s (3.1.2-24) and
    within a few seconds (Mosquitto 2.0 checks keep-alives every few seconds)."""
    s, ack = raw_login(4, 0x02, 1, t.prefix + "-silent")
    check(ack is not None and len(ack) >= 2 and ack[1] == 0, "login accepted")
    start = time.monotonic()
    s.settimeout(10)
    try:
        closed = s.recv(1) == b""
    except socket.timeout:
        closed = False
    except ConnectionError:
        closed = True
    elapsed = time.monotonic() - start
    check(closed and 1.45 <= elapsed <= 8.0, "dropped after 1.5 x keep-alive", closed=closed,
          elapsed=round(elapsed, 2))


# -- MQTT 5 only ----------------------------------------------------------------------------
def connect_props(**values):
    return props(PacketTypes.CONNECT, **values)


@case("v5")
def session_expiry(t):
    a = t.peer("a")
    ack = a.connect(clean=True, properties=connect_props(SessionExpiryInterval=0))
    check(not ack["present"], "fresh session")
    a.subscribe([(t.topics[0], opts(2))])
    a.disconnect()
    ack = a.connect(clean=False, properties=connect_props(SessionExpiryInterval=0))
    check(not ack["present"], "expiry 0: the session ended with the connection")
    a.disconnect()
    five = connect_props(SessionExpiryInterval=3)
    a.connect(clean=True, properties=five)
    a.subscribe([(t.topics[0], opts(2))])
    a.disconnect()
    time.sleep(1)
    ack = a.connect(clean=False, properties=five)
    check(ack["present"], "session kept within its expiry")
    a.disconnect()
    time.sleep(5)
    ack = a.connect(clean=False, properties=five)
    check(not ack["present"], "session gone after its expiry")
    a.disconnect()
    one = connect_props(SessionExpiryInterval=1)
    a.connect(clean=True, properties=one)
    a.subscribe([(t.topics[0], opts(2))])
    a.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=5))
    time.sleep(2)
    ack = a.connect(clean=False, properties=one)
    check(ack["present"], "the DISCONNECT's longer expiry applies")
    a.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=0))
    ack = a.connect(clean=False, properties=one)
    check(not ack["present"], "the DISCONNECT's expiry 0 ends the session")


@case("v5")
def user_properties(t):
    a = t.peer("a")
    a.connect()
    a.subscribe([(t.topics[0], opts(2))])
    up = props(PacketTypes.PUBLISH, UserProperty=[("a", "2"), ("c", "3"), ("a", "1")])
    for q in range(3):
        a.publish(t.topics[0], b"", q, properties=up)
    got = a.got(3)
    check(sorted(m.qos for m in got) == [0, 1, 2], "three messages", got=[m.qos for m in got])
    for m in got:
        ups = getattr(m.properties, "UserProperty", None)
        check(ups == [("a", "2"), ("c", "3"), ("a", "1")], "user properties unchanged and in order", got=ups)


@case("v5")
def payload_format(t):
    a = t.peer("a")
    a.connect()
    a.subscribe([(t.topics[0], opts(2))])
    pp = props(PacketTypes.PUBLISH, PayloadFormatIndicator=1, ContentType="My name")
    for q in range(3):
        a.publish(t.topics[0], "text", q, properties=pp)
    got = a.got(3)
    check(len(got) == 3, "three messages", got=len(got))
    for m in got:
        check(getattr(m.properties, "ContentType", None) == "My name", "content type kept")
        check(getattr(m.properties, "PayloadFormatIndicator", None) == 1, "payload format kept")


@case("v5")
def publication_expiry(t):
    b = t.peer("b")
    b.connect(clean=True, properties=connect_props(SessionExpiryInterval=99999))
    b.subscribe([(t.topics[0], opts(2))])
    b.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=999999999))
    a = t.peer("a")
    a.connect()
    short = props(PacketTypes.PUBLISH, MessageExpiryInterval=1)
    a.publish(t.topics[0], "qos 1 - expire", 1, properties=short)
    a.publish(t.topics[0], "qos 2 - expire", 2, properties=short)
    long = props(PacketTypes.PUBLISH, MessageExpiryInterval=6)
    a.publish(t.topics[0], "qos 1 - keep", 1, properties=long)
    a.publish(t.topics[0], "qos 2 - keep", 2, properties=long)
    time.sleep(2.5)
    b.connect(clean=False)
    got = b.got(2)
    check(sorted(m.payload for m in got) == [b"qos 1 - keep", b"qos 2 - keep"], "expired messages dropped",
          got=[m.payload for m in got])
    for m in got:
        left = getattr(m.properties, "MessageExpiryInterval", None)
        check(left is not None and left < 6, "expiry counts down while stored", got=left)


@case("v5")
def subscribe_options(t):
    # noLocal: a's own message does not come back to it, b gets it.
    a, b = t.peer("a"), t.peer("b")
    a.connect()
    b.connect()
    a.subscribe([(t.topics[0], opts(2, noLocal=True))])
    b.subscribe([(t.topics[0], opts(2, noLocal=True))])
    a.publish(t.topics[0], "noLocal test", 1)
    got_b = b.got(1)
    check(len(got_b) == 1, "the other subscriber gets it", got=len(got_b))
    check(a.messages == [], "noLocal: not sent back to the publisher", got=[m.payload for m in a.messages])
    a.disconnect()
    b.disconnect()
    # retainAsPublished: live messages keep the publisher's retain flag.
    a.clear()
    a.connect()
    a.subscribe([(t.topics[0], opts(2, retainAsPublished=True))])
    a.publish(t.topics[0], "rap false", 1, retain=False)
    a.publish(t.topics[0], "rap true", 1, retain=True)
    got = a.got(2)
    check([(m.payload, m.retain) for m in got] == [(b"rap false", False), (b"rap true", True)],
          "retain as published", got=[(m.payload, m.retain) for m in got])
    a.publish(t.topics[0], b"", 1, retain=True)
    a.disconnect()
    # retainHandling 1: retained messages only on a new subscription.
    a.clear()
    a.connect()
    for q, topic in enumerate(t.topics[1:4]):
        a.publish(topic, f"qos {q}", q, retain=True)
    time.sleep(0.3)
    a.subscribe([(t.wild[5], opts(2, retainHandling=1))])
    got = a.got(3)
    check(sorted(m.qos for m in got) == [0, 1, 2], "retainHandling 1, new subscription", got=[m.qos for m in got])
    a.clear()
    a.subscribe([(t.wild[5], opts(2, retainHandling=1))])
    got = a.got(0, timeout=0)
    check(got == [], "retainHandling 1, existing subscription", got=len(got))
    a.disconnect()
    # retainHandling 2: never.
    a.connect()
    a.subscribe([(t.wild[5], opts(2, retainHandling=2))])
    a.subscribe([(t.wild[5], opts(2, retainHandling=2))])
    got = a.got(0, timeout=0)
    check(got == [], "retainHandling 2", got=len(got))
    a.disconnect()
    # retainHandling 0: on every subscribe.
    a.connect()
    a.subscribe([(t.wild[5], opts(2, retainHandling=0))])
    got = a.got(3)
    check(sorted(m.qos for m in got) == [0, 1, 2], "retainHandling 0, first", got=[m.qos for m in got])
    a.clear()
    a.subscribe([(t.wild[5], opts(2, retainHandling=0))])
    got = a.got(3)
    check(sorted(m.qos for m in got) == [0, 1, 2], "retainHandling 0, again", got=[m.qos for m in got])
    for topic in t.topics[1:4]:
        a.publish(topic, b"", 0, retain=True)


@case("v5")
def assigned_clientid(t):
    z = t.peer(None)
    ack = z.connect(clean=True)
    assigned = getattr(ack["props"], "AssignedClientIdentifier", "")
    check(assigned != "", "CONNACK carries an Assigned Client Identifier")
    # printgate hands back the client's own id, never its internal one.
    check(not assigned.startswith("c-"), "assigned id is the client's own", got=assigned)
    z.subscribe([(t.topics[0], opts(1))])
    z.publish(t.topics[0], "hello", 1)
    check(len(z.got(1)) == 1, "the client works")


@case("v5")
def subscribe_identifiers(t):
    a, b = t.peer("a"), t.peer("b")
    a.connect()
    a.subscribe([(t.topics[0], opts(2))], properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=456789))
    b.connect()
    b.subscribe([(t.topics[0], opts(2))], properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=2))
    b.subscribe([(t.topics[0] + "/#", opts(2))], properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=3))
    b.publish(t.topics[0], "sub identifier test", 1)
    got = a.got(1)
    check(len(got) == 1, "one message", got=len(got))
    check(getattr(got[0].properties, "SubscriptionIdentifier", None) == [456789], "identifier of the subscription",
          got=getattr(got[0].properties, "SubscriptionIdentifier", None))
    got = b.got(1)
    ids = sorted(i for m in got for i in getattr(m.properties, "SubscriptionIdentifier", []))
    check(ids == [2, 3], "identifiers of both matching subscriptions", got=ids)


@case("v5")
def request_response(t):
    a, b = t.peer("a"), t.peer("b")
    a.connect()
    b.connect()
    a.subscribe([(t.topics[0], opts(2, noLocal=True))])
    b.subscribe([(t.topics[0], opts(2, noLocal=True))])
    a.publish(t.topics[0], "request", 1,
              properties=props(PacketTypes.PUBLISH, ResponseTopic=t.topics[0], CorrelationData=b"334"))
    got = b.got(1)
    check(len(got) == 1, "request delivered", got=len(got))
    p = got[0].properties
    check(getattr(p, "ResponseTopic", None) == t.topics[0], "response topic kept")
    check(getattr(p, "CorrelationData", None) == b"334", "correlation data kept")
    b.publish(p.ResponseTopic, "response", 1, properties=props(PacketTypes.PUBLISH, CorrelationData=p.CorrelationData))
    got = a.got(1)
    check(len(got) == 1 and getattr(got[0].properties, "CorrelationData", None) == b"334", "response delivered")


@case("v5")
def client_topic_alias(t):
    a = t.peer("a")
    # Topic alias 0 is a protocol error: the broker disconnects (paho will not send it).
    s, ack = raw_login(5, 0x02, 30, t.prefix + "-alias0")
    check(ack is not None and ack[1] == 0, "raw CONNECT accepted")
    vh = mqtt_string(t.topics[0].encode()) + b"\x03\x23\x00\x00"
    s.sendall(bytes([0x30, len(vh) + 1]) + vh + b"x")
    check(closed_soon(s), "alias 0 ends the connection")
    ack = a.connect(clean=True, properties=connect_props(TopicAliasMaximum=0, SessionExpiryInterval=99999))
    maximum = getattr(ack["props"], "TopicAliasMaximum", 0)
    if maximum == 0:
        return  # the broker takes no aliases (allowed)
    a.subscribe([(t.topics[0], opts(2))])
    alias = props(PacketTypes.PUBLISH, TopicAlias=1)
    a.publish(t.topics[0], "alias 1", 1, properties=alias)
    a.publish("", "alias 2", 1, properties=alias)
    got = a.got(2)
    check([(m.topic, m.payload) for m in got] == [(t.topics[0], b"alias 1"), (t.topics[0], b"alias 2")],
          "publishes by alias delivered", got=[(m.topic, m.payload) for m in got])
    check(a.disconnects == [], "still connected", got=a.disconnects)
    a.disconnect()
    # Aliases end with the connection, subscriptions stay with the session.
    a.clear()
    a.connect(clean=False)
    a.publish(t.topics[0], "alias 3", 1)
    check(len(a.got(1)) == 1, "subscription kept")
    a.publish("", "alias 4", 1, properties=alias, wait=False)
    check(a.wait(lambda: a.disconnects), "an alias of the last connection is unknown: disconnect")


@case("v5")
def server_topic_alias(t):
    a = t.peer("a")
    for maximum in (1, None, 0):
        a.clear()
        cp = connect_props(TopicAliasMaximum=maximum) if maximum is not None else connect_props()
        a.connect(properties=cp)
        a.subscribe([(t.topics[0], opts(2))])
        for q in range(3):
            a.publish(t.topics[0], "topic alias", q)
        got = a.got(3)
        check(len(got) == 3, "three messages", got=len(got))
        aliases = [getattr(m.properties, "TopicAlias", None) for m in got]
        if maximum:
            # An alias, if the broker uses one, is within the client's maximum and its first
            # use carries the topic.
            check(all(x is None or 1 <= x <= maximum for x in aliases), "aliases within maximum", got=aliases)
            check(got[0].topic == t.topics[0], "the first message names its topic")
        else:
            check(aliases == [None] * 3, "no aliases for a client that takes none", got=aliases)
        a.disconnect()


@case("v5")
def maximum_packet_size(t):
    a = t.peer("a")
    ack = a.connect()
    server_max = getattr(ack["props"], "MaximumPacketSize", 2**28 - 1)
    if server_max < 65535:
        a.publish(t.topics[0], b"." * server_max, 0)
        check(a.wait(lambda: a.disconnects), "a packet above the server's maximum ends the connection")
    a.disconnect()
    # The broker never sends a client a packet above the client's maximum.
    ack = a.connect(properties=connect_props(MaximumPacketSize=128))
    a.subscribe([(t.topics[0], opts(2))])
    a.publish(t.topics[0], b"." * 16, 0)
    check(len(a.got(1)) == 1, "a small message arrives")
    a.publish(t.topics[0], b"." * 128, 1)
    got = a.got(2, timeout=1.5)
    check(len(got) == 1, "a message above the client's maximum is not sent", got=[len(m.payload) for m in got])
    check(a.disconnects == [], "still connected", got=a.disconnects)


@case("v5")
def server_keep_alive(t):
    # The broker takes keep-alive 120 as asked, or says in ServerKeepAlive what it uses.
    a = t.peer("a")
    ack = a.connect(keepalive=120)
    ska = getattr(ack["props"], "ServerKeepAlive", None)
    check(ska is None or 0 < ska, "a usable server keep-alive", got=ska)


@case("v5")
def flow_control1(t):
    """Client receive maximum 2: the broker has at most 2 QoS 1 messages unacknowledged."""
    rx = t.peer("rx")
    rx.connect(properties=connect_props(ReceiveMaximum=2, SessionExpiryInterval=0), manual_ack=True)
    rx.subscribe([(t.topics[0], opts(1))])
    tx = t.peer("tx")
    tx.connect()
    for i in range(4):
        tx.publish(t.topics[0], f"message {i}", 1)
    got = rx.got(2)
    check(len(got) == 2, "two messages before any ack", got=[m.payload for m in got])
    rx.c.ack(got[0].mid, 1)
    got = rx.got(3)
    check(len(got) >= 3, "more after an ack", got=[m.payload for m in got])
    for m in got[1:]:
        rx.c.ack(m.mid, 1)
    got = rx.got(4)
    check([m.payload for m in got] == [f"message {i}".encode() for i in range(4)], "all, in order",
          got=[m.payload for m in got])


@case("v5")
def flow_control2(t):
    """More unacknowledged QoS 2 publishes than the server's receive maximum: disconnect 0x93."""
    s, body = raw_login(5, 0x02, 30, t.prefix + "-flood")
    check(body is not None and body[1] == 0, "CONNACK accepted")
    # Properties: find Receive Maximum (0x21), default 65535.
    plen, off = body[2], 3
    maximum, i = 65535, off
    while i < off + plen:
        pid = body[i]
        if pid == 0x21:
            maximum = struct.unpack("!H", body[i + 1:i + 3])[0]
            break
        i += 1 + {0x24: 1, 0x25: 1, 0x27: 4, 0x22: 2, 0x13: 2, 0x28: 1, 0x29: 1, 0x2A: 1, 0x11: 4}.get(pid, 0)
        if pid in (0x12, 0x1A, 0x1C, 0x1F):  # strings
            ln = struct.unpack("!H", body[i:i + 2])[0]
            i += 2 + ln
        elif pid == 0x26:
            ln = struct.unpack("!H", body[i:i + 2])[0]
            i += 2 + ln
            ln = struct.unpack("!H", body[i:i + 2])[0]
            i += 2 + ln
    check(maximum <= 1000, "a server receive maximum that can be tested", got=maximum)
    topic = (t.topics[0]).encode()
    for mid in range(1, maximum + 2):
        vh = mqtt_string(topic) + struct.pack("!H", mid) + b"\x00"
        s.sendall(bytes([0x34, len(vh) + 1]) + vh + b"x")
    reason, deadline = None, time.monotonic() + WAIT
    buf = b""
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(4096)
        except (socket.timeout, ConnectionError):
            break
        if not chunk:
            break
        buf += chunk
        # Walk the packets: PUBRECs (0x50) and finally DISCONNECT (0xE0).
        while len(buf) >= 2 and len(buf) >= 2 + buf[1]:
            kind, ln = buf[0], buf[1]
            if kind == 0xE0:
                reason = buf[2] if ln >= 1 else 0
            buf = buf[2 + ln:]
        if reason is not None:
            break
    check(reason == 0x93, "DISCONNECT 'receive maximum exceeded'", got=reason)


@case("v5")
def will_delay(t):
    def one(delay, expiry, expect, tag):
        b = t.peer("b" + tag)
        b.connect()
        topic = f"{t.topics[0]}/{tag}"
        b.subscribe([(topic, opts(2))])
        a = t.peer("a" + tag)
        a.connect(properties=connect_props(SessionExpiryInterval=expiry),
                  will=(topic, "will", 1, False, props(PacketTypes.WILLMESSAGE, WillDelayInterval=delay)))
        start = time.monotonic()
        a.terminate()
        got = b.got(1, timeout=expect + 3)
        took = got[0].timestamp - start if got else None
        check(len(got) == 1, "will delivered", delay=delay, expiry=expiry)
        check(abs(took - expect) <= 1.2, "will after min(will delay, session expiry)",
              delay=delay, expiry=expiry, took=round(took, 2))

    errors = []

    def run(*a):
        try:
            one(*a)
        except Exception as e:  # reported below
            errors.append(str(e))

    threads = [threading.Thread(target=run, args=a) for a in ((3, 5, 3, "1"), (5, 0, 0, "2"), (5, 2, 2, "3"))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    check(not errors, "; ".join(errors))


@case("v5")
def shared_subscriptions(t):
    a, b = t.peer("a"), t.peer("b")
    shared = f"$share/{t.prefix}/{t.base}/x"
    for p in (a, b):
        p.connect()
        p.subscribe([(shared, opts(2)), (t.topics[0], opts(2))])
    b.publish(t.topics[0], "to both", 0)
    check(len(a.got(1)) == 1 and len(b.got(1)) == 1, "a plain subscription reaches both")
    a.clear()
    b.clear()
    for i in range(4):
        b.publish(f"{t.base}/x", f"shared {i}", 1)
    b.wait(lambda: len(a.messages) + len(b.messages) >= 4)
    time.sleep(QUIET)
    payloads = sorted(m.payload for m in a.messages + b.messages)
    check(payloads == sorted(f"shared {i}".encode() for i in range(4)), "each shared message once",
          got=payloads)


@case("v5")
def empty_id_v5_persistent(t):
    """MQTT 5, clean start 0, empty id: accepted with an assigned id (paho's zero-length case
    in 5 connects with clean start 0 first)."""
    z = t.peer(None)
    ack = z.connect(clean=False, properties=connect_props(SessionExpiryInterval=60))
    check(getattr(ack["props"], "AssignedClientIdentifier", ""), "assigned id")


def run(version, name):
    t = Case(name, version == "v5")
    started = time.monotonic()
    try:
        CASES[version][name](t)
        result = {"ok": True}
    except Failed as e:
        result = {"ok": False, "error": str(e)}
    except Exception as e:
        result = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=3)}
    finally:
        t.close()
    result.update(case=name, version=version, secs=round(time.monotonic() - started, 2))
    return result


def main():
    jobs = []
    for sel in selection:
        if sel in CASES:
            jobs += [(sel, n) for n in CASES[sel]]
        else:
            version, _, name = sel.partition(":")
            if version not in CASES or name not in CASES[version]:
                print(json.dumps({"case": sel, "ok": False, "error": "unknown case"}))
                sys.exit(2)
            jobs.append((version, name))
    results, lock = [], threading.Lock()

    def worker(job):
        r = run(*job)
        with lock:
            results.append(r)
            print(json.dumps(r, default=str), flush=True)

    threads = [threading.Thread(target=worker, args=(j,), daemon=True) for j in jobs]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    sys.exit(0 if all(r["ok"] for r in results) and len(results) == len(jobs) else 1)


main()
