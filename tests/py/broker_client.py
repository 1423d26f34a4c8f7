"""Second MQTT client for printgate's broker tests (paho-mqtt 2.x).

Usage: broker_client.py HOST PORT USER PASSWORD PROTOCOL(4|5) PRINTER_TOPIC [ws]
With `ws`, MQTT over WebSocket (path /mqtt), as a browser client would.
Subscribes to printgate/<printer>/state (retained), sends cmd/plate_clear with a request id,
waits for the result and prints one JSON line: {"state": {...}, "result": {...}}.
Exits 2 on timeout, 3 when the connection is refused.
"""
import json
import sys
import threading

import paho.mqtt.client as mqtt

host, port, user, password, proto, printer = sys.argv[1:7]
websocket = len(sys.argv) > 7 and sys.argv[7] == "ws"
version = mqtt.MQTTv5 if proto == "5" else mqtt.MQTTv311
done = threading.Event()
out = {}


def on_connect(client, userdata, flags, reason_code, properties):
    if reason_code.is_failure:
        out["refused"] = str(reason_code)
        done.set()
        return
    client.subscribe(f"printgate/{printer}/state", qos=1)
    client.subscribe(f"printgate/{printer}/cmd/plate_clear/result", qos=1)


subacks = []


def on_subscribe(client, userdata, mid, reason_codes, properties):
    subacks.append(mid)
    if len(subacks) == 2:
        client.publish(f"printgate/{printer}/cmd/plate_clear", json.dumps({"id": "py-1"}), qos=1)


def on_message(client, userdata, msg):
    if msg.topic.endswith("/state"):
        out["state"] = json.loads(msg.payload)
    elif msg.topic.endswith("/result"):
        out["result"] = json.loads(msg.payload)
    if "state" in out and "result" in out:
        done.set()


c = mqtt.Client(
    mqtt.CallbackAPIVersion.VERSION2,
    client_id=f"paho-{proto}{'-ws' if websocket else ''}",
    protocol=version,
    transport="websockets" if websocket else "tcp",
)
if websocket:
    c.ws_set_options(path="/mqtt")
c.username_pw_set(user, password)
c.on_connect = on_connect
c.on_subscribe = on_subscribe
c.on_message = on_message
c.connect(host, int(port), keepalive=30)
c.loop_start()
ok = done.wait(20)
c.loop_stop()
if "refused" in out:
    print(json.dumps(out))
    sys.exit(3)
if not ok:
    print(json.dumps(out))
    sys.exit(2)
print(json.dumps(out))
