"""MQTT 5 publishes with properties delivered to MQTT 3.1.1 subscribers (paho-mqtt 2.x).

Usage: v5_to_v311.py HOST PORT USER PASSWORD TOPIC_ROOT
First an MQTT 5 client publishes a retained message with every publish property (user
properties, content type, response topic, correlation data, message expiry, payload format) on
TOPIC_ROOT/retained. Then an MQTT 3.1.1 client subscribes to TOPIC_ROOT/# (and gets the retained
message), and the MQTT 5 client publishes the same properties live at QoS 0, 1 and 2.
Prints one JSON line: {"received": [[topic, payload, qos, retain], ...], "disconnects": n}.
Exits 0 when the subscriber got all four messages without losing its connection, 2 on
timeout, 3 when a login is refused, 4 when the subscriber's connection was lost.
"""
import json
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

host, port, user, password, root = sys.argv[1:6]
port = int(port)
WAIT = 15


def properties():
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = [("k", "v"), ("origin", "paho")]
    p.ContentType = "application/json"
    p.ResponseTopic = f"{root}/reply"
    p.CorrelationData = b"\x00\x01corr"
    p.MessageExpiryInterval = 60
    p.PayloadFormatIndicator = 1
    return p


def fail(code, out):
    print(json.dumps(out))
    sys.exit(code)


out = {"received": [], "disconnects": 0}
connected = threading.Event()
subscribed = threading.Event()
all_in = threading.Event()
refused = []


def sub_connect(client, userdata, flags, reason_code, props):
    if reason_code.is_failure:
        refused.append(f"subscriber: {reason_code}")
        connected.set()
        return
    connected.set()
    client.subscribe(f"{root}/#", qos=2)


def sub_subscribe(client, userdata, mid, reason_codes, props):
    subscribed.set()


def sub_message(client, userdata, msg):
    out["received"].append([msg.topic, msg.payload.decode(), msg.qos, bool(msg.retain)])
    if len(out["received"]) >= 4:
        all_in.set()


def sub_disconnect(client, userdata, flags, reason_code, props):
    out["disconnects"] += 1
    all_in.set()


pub_ready = threading.Event()


def pub_connect(client, userdata, flags, reason_code, props):
    if reason_code.is_failure:
        refused.append(f"publisher: {reason_code}")
    pub_ready.set()


pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="v5-publisher", protocol=mqtt.MQTTv5)
pub.username_pw_set(user, password)
pub.on_connect = pub_connect
pub.connect(host, port, keepalive=30)
pub.loop_start()
if not pub_ready.wait(WAIT):
    fail(2, {**out, "error": "publisher got no CONNACK"})
if refused:
    fail(3, {**out, "error": refused})
pub.publish(f"{root}/retained", "retained", qos=1, retain=True, properties=properties()).wait_for_publish(WAIT)

sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="v311-subscriber", protocol=mqtt.MQTTv311)
sub.username_pw_set(user, password)
sub.on_connect = sub_connect
sub.on_subscribe = sub_subscribe
sub.on_message = sub_message
sub.on_disconnect = sub_disconnect
sub.connect(host, port, keepalive=30)
sub.loop_start()
if not connected.wait(WAIT):
    fail(2, {**out, "error": "subscriber got no CONNACK"})
if refused:
    fail(3, {**out, "error": refused})
if not subscribed.wait(WAIT):
    fail(2, {**out, "error": "subscriber got no SUBACK"})
for qos in (0, 1, 2):
    pub.publish(f"{root}/live{qos}", f"live{qos}", qos=qos, properties=properties()).wait_for_publish(WAIT)
finished = all_in.wait(WAIT)
lost = out["disconnects"]
sub.disconnect()
pub.disconnect()
sub.loop_stop()
pub.loop_stop()
out["disconnects"] = lost
if lost > 0:
    fail(4, out)
if not finished:
    fail(2, {**out, "error": "not every message arrived"})
print(json.dumps(out))
