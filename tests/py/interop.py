"""MQTT interoperability cases, driven by paho-mqtt 2.x, run against printgate and Mosquitto.

Usage: interop.py HOST PORT USER PASSWORD TOPIC_ROOT CASE
Cases:
  keepalive0-v311, keepalive0-v5   CONNECT with keep-alive 0 (keep-alive off) is accepted; the
                                   client subscribes, stays silent for longer than any keep-alive
                                   a broker could be applying, then gets its own publish back.
  keepalive-enforced               A client with keep-alive 1 that then sends nothing is
                                   disconnected by the broker, not before 1.5 s (MQTT 3.1.1
                                   3.1.2-24) and within a few seconds.
  empty-id-v311-persistent         MQTT 3.1.1, clean session 0, empty client id: CONNACK return
                                   code 2, identifier rejected (3.1.3-8). paho refuses to send
                                   this CONNECT at all, so this case writes it on a raw socket.
  empty-id-v311-clean              MQTT 3.1.1, clean session 1, empty client id: accepted (the
                                   broker assigns an id) and works.
  empty-id-v5                      MQTT 5, empty client id: accepted, the CONNACK carries the
                                   Assigned Client Identifier, and the client works.
Prints one JSON line {"case": ..., "ok": bool, ...}; exits 0 when the case passed, 1 when not.
"""
import json
import socket
import struct
import sys
import threading
import time

import paho.mqtt.client as mqtt

host, port, user, password, root, case = sys.argv[1:7]
port = int(port)
WAIT = 10


def done(ok, **detail):
    print(json.dumps({"case": case, "ok": ok, **detail}))
    sys.exit(0 if ok else 1)


def round_trip(protocol, client_id, keepalive, clean=None, silence=0.0):
    """Connect, subscribe to ROOT/CASE, stay silent `silence` seconds, publish QoS 1, and
    wait for the message to come back. Returns a dict of what happened."""
    got = {"connack": None, "assigned": None, "message": None, "disconnects": []}
    connected = threading.Event()
    subscribed = threading.Event()
    received = threading.Event()
    topic = f"{root}/{case}"
    kwargs = {}
    if protocol == mqtt.MQTTv311 and clean is not None:
        kwargs["clean_session"] = clean
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kwargs
    )
    c.username_pw_set(user, password)

    def on_connect(client, userdata, flags, reason_code, props):
        got["connack"] = str(reason_code)
        if props is not None and hasattr(props, "AssignedClientIdentifier"):
            got["assigned"] = props.AssignedClientIdentifier
        connected.set()
        if not reason_code.is_failure:
            client.subscribe(topic, qos=1)

    def on_subscribe(client, userdata, mid, reason_codes, props):
        got["suback"] = [str(r) for r in reason_codes]
        subscribed.set()

    def on_message(client, userdata, msg):
        got["message"] = msg.payload.decode(errors="replace")
        received.set()

    def on_disconnect(client, userdata, flags, reason_code, props):
        got["disconnects"].append(str(reason_code))
        connected.set()
        subscribed.set()
        received.set()

    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    c.on_message = on_message
    c.on_disconnect = on_disconnect
    # paho does not reconnect by itself with loop_start(); a lost connection stays lost.
    c.connect(host, port, keepalive=keepalive)
    c.loop_start()
    try:
        if not connected.wait(WAIT):
            got["error"] = "no CONNACK"
            return got
        if not subscribed.wait(WAIT):
            got["error"] = "no SUBACK"
            return got
        if got["disconnects"]:
            got["error"] = "disconnected before SUBACK"
            return got
        # Silent: keep-alive 0 means paho sends no PINGREQ either.
        if silence and received.wait(silence):
            got["error"] = "disconnected while silent"
            return got
        c.publish(topic, "hello", qos=1)
        if not received.wait(WAIT):
            got["error"] = "own message not received"
        elif got["message"] != "hello":
            got["error"] = "disconnected before the message came back"
        return got
    finally:
        c.disconnect()
        c.loop_stop()


def string(b):
    return struct.pack("!H", len(b)) + b


def raw_connect(level, flags, keepalive, client_id):
    """A CONNECT with user name and password (flags: the low bits, e.g. 0x02 clean session)."""
    body = string(b"MQTT") + bytes([level, 0xC0 | flags]) + struct.pack("!H", keepalive)
    if level == 5:
        body += b"\x00"
    body += string(client_id.encode()) + string(user.encode()) + string(password.encode())
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


def connack(s):
    head = read_exact(s, 2)
    if len(head) < 2 or head[0] != 0x20:
        return None
    return read_exact(s, head[1])


if case in ("keepalive0-v311", "keepalive0-v5"):
    protocol = mqtt.MQTTv5 if case.endswith("v5") else mqtt.MQTTv311
    got = round_trip(protocol, f"ka0-{case}", keepalive=0, silence=3.0)
    done("error" not in got, **got)

elif case == "keepalive-enforced":
    s = socket.create_connection((host, port), timeout=WAIT)
    s.sendall(raw_connect(4, 0x02, 1, "ka1-silent"))
    ack = connack(s)
    if ack is None or len(ack) < 2 or ack[1] != 0:
        done(False, error="login refused", connack=ack.hex() if ack else None)
    start = time.monotonic()
    try:
        closed = s.recv(1) == b""
    except socket.timeout:
        closed = False
    except ConnectionError:
        closed = True
    elapsed = time.monotonic() - start
    # Not before 1.5 x keep-alive; Mosquitto 2.0 checks keep-alives every few seconds, so the
    # upper bound leaves it room.
    done(closed and 1.45 <= elapsed <= 8.0, closed=closed, elapsed=round(elapsed, 2))

elif case == "empty-id-v311-persistent":
    s = socket.create_connection((host, port), timeout=WAIT)
    s.sendall(raw_connect(4, 0x00, 30, ""))
    ack = connack(s)
    # CONNACK: session present 0, return code 2 (identifier rejected); then the broker closes.
    closed = False
    if ack is not None:
        try:
            closed = s.recv(1) == b""
        except (socket.timeout, ConnectionError):
            closed = True
    done(ack == b"\x00\x02" and closed, connack=ack.hex() if ack is not None else None, closed=closed)

elif case == "empty-id-v311-clean":
    got = round_trip(mqtt.MQTTv311, "", keepalive=30, clean=True)
    done("error" not in got, **got)

elif case == "empty-id-v5":
    got = round_trip(mqtt.MQTTv5, "", keepalive=30)
    ok = "error" not in got and bool(got["assigned"])
    if "error" not in got and not got["assigned"]:
        got["error"] = "CONNACK without Assigned Client Identifier"
    done(ok, **got)

else:
    done(False, error=f"unknown case {case}")
